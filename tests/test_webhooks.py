"""Webhooks: signatures, the SSRF policy, and delivery from the S3 outbox to a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployments.jobs import FAILED, SUCCEEDED, JobParams, ParamError, new_record, set_state
from deployments.s3server import free_port
from deployments.storage import Keys
from deployments.webhooks import (
    PENDING_PREFIX,
    WebhookOutbox,
    WebhookSecretMissing,
    WebhookSignatureError,
    check_webhook_url,
    event_id_for,
    sign,
    signature_header,
    tenant_webhook_secret,
    verify,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "webhooks.md"
MASTER = "test-master-secret-0123456789"
LOCAL = "127.0.0.1/32"


def docs_verifier():
    """The receiver snippet of docs/webhooks.md, run as written (plain hmac/hashlib)."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    code = next(b for b in blocks if "def verify_sonic_webhook" in b)
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace["verify_sonic_webhook"]


def secret_for(tenant: str) -> str:
    return tenant_webhook_secret(tenant, MASTER)


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every request; answers from ``statuses`` (then 200)."""

    def __init__(self, port: int | None = None, statuses: tuple[int, ...] = (), delay_s: float = 0.0,
                 tls: tuple[Path, Path] | None = None):
        self.port = port or free_port()
        self.tls = tls
        self.statuses = list(statuses)
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/sonic?lms=1"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": self.headers, "body": body})
                time.sleep(receiver.delay_s)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver():
    started: list[Receiver] = []

    def make(**kwargs) -> Receiver:
        r = Receiver(**kwargs)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def job(url: str | None, tenant: str = "school-a", state: str = SUCCEEDED) -> dict:
    params = JobParams(webhook_url=url, metadata={"course": "optics-101"})
    record = new_record(f"j{time.time_ns():x}", tenant, params,
                        {"image": Keys.input(tenant, "j", "image.png"), "audio": Keys.input(tenant, "j", "a.wav")})
    output = {"video_key": Keys.output(tenant, "j", "video.mp4"), "poster_key": "p", "metadata_key": "m",
              "video_bytes": 1234} if state == SUCCEEDED else None
    set_state(record, state, output=output, stage="done")
    return record


def until(outbox: WebhookOutbox, done, timeout_s: float = 15.0) -> None:
    async def loop():
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, "webhook not delivered in time"
            await outbox.deliver_due()
            await asyncio.sleep(0.05)

    asyncio.run(loop())


def delivered(storage, tenant: str, event_id: str) -> dict | None:
    return storage.get_json(Keys.webhook_delivered(tenant, event_id))


# -- signatures and secrets ------------------------------------------------------------------------


def test_sign_and_verify_reject_tampering_replays_and_wrong_secrets():
    secret, body, ts = secret_for("school-a"), b'{"id":"evt_1","type":"job.succeeded"}', 1_700_000_000
    headers = {"Sonic-Timestamp": str(ts), "Sonic-Signature": sign(secret, ts, body)}
    assert headers["Sonic-Signature"].startswith("v1=") and len(headers["Sonic-Signature"]) == 3 + 64
    verify(secret, headers, body, now=ts + 10)
    verify(secret, {k.lower(): v for k, v in headers.items()}, body, now=ts)      # header names are case-free
    checks = [
        ("does not match", dict(secret=secret, headers=headers, body=body + b" ", now=ts)),          # tampered
        ("does not match", dict(secret=secret_for("school-b"), headers=headers, body=body, now=ts)),
        ("old", dict(secret=secret, headers=headers, body=body, now=ts + 301)),                       # replayed
        ("future", dict(secret=secret, headers=headers, body=body, now=ts - 301)),
        ("missing Sonic-Signature", dict(secret=secret, headers={"Sonic-Timestamp": str(ts)}, body=body, now=ts)),
        ("missing Sonic-Timestamp", dict(secret=secret, headers={"Sonic-Signature": "v1=00"}, body=body, now=ts)),
        ("no v1=", dict(secret=secret, headers={**headers, "Sonic-Signature": "v0=abc"}, body=body, now=ts)),
        ("does not match", dict(secret=secret, headers={**headers, "Sonic-Timestamp": str(ts + 1)}, body=body,
                                now=ts)),
    ]
    for message, kwargs in checks:
        with pytest.raises(WebhookSignatureError, match=message):
            verify(**kwargs)
    # Rotation: the sender signs with old and new secrets; receivers holding either one accept.
    old, new = tenant_webhook_secret("school-a", "old-master"), secret
    rotated = {"Sonic-Timestamp": str(ts), "Sonic-Signature": signature_header([old, new], ts, body)}
    assert rotated["Sonic-Signature"].count("v1=") == 2
    verify(old, rotated, body, now=ts)
    verify(new, rotated, body, now=ts)
    verify(["unrelated", new], headers, body, now=ts)
    with pytest.raises(WebhookSignatureError):
        verify(tenant_webhook_secret("school-a", "third"), rotated, body, now=ts)


def test_docs_snippet_agrees_with_verify():
    verify_sonic_webhook = docs_verifier()
    secret, body, ts = secret_for("school-a"), b'{"x":1}', int(time.time())
    headers = {"Sonic-Timestamp": str(ts), "Sonic-Signature": signature_header(["other", secret], ts, body)}
    assert verify_sonic_webhook(secret, headers, body) is True
    assert verify_sonic_webhook(secret, headers, body + b"!") is False
    assert verify_sonic_webhook("whsec_wrong", headers, body) is False
    old = {"Sonic-Timestamp": str(ts - 600), "Sonic-Signature": sign(secret, ts - 600, body)}
    assert verify_sonic_webhook(secret, old, body) is False


def test_tenant_secrets_are_derived_per_tenant(monkeypatch):
    a = tenant_webhook_secret("school-a", MASTER)
    assert re.fullmatch(r"whsec_[0-9a-f]{64}", a)
    assert a == tenant_webhook_secret("school-a", MASTER) != tenant_webhook_secret("school-b", MASTER)
    assert a != tenant_webhook_secret("school-a", MASTER + "x")
    monkeypatch.setenv("SONIC_WEBHOOK_SECRET", MASTER)
    assert tenant_webhook_secret("school-a") == a
    monkeypatch.delenv("SONIC_WEBHOOK_SECRET")
    with pytest.raises(WebhookSecretMissing, match="SONIC_WEBHOOK_SECRET"):
        tenant_webhook_secret("school-a")
    with pytest.raises(WebhookSecretMissing):
        tenant_webhook_secret("school-a", "")


def test_event_ids_are_deterministic():
    assert event_id_for("j1", "job.succeeded") == event_id_for("j1", "job.succeeded")
    assert re.fullmatch(r"evt_[0-9a-f]{32}", event_id_for("j1", "job.succeeded"))
    assert len({event_id_for("j1", "job.succeeded"), event_id_for("j1", "job.failed"),
                event_id_for("j2", "job.succeeded")}) == 3


# -- SSRF policy -------------------------------------------------------------------------------------

BLOCKED_BY_ADDRESS = [
    ("http://127.0.0.1:8080/hook", "loopback"),
    ("http://10.0.0.1/hook", "private"),
    ("http://192.168.1.20/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]:9000/", "loopback"),
    ("http://localhost/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[2002:7f00:1::]/", "loopback"),           # 6to4 around 127.0.0.1
    ("http://[fd00::1]/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://100.64.0.1/", "non-public"),               # carrier-grade NAT
    ("http://2130706433/", "loopback"),                 # 127.0.0.1 as one decimal number
]


@pytest.mark.parametrize("url,reason", BLOCKED_BY_ADDRESS)
def test_private_targets_are_rejected_by_default(url, reason):
    with pytest.raises(ParamError) as info:
        check_webhook_url(url)
    assert info.value.field == "webhook_url"
    assert f"{reason} address" in info.value.message and "SONIC_WEBHOOK_ALLOW" in info.value.message


@pytest.mark.parametrize("url,fragment", [
    ("file:///etc/passwd", "scheme file://"),
    ("ftp://93.184.215.14/x", "scheme ftp://"),
    ("gopher://93.184.215.14/", "scheme gopher://"),
    ("lms.example.com/hook", "scheme (none)"),
    ("http://user:pass@93.184.215.14/hook", "credentials"),
    ("https://token@127.0.0.1/hook", "credentials"),
    ("http:///hook", "no host"),
    ("http://93.184.215.14:99999/", "not a valid URL"),
    ("http://93.184.215.14/a b", "spaces"),
    ("https://93.184.215.14/" + "a" * 2048, "at most 2048"),
    ("", "empty"),
])
def test_malformed_urls_are_rejected_even_with_an_allow_list(url, fragment):
    for allow in ("", "0.0.0.0/0,::/0,127.0.0.1"):
        with pytest.raises(ParamError, match=re.escape(fragment)):
            check_webhook_url(url, allow)


def test_unresolvable_hosts_are_rejected():
    with pytest.raises(ParamError, match="resolve|DNS"):
        check_webhook_url("https://no-such-host.invalid/hook")


def test_allow_list_admits_named_hosts_and_networks():
    allow = "127.0.0.1/32, 10.0.0.0/8 ,169.254.169.254,::1,localhost"
    for url in ("http://127.0.0.1:8080/hook", "http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/",
                "http://[::1]:9000/", "http://localhost/hook", "http://[::ffff:127.0.0.1]/"):
        check_webhook_url(url, allow)
    check_webhook_url("http://[::ffff:10.1.2.3]/", allow)        # mapped addresses match IPv4 networks
    check_webhook_url("http://LOCALHOST./x", ["localhost"])        # names are case- and root-dot-free
    check_webhook_url("http://192.168.1.20/", ["192.168.0.0/16"])
    with pytest.raises(ParamError, match="private"):
        check_webhook_url("http://192.168.1.20/", allow)
    with pytest.raises(ParamError, match="loopback"):
        check_webhook_url("http://127.0.0.2/", allow)


def test_public_addresses_pass():
    check_webhook_url("https://93.184.215.14/hooks/sonic?x=1")
    check_webhook_url("http://[2606:4700:4700::1111]:8443/")


# -- delivery ----------------------------------------------------------------------------------------


@pytest.mark.s3
def test_delivery_is_signed_and_carries_the_public_job_view(s3_storage, receiver):
    r = receiver().start()
    outbox = WebhookOutbox(s3_storage, secret_for, allow=LOCAL)
    record = job(r.url)
    assert outbox.enqueue(job(None), "job.succeeded") is None           # no webhook_url: nothing queued
    event_id = outbox.enqueue(record, "job.succeeded")
    assert event_id == event_id_for(record["id"], "job.succeeded")
    assert [p["id"] for p in outbox.pending()] == [event_id]
    assert asyncio.run(outbox.deliver_due()) == 1

    [request] = r.requests
    headers, body = request["headers"], request["body"]
    assert request["path"] == "/hooks/sonic?lms=1"
    assert headers["Sonic-Event-Id"] == event_id and headers["Sonic-Event-Type"] == "job.succeeded"
    assert headers["Content-Type"] == "application/json" and headers["Host"] == f"127.0.0.1:{r.port}"
    assert abs(int(headers["Sonic-Timestamp"]) - time.time()) < 30
    verify(secret_for("school-a"), headers, body)
    assert docs_verifier()(secret_for("school-a"), headers, body) is True
    with pytest.raises(WebhookSignatureError):
        verify(secret_for("school-b"), headers, body)

    event = json.loads(body)
    assert event["id"] == event_id and event["type"] == "job.succeeded" and isinstance(event["created_at"], int)
    view = event["data"]["job"]
    assert view["id"] == record["id"] and view["state"] == SUCCEEDED
    assert view["metadata"] == {"course": "optics-101"} and view["output"] == {"video_bytes": 1234}
    assert "inputs" not in view and "_key" not in body.decode() and "whsec_" not in body.decode()
    assert outbox.pending() == []
    done = delivered(s3_storage, "school-a", event_id)
    assert done["outcome"] == "delivered" and [a["status"] for a in done["attempts"]] == [200]
    assert "whsec_" not in json.dumps(done) and "v1=" not in json.dumps(done)
    assert asyncio.run(outbox.deliver_due()) == 0 and len(r.requests) == 1


@pytest.mark.s3
def test_retries_until_the_receiver_is_up_then_delivers_once(s3_storage, receiver):
    r = receiver()                                                   # not listening yet
    outbox = WebhookOutbox(s3_storage, secret_for, allow=LOCAL, first_delay_s=0.2, timeout_s=2)
    event_id = outbox.enqueue(job(r.url, state=FAILED), "job.failed")
    assert asyncio.run(outbox.deliver_due()) == 1
    [pending] = outbox.pending()
    [first] = pending["attempts"]
    assert first["status"] is None and "ConnectError" in first["error"]
    wait = pending["next_attempt_at"] - (first["at"] + first["duration_s"])
    assert 0.1 - 0.01 <= wait <= 0.2 + 0.01
    r.start()

    async def serve_until_delivered():
        stop = asyncio.Event()
        task = asyncio.create_task(outbox.run(stop, poll_s=0.05))
        deadline = time.monotonic() + 15
        while not delivered(s3_storage, "school-a", event_id) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)                                     # time for a duplicate, if there were one
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(serve_until_delivered())
    assert len(r.requests) == 1 and r.requests[0]["headers"]["Sonic-Event-Type"] == "job.failed"
    done = delivered(s3_storage, "school-a", event_id)
    assert [a["status"] for a in done["attempts"]] == [None, 200] and done["outcome"] == "delivered"
    assert s3_storage.list(PENDING_PREFIX) == []


@pytest.mark.s3
def test_errors_retry_and_410_stops(s3_storage, receiver):
    r = receiver(statuses=(500, 404, 302, 410)).start()
    outbox = WebhookOutbox(s3_storage, secret_for, allow=LOCAL, first_delay_s=0.05)
    event_id = outbox.enqueue(job(r.url), "job.succeeded")
    until(outbox, lambda: delivered(s3_storage, "school-a", event_id))
    done = delivered(s3_storage, "school-a", event_id)
    assert done["outcome"] == "gone" and [a["status"] for a in done["attempts"]] == [500, 404, 302, 410]
    assert [q["path"] for q in r.requests] == ["/hooks/sonic?lms=1"] * 4      # the redirect was not followed
    assert len({q["headers"]["Sonic-Event-Id"] for q in r.requests}) == 1
    assert asyncio.run(outbox.deliver_due()) == 0 and len(r.requests) == 4


@pytest.mark.s3
def test_slow_receivers_time_out_and_are_retried(s3_storage, receiver):
    r = receiver(delay_s=3).start()
    outbox = WebhookOutbox(s3_storage, secret_for, allow=LOCAL, first_delay_s=60, timeout_s=0.3)
    outbox.enqueue(job(r.url), "job.succeeded")
    started = time.monotonic()
    assert asyncio.run(outbox.deliver_due()) == 1
    assert time.monotonic() - started < 2.5
    [pending] = outbox.pending()
    assert "timeout" in pending["attempts"][0]["error"] and pending["next_attempt_at"] > time.time() + 20


@pytest.mark.s3
def test_gives_up_after_the_retry_window(s3_storage, receiver):
    r = receiver()                                                   # never started
    outbox = WebhookOutbox(s3_storage, secret_for, allow=LOCAL, first_delay_s=0.05, give_up_after_s=1.5)
    event_id = outbox.enqueue(job(r.url), "job.succeeded")
    until(outbox, lambda: delivered(s3_storage, "school-a", event_id))
    done = delivered(s3_storage, "school-a", event_id)
    assert done["outcome"] == "expired" and len(done["attempts"]) >= 2
    assert all(a["error"] for a in done["attempts"]) and outbox.pending() == []
    assert done["finished_at"] >= done["enqueued_at"] + 1.5


@pytest.mark.s3
def test_delivery_rechecks_the_target(s3_storage, receiver):
    """The SSRF policy is applied again at every attempt (the allow list of the delivering process counts)."""
    r = receiver().start()
    strict = WebhookOutbox(s3_storage, secret_for, first_delay_s=0.05)
    event_id = strict.enqueue(job(r.url), "job.succeeded")
    asyncio.run(strict.deliver_due())
    [pending] = strict.pending()
    assert "loopback" in pending["attempts"][0]["error"] and r.requests == []
    bad = job("ftp://93.184.215.14/x")
    bad_id = strict.enqueue(bad, "job.succeeded")
    time.sleep(0.1)
    asyncio.run(strict.deliver_due())
    assert delivered(s3_storage, "school-a", bad_id)["outcome"] == "rejected"      # never retried
    by_name = WebhookOutbox(s3_storage, secret_for, allow="localhost")   # a named host: sent to its checked
    named = job(f"http://localhost:{r.port}/named")
    named_id = by_name.enqueue(named, "job.succeeded")
    until(by_name, lambda: delivered(s3_storage, "school-a", named_id))   # address, with its own Host header
    assert [q["headers"]["Host"] for q in r.requests] == [f"localhost:{r.port}"]
    assert strict.pending()[0]["id"] == event_id                                  # still blocked, still pending


@pytest.mark.s3
def test_https_goes_to_the_checked_address_with_the_certificate_checked(s3_storage, receiver, tmp_path,
                                                                        monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))                   # an internal CA, as on-prem
    r = receiver(tls=(cert, key)).start()
    outbox = WebhookOutbox(s3_storage, secret_for, allow="localhost,127.0.0.1", first_delay_s=60)
    good = outbox.enqueue(job(f"https://localhost:{r.port}/tls"), "job.succeeded")
    mismatched = outbox.enqueue(job(f"https://127.0.0.1:{r.port}/tls", tenant="school-b"), "job.succeeded")
    assert asyncio.run(outbox.deliver_due()) == 2
    assert delivered(s3_storage, "school-a", good)["outcome"] == "delivered"
    [request] = r.requests
    assert request["path"] == "/tls" and request["headers"]["Host"] == f"localhost:{r.port}"
    verify(secret_for("school-a"), request["headers"], request["body"])
    [pending] = outbox.pending()                                     # the certificate names localhost only
    assert pending["id"] == mismatched and "certificate" in pending["attempts"][0]["error"].lower()


@pytest.mark.s3
def test_nothing_is_sent_without_a_secret(s3_storage, receiver, monkeypatch):
    monkeypatch.delenv("SONIC_WEBHOOK_SECRET", raising=False)
    r = receiver().start()
    outbox = WebhookOutbox(s3_storage, tenant_webhook_secret, allow=LOCAL)
    outbox.enqueue(job(r.url), "job.succeeded")
    asyncio.run(outbox.deliver_due())
    assert r.requests == [] and "SONIC_WEBHOOK_SECRET" in outbox.pending()[0]["attempts"][0]["error"]


@pytest.mark.s3
def test_outbox_survives_a_restart(s3_storage, receiver):
    r = receiver()
    before = WebhookOutbox(s3_storage, secret_for, allow=LOCAL, first_delay_s=0.05)
    ids = [before.enqueue(job(r.url, tenant=t), "job.succeeded") for t in ("school-a", "school-b")]
    asyncio.run(before.deliver_due())                                # fails: receiver down
    del before
    r.start()
    after = WebhookOutbox(s3_storage, secret_for, allow=LOCAL, first_delay_s=0.05)
    assert sorted(p["id"] for p in after.pending()) == sorted(ids)
    until(after, lambda: not after.pending())
    assert sorted(q["headers"]["Sonic-Event-Id"] for q in r.requests) == sorted(ids)
    for request in r.requests:
        tenant = json.loads(request["body"])["data"]["job"]["tenant"]
        verify(secret_for(tenant), request["headers"], request["body"])
    assert [len(delivered(s3_storage, t, i)["attempts"]) for t, i in zip(("school-a", "school-b"), ids,
                                                                          strict=True)] == [2, 2]


@pytest.mark.s3
def test_enqueue_twice_is_one_delivery(s3_storage, receiver):
    r = receiver().start()
    outbox = WebhookOutbox(s3_storage, secret_for, allow=LOCAL)
    record = job(r.url)
    first = outbox.enqueue(record, "job.succeeded")
    assert outbox.enqueue(record, "job.succeeded") == first
    assert len(s3_storage.list(PENDING_PREFIX)) == 1
    assert asyncio.run(outbox.deliver_due()) == 1
    assert outbox.enqueue(record, "job.succeeded") == first           # e.g. re-queued after a restart
    assert asyncio.run(outbox.deliver_due()) == 0 and len(r.requests) == 1
    with pytest.raises(ValueError, match="unknown webhook event type"):
        outbox.enqueue(record, "job.finished")
