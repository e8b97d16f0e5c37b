"""Signed job webhooks for LMS back ends, delivered at least once from an outbox kept in S3.

A terminal job state queues one event (``job.succeeded`` / ``job.failed`` / ``job.cancelled``) under
``webhooks/pending/{event_id}.json``; :meth:`WebhookOutbox.run` POSTs it (signed with the tenant's secret) until
the receiver answers 2xx or 410, or the retry window ends, then moves it to ``webhooks/delivered/{tenant}/``
with every attempt. Targets pass an SSRF check at submit time and again, with the addresses pinned, at every
attempt. Receivers verify ``Sonic-Signature`` and dedupe by ``Sonic-Event-Id`` (see docs/webhooks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from deployments.jobs import ParamError, public_view
from deployments.storage import Keys, Storage

log = logging.getLogger("sonic.webhooks")

EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled")
ENV_SECRET = "SONIC_WEBHOOK_SECRET"
ENV_ALLOW = "SONIC_WEBHOOK_ALLOW"
H_ID, H_TYPE, H_TIMESTAMP, H_SIGNATURE = "Sonic-Event-Id", "Sonic-Event-Type", "Sonic-Timestamp", "Sonic-Signature"
USER_AGENT = "SonicServe-Webhooks/1"
MAX_URL_LENGTH = 2048
DNS_TIMEOUT_S = 3.0
PENDING_PREFIX = Keys.webhook_pending("").removesuffix(".json")
FIELD = "webhook_url"
_ALLOW_HINT = "ask the operator to allow it (webhook_allow / SONIC_WEBHOOK_ALLOW)"
_DNS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookSignatureError(ValueError):
    """A webhook's signature is missing or wrong, or its timestamp is outside the tolerance."""


class WebhookSecretMissing(RuntimeError):
    """No master secret is configured, so no tenant secret can be derived (nothing is sent unsigned)."""


# -- SSRF policy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: its host (ASCII), ``Host`` header value and the addresses it may be sent to."""

    url: str
    scheme: str
    host: str
    netloc: str
    addresses: tuple[str, ...]


def parse_allow(allow: str | Sequence[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """Comma-separated host names (``*.corp.example`` matches subdomains) and IPs/CIDRs."""
    items = [allow] if isinstance(allow, str) else list(allow)
    names: set[str] = set()
    nets: list[IPNetwork] = []
    for item in items:
        for entry in str(item).split(","):
            entry = entry.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
    return frozenset(names), tuple(nets)


def _name_allowed(host: str, names: frozenset[str]) -> bool:
    return host in names or any(n.startswith("*.") and host.endswith(n[1:]) for n in names)


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo client, NAT64), if any."""
    if ip.version == 4:
        return None
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is no webhook target (``"loopback"``, ``"private"``, ...), or None for a public address."""
    v4 = _embedded_v4(ip)
    if v4 is not None:
        return blocked_reason(v4)
    for attr in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{attr}"):
            return attr.replace("_", "-")
    return None if ip.is_global else "non-public"


def _static_check(url: str) -> tuple[str, str, str, int]:
    """Scheme, ASCII host, ``Host`` header value and port, after the checks that need no DNS."""
    if not isinstance(url, str) or not url.strip():
        raise ParamError(FIELD, "is empty; send an https:// URL of your LMS endpoint")
    if len(url) > MAX_URL_LENGTH:
        raise ParamError(FIELD, f"is {len(url)} characters long; use a URL of at most {MAX_URL_LENGTH}")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ParamError(FIELD, "contains spaces or control characters; percent-encode them")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ParamError(FIELD, f"scheme {scheme + '://' if scheme else '(none)'} is not allowed; "
                                "use an https:// (or http://) URL")
    if "@" in parts.netloc:
        raise ParamError(FIELD, "must not contain credentials (user:password@); authenticate the request by "
                                "its Sonic-Signature header, or put a token in the path or query string")
    if not parts.hostname:
        raise ParamError(FIELD, "has no host; use a full URL such as https://lms.example.com/hooks/sonic")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
        parsed = httpx.URL(url)
        host, netloc = parsed.raw_host.decode("ascii"), parsed.netloc.decode("ascii")
    except (ValueError, httpx.InvalidURL) as exc:
        raise ParamError(FIELD, f"is not a valid URL ({exc}); check the host and port") from None
    return scheme, host.rstrip("."), netloc, port


def _resolve(host: str, port: int, timeout_s: float) -> tuple[str, ...]:
    future = _DNS.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=timeout_s)
    except FutureTimeout:
        raise ParamError(FIELD, f"DNS lookup of {host} took over {timeout_s:g}s; check the host name") from None
    except (OSError, UnicodeError) as exc:
        raise ParamError(FIELD, f"host {host} does not resolve ({exc}); check the host name and that it is "
                                "in public DNS") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise ParamError(FIELD, f"host {host} has no addresses; check the host name")
    return addresses


