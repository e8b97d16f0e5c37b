"""200 concurrent submissions of tiny jobs over HTTP: the stack holds.

Every submission is accepted (202) or refused with 429/503 and ``Retry-After``; with one tenant at the
default quotas (120 submissions per minute) the burst is expected to be partly rate-limited, and the counts
must add up. Every accepted job reaches a terminal state in S3 (succeeded, or failed with a reason), no
refused submission leaves a record, and the Ingress and JobManager replicas' memory stays bounded.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from PIL import Image

from deployments.auth import create_api_key
from deployments.jobs import TERMINAL
from deployments.storage import Keys
from tests.badinput.client import Part, multipart
from tests.badinput.media import portrait, speech_16k, wav_bytes

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(3000)]

SUBMISSIONS = 200
TENANT = "load-hold"
PARAMS = {"steps": "1", "min_resolution": "64", "interpolate": "false", "seed": "3"}
MAX_GROWTH_MIB = {"Ingress": 400, "JobManager": 300}
FINISH_TIMEOUT_S = 2400


def tiny_inputs() -> tuple[bytes, bytes]:
    """A 256 px portrait and 0.5 s of speech: the smallest job the service accepts."""
    buffer = io.BytesIO()
    portrait().resize((256, 256), Image.Resampling.LANCZOS).save(buffer, format="PNG")
    return buffer.getvalue(), wav_bytes(speech_16k()[:8000], 16000)


def replica_rss(stack) -> dict[str, int]:
    """Deployment name -> summed RSS (bytes) of its live replicas' processes."""
    from ray.util.state import list_actors

    out: Counter[str] = Counter()
    for actor in list_actors(address=stack.dashboard_url, filters=[("state", "=", "ALIVE")], detail=True,
                             limit=10_000, raise_on_missing_output=False):
        name = actor.class_name.rsplit(":", 1)[-1]
        if actor.class_name.startswith("ServeReplica:") and name in MAX_GROWTH_MIB and actor.pid:
            out[name] += psutil.Process(actor.pid).memory_info().rss
    return dict(out)


def submit_all(url: str, key: str, image: bytes, audio: bytes) -> list[httpx.Response | Exception]:
    """SUBMISSIONS multipart jobs at once: one thread each, released together by a barrier."""
    barrier = threading.Barrier(SUBMISSIONS)
    limits = httpx.Limits(max_connections=SUBMISSIONS, max_keepalive_connections=SUBMISSIONS)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300, limits=limits) as http:
        def one(index: int) -> httpx.Response | Exception:
            parts = [Part("image", image, "p.png", "image/png"), Part("audio", audio, "s.wav", "audio/wav"),
                     *(Part(k, v) for k, v in PARAMS.items())]
            body, kind = multipart(parts)
            barrier.wait()
            try:
                return http.post("/v1/jobs", content=body, headers={"Content-Type": kind})
            except Exception as exc:  # noqa: BLE001 - counted as a lost submission below
                return exc

        with ThreadPoolExecutor(SUBMISSIONS) as pool:
            return list(pool.map(one, range(SUBMISSIONS)))


def wait_terminal(storage, ids: list[str], timeout_s: float) -> dict[str, dict]:
    """Every id's S3 record once all are terminal (or whatever they are at the deadline)."""
    deadline = time.monotonic() + timeout_s
    records: dict[str, dict] = {}
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            record = storage.get_json(Keys.job(TENANT, job_id))
            if record is not None:
                records[job_id] = record
                if record["state"] in TERMINAL:
                    pending.remove(job_id)
        if pending:
            time.sleep(5)
    return records


def test_200_concurrent_tiny_jobs_hold(serve_stack):
    storage = serve_stack.storage()
    key = create_api_key(storage, TENANT, label="load hold")
    image, audio = tiny_inputs()
    rss_before = replica_rss(serve_stack)
    assert set(rss_before) == set(MAX_GROWTH_MIB), rss_before

    started = time.monotonic()
    answers = submit_all(serve_stack.url, key, image, audio)
    burst_s = time.monotonic() - started

    errors = [a for a in answers if isinstance(a, Exception)]
    assert not errors, f"{len(errors)} submissions got no answer: {errors[:3]}"
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {202, 429, 503}, statuses
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code != 202]
    assert len(accepted) + len(refused) == SUBMISSIONS and len(set(accepted)) == len(accepted)
    for answer in refused:
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["type"].rsplit("/", 1)[-1] in ("rate_limited", "queue_limit", "concurrency_limit",
                                                             "queue_full"), answer.json()
    # the tenant's submissions per minute (120 by default): a burst well under a minute fills the window
    quotas = httpx.get(f"{serve_stack.url}/v1/tenant", headers={"Authorization": f"Bearer {key}"}).json()["quotas"]
    expected = min(SUBMISSIONS, quotas["submits_per_minute"])
    assert burst_s < 60 and len(accepted) == expected, (burst_s, statuses, quotas)

    records = wait_terminal(storage, accepted, FINISH_TIMEOUT_S)
    assert set(records) == set(accepted), "accepted jobs without a record in S3"
    states = Counter(r["state"] for r in records.values())
    unfinished = {i: r["state"] for i, r in records.items() if r["state"] not in TERMINAL}
    assert not unfinished, (states, list(unfinished.items())[:5])
    for record in records.values():
        if record["state"] == "failed":
            assert record["error"] and record["error"]["type"] and record["error"]["message"], record["error"]
    assert states["cancelled"] == 0 and states["succeeded"] >= 0.95 * len(accepted), states

    # nothing lost, nothing extra: the tenant's records are exactly the accepted jobs
    stored = {o.key.rsplit("/", 1)[-1].removesuffix(".json") for o in storage.list(Keys.jobs(TENANT))}
    assert stored == set(accepted)

    rss_after = replica_rss(serve_stack)
    growth = {name: (rss_after[name] - rss_before[name]) / 2**20 for name in MAX_GROWTH_MIB}
    assert all(growth[name] < MAX_GROWTH_MIB[name] for name in growth), growth
    print(f"\nload hold: {dict(statuses)} in {burst_s:.1f}s; states {dict(states)}; "
          f"all done {time.monotonic() - started:.0f}s; RSS growth MiB {growth}")