def resolve_webhook_target(url: str, allow: str | Sequence[str] = "",
                           dns_timeout_s: float = DNS_TIMEOUT_S) -> Target:
    """Check ``url`` (see :func:`check_webhook_url`) and return the addresses it may be sent to."""
    scheme, host, netloc, port = _static_check(url)
    names, nets = parse_allow(allow)
    addresses = _resolve(host, port, dns_timeout_s)
    if not _name_allowed(host, names):
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            reason, v4 = blocked_reason(ip), _embedded_v4(ip)
            candidates = [ip] + ([v4] if v4 else [])
            if reason and not any(c in net for c in candidates for net in nets if c.version == net.version):
                shown = host if host == address else f"{host} resolves to {address}, which"
                inner = f" (IPv4 {v4} inside IPv6)" if v4 else ""
                article = "an" if reason[0] in "aeiou" else "a"
                raise ParamError(FIELD, f"{shown} is {article} {reason} address{inner}; webhooks only go to public "
                                        f"addresses. Use your LMS's public URL, or {_ALLOW_HINT}")
    return Target(url, scheme, host, netloc, addresses)


def check_webhook_url(url: str, allow: str | Sequence[str] = "", dns_timeout_s: float = DNS_TIMEOUT_S) -> None:
    """Raise ``ParamError("webhook_url", ...)`` unless ``url`` is an http(s) URL without credentials whose host
    resolves only to public addresses, or is allowed by ``allow`` (host names and CIDRs)."""
    resolve_webhook_target(url, allow, dns_timeout_s)


# -- secrets and signatures --------------------------------------------------------------------------


def tenant_webhook_secret(tenant: str, master: str | None = None) -> str:
    """``whsec_`` + hex HMAC-SHA256(master, ``webhook:{tenant}``); master defaults to $SONIC_WEBHOOK_SECRET.
    Without a master secret this raises :class:`WebhookSecretMissing` (webhooks are never sent unsigned)."""
    master = os.environ.get(ENV_SECRET, "") if master is None else master
    if not master:
        raise WebhookSecretMissing(f"no webhook signing secret: set {ENV_SECRET} to a long random string (the "
                                   "Helm chart sets it from its auth Secret)")
    return "whsec_" + hmac.new(master.encode(), f"webhook:{tenant}".encode(), hashlib.sha256).hexdigest()


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    """``v1=`` + hex HMAC-SHA256(secret, ``f"{timestamp}."`` + body)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + _as_bytes(body), hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signature_header(secret: str | Sequence[str], timestamp: int | str, body: bytes | str) -> str:
    """The ``Sonic-Signature`` value: one ``v1=`` per secret (several while a secret is rotated)."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    return ",".join(sign(s, timestamp, body) for s in secrets)


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    if value is None and isinstance(headers, Mapping):
        value = next((v for k, v in headers.items() if str(k).lower() == name.lower()), None)
    return None if value is None else str(value)


def verify(secret: str | Sequence[str], headers: Any, body: bytes | str, tolerance_s: float = 300,
           now: float | None = None) -> None:
    """Raise :class:`WebhookSignatureError` unless one ``v1=`` signature in ``headers`` matches ``body`` under
    one of the secrets and ``Sonic-Timestamp`` is within ``tolerance_s`` of ``now`` (replay protection)."""
    timestamp, signatures = _header(headers, H_TIMESTAMP), _header(headers, H_SIGNATURE)
    if not signatures:
        raise WebhookSignatureError(f"missing {H_SIGNATURE} header")
    if not timestamp:
        raise WebhookSignatureError(f"missing {H_TIMESTAMP} header")
    timestamp = timestamp.strip()
    try:
        sent = int(timestamp)
    except ValueError:
        raise WebhookSignatureError(f"{H_TIMESTAMP} is not unix seconds") from None
    skew = (time.time() if now is None else now) - sent
    if abs(skew) > tolerance_s:
        raise WebhookSignatureError(f"timestamp is {abs(skew):.0f}s {'old' if skew > 0 else 'in the future'} "
                                    f"(tolerance {tolerance_s:g}s): a replay, or a clock is wrong")
    received = [p.strip()[3:].encode() for p in signatures.split(",") if p.strip().startswith("v1=")]
    if not received:
        raise WebhookSignatureError(f"{H_SIGNATURE} has no v1= signature")
    expected = [sign(s, timestamp, body)[3:].encode() for s in ([secret] if isinstance(secret, str) else secret)]
    matched = False
    for want in expected:
        for got in received:
            matched |= hmac.compare_digest(want, got)
    if not matched:
        raise WebhookSignatureError("signature does not match (wrong secret, or the body was changed)")


def event_id_for(job_id: str, event_type: str) -> str:
    """The same job and event type always give the same id (so a re-queued event is one delivery)."""
    return "evt_" + hashlib.sha256(f"{job_id}\n{event_type}".encode()).hexdigest()[:32]


# -- the outbox --------------------------------------------------------------------------------------


class _Permanent(Exception):
    """The stored URL can never be delivered to (bad scheme, credentials, ...): stop retrying."""


def _tls_context() -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())


class WebhookOutbox:
    """Pending webhook events in S3 and their delivery (at least once; see the module docstring).

    ``enqueue`` and ``pending`` block (S3): call them with ``asyncio.to_thread`` from async code.
    ``secret_for(tenant)`` returns the tenant's secret, or several during a rotation (each one signs).
    """

    def __init__(self, storage: Storage, secret_for: Callable[[str], str | Sequence[str]],
                 allow: str | Sequence[str] = "", first_delay_s: float = 10.0, max_delay_s: float = 900.0,
                 give_up_after_s: float = 6 * 3600, timeout_s: float = 10.0, max_concurrency: int = 16,
                 dns_timeout_s: float = DNS_TIMEOUT_S):
        self.storage = storage
        self.secret_for = secret_for
        self.allow = allow
        self.first_delay_s, self.max_delay_s = first_delay_s, max_delay_s
        self.give_up_after_s, self.timeout_s = give_up_after_s, timeout_s
        self.max_concurrency, self.dns_timeout_s = max_concurrency, dns_timeout_s
        self._tls: ssl.SSLContext | None = None
        self._inflight: set[str] = set()
        self._cache: dict[str, tuple[str, dict[str, Any]]] = {}   # pending key -> (etag, object)
        self._sem: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    # -- queueing ------------------------------------------------------------------------------

    def enqueue(self, record: dict[str, Any], event_type: str) -> str | None:
        """Queue ``event_type`` for the job ``record`` if it has a ``webhook_url``; returns the event id. An
        event already pending or delivered is left alone (same id), so enqueuing twice sends once."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event_type!r} (known: {', '.join(EVENT_TYPES)})")
        url = (record.get("params") or {}).get("webhook_url")
        if not url:
            return None
        event_id, tenant = event_id_for(record["id"], event_type), record["tenant"]
        key = Keys.webhook_pending(event_id)
        if self.storage.exists(key) or self.storage.exists(Keys.webhook_delivered(tenant, event_id)):
            return event_id
        at = time.time()
        body = {"id": event_id, "type": event_type, "created_at": int(at), "data": {"job": public_view(record)}}
        self.storage.put_json(key, {
            "id": event_id, "type": event_type, "tenant": tenant, "job_id": record["id"], "url": url,
            "enqueued_at": round(at, 3), "next_attempt_at": round(at, 3), "attempts": [],
            "body": json.dumps(body, separators=(",", ":"), sort_keys=True),   # the exact bytes every try sends
        })
        log.info("webhook %s (%s) queued for job %s of tenant %s", event_id, event_type, record["id"], tenant)
        return event_id

    def pending(self) -> list[dict[str, Any]]:
        """Every pending event (soonest next attempt first)."""
        docs = [d for o in self.storage.list(PENDING_PREFIX) if (d := self.storage.get_json(o.key))]
        return sorted(docs, key=lambda d: d.get("next_attempt_at", 0))

    def backoff_s(self, attempt: int) -> float:
        """Wait after failed attempt ``attempt`` (1-based): doubling from ``first_delay_s`` up to
        ``max_delay_s``, with "equal jitter" (between half and all of it)."""
        delay = min(self.max_delay_s, self.first_delay_s * 2 ** min(attempt - 1, 40))
        return delay / 2 + random.uniform(0, delay / 2)

    # -- delivery ------------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Try every pending event whose next attempt is due (concurrently, at most ``max_concurrency`` at
        once) and wait for them; returns the number of attempts made."""
        tasks = await self._start_due()
        await asyncio.gather(*tasks)
        return len(tasks)

    async def run(self, stop: asyncio.Event, poll_s: float = 1.0) -> None:
        """Deliver until ``stop`` is set (then wait for the attempts under way). A slow receiver does not hold
        up the others: due events start every ``poll_s`` while earlier attempts still run."""
        running: set[asyncio.Task] = set()
        while not stop.is_set():
            try:
                for task in await self._start_due():
                    running.add(task)
                    task.add_done_callback(running.discard)
            except Exception as exc:  # noqa: BLE001 - S3 away: try again next poll
                log.warning("webhook outbox: listing pending events failed (%s: %s)", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    def _due(self, inflight: frozenset[str]) -> list[tuple[str, dict[str, Any]]]:
        listed = self.storage.list(PENDING_PREFIX)
        keys = {o.key for o in listed}
        for gone in set(self._cache) - keys:
            self._cache.pop(gone, None)
        due, now = [], time.time()
        for obj in listed:
            if obj.key in inflight:
                continue
            cached = self._cache.get(obj.key)
            if cached is None or cached[0] != obj.etag:
                doc = self.storage.get_json(obj.key)
                if doc is None:
                    continue
                self._cache[obj.key] = (obj.etag, doc)
            doc = self._cache[obj.key][1]
            if doc.get("next_attempt_at", 0) <= now:
                due.append((obj.key, json.loads(json.dumps(doc))))
        return sorted(due, key=lambda kd: kd[1].get("next_attempt_at", 0))

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem[0] is not loop:
            self._sem = (loop, asyncio.Semaphore(self.max_concurrency))
        return self._sem[1]

    async def _start_due(self) -> list[asyncio.Task]:
        due = await asyncio.to_thread(self._due, frozenset(self._inflight))
        sem = self._semaphore()
        tasks = []
        for key, doc in due:
            if key in self._inflight:
                continue
            self._inflight.add(key)
            tasks.append(asyncio.create_task(self._guarded(sem, key, doc)))
        return tasks

    async def _guarded(self, sem: asyncio.Semaphore, key: str, doc: dict[str, Any]) -> None:
        try:
            async with sem:
                await self._attempt(key, doc)
        except Exception as exc:  # noqa: BLE001 - S3 trouble while recording: the event stays pending
            log.warning("webhook %s: recording the attempt failed (%s: %s)", doc.get("id"), type(exc).__name__, exc)
        finally:
            self._inflight.discard(key)

    async def _attempt(self, key: str, doc: dict[str, Any]) -> None:
        tenant, event_id = doc["tenant"], doc["id"]
        done_key = Keys.webhook_delivered(tenant, event_id)
        if await asyncio.to_thread(self.storage.exists, done_key):   # acknowledged before a crash
            await asyncio.to_thread(self.storage.delete, key)
            return
        started = time.time()
        attempt: dict[str, Any] = {"n": len(doc["attempts"]) + 1, "at": round(started, 3), "status": None,
                                   "error": None}
        outcome = None
        try:
            attempt["status"], attempt["address"] = await self._post(doc)
            if 200 <= attempt["status"] < 300:
                outcome = "delivered"
            elif attempt["status"] == 410:
                outcome = "gone"
        except _Permanent as exc:
            attempt["error"], outcome = str(exc), "rejected"
        except ParamError as exc:
            attempt["error"] = exc.message
        except (TimeoutError, httpx.TimeoutException):
            attempt["error"] = f"timeout after {self.timeout_s:g}s"
        except Exception as exc:  # noqa: BLE001 - connection errors, missing secret, ...: retry later
            attempt["error"] = f"{type(exc).__name__}: {exc}"[:300]
        now = time.time()
        attempt["duration_s"] = round(now - started, 3)
        doc["attempts"].append(attempt)
        if outcome is None:
            give_up_at = doc["enqueued_at"] + self.give_up_after_s
            if now >= give_up_at:
                outcome = "expired"
            else:
                doc["next_attempt_at"] = round(min(give_up_at, now + self.backoff_s(attempt["n"])), 3)
        host = urlsplit(doc["url"]).hostname
        if outcome is None:
            info = await asyncio.to_thread(self.storage.put_json, key, doc)
            self._cache[key] = (info.etag, doc)
            log.info("webhook %s to %s: attempt %d failed (%s); next in %.1fs", event_id, host, attempt["n"],
                     attempt["status"] or attempt["error"], doc["next_attempt_at"] - now)
            return
        doc.pop("next_attempt_at", None)
        doc.update(outcome=outcome, finished_at=round(now, 3))
        await asyncio.to_thread(self.storage.put_json, done_key, doc)
        await asyncio.to_thread(self.storage.delete, key)
        self._cache.pop(key, None)
        level = logging.INFO if outcome == "delivered" else logging.WARNING
        log.log(level, "webhook %s (%s) of tenant %s to %s: %s after %d attempt(s)", event_id, doc["type"],
                tenant, host, outcome, attempt["n"])

    async def _post(self, doc: dict[str, Any]) -> tuple[int, str]:
        """POST the event, connecting only to the addresses checked just now (no DNS rebinding between the
        check and the connection); returns (status, address). Redirects are not followed."""
        try:
            _static_check(doc["url"])
        except ParamError as exc:
            raise _Permanent(exc.message) from None
        target = await asyncio.to_thread(resolve_webhook_target, doc["url"], self.allow, self.dns_timeout_s)
        body = doc["body"].encode()
        timestamp = int(time.time())
        headers = {"Host": target.netloc, "Content-Type": "application/json", "User-Agent": USER_AGENT,
                   H_ID: doc["id"], H_TYPE: doc["type"], H_TIMESTAMP: str(timestamp),
                   H_SIGNATURE: signature_header(self.secret_for(doc["tenant"]), timestamp, body)}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        if self._tls is None:
            self._tls = _tls_context()
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, trust_env=False,
                                     verify=self._tls) as client, asyncio.timeout(self.timeout_s):
            error: Exception | None = None
            for address in target.addresses:
                url = httpx.URL(target.url).copy_with(host=address.split("%", 1)[0])
                try:
                    async with client.stream("POST", url, content=body, headers=headers,
                                             extensions=extensions) as response:
                        return response.status_code, address
                except httpx.ConnectError as exc:   # next address (e.g. IPv6 then IPv4)
                    error = exc
            raise error or httpx.ConnectError("no address")
