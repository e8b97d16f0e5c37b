"""Faults on the local stack (tiny weights): every accepted job still ends exactly once, with the right frames.

Jobs here run 4 denoising steps (2 windows each, on 2 Diffusion replicas) so that a fault can land mid-job.
The manager checkpoints latents after every step (``checkpoint_every: 1`` in the test stack) and adopts a
dead manager's jobs after ``manager_lease_s`` (10 s in the test stack).
"""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from deployments.jobs import TERMINAL, JobParams, create_job
from deployments.storage import Keys
from tests.helpers import astronaut_png, speech_wav

pytestmark = [pytest.mark.chaos, pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(900)]

TENANT = "local"
SECONDS = 3.0
PARAMS = {"steps": 4, "min_resolution": 128}


def _manager():
    from ray import serve

    return serve.get_deployment_handle("JobManager", "sonic")


def _create(stack, **params) -> str:
    record = create_job(stack.storage(), TENANT, JobParams.from_dict({**PARAMS, **params}),
                        astronaut_png().read_bytes(), speech_wav(SECONDS).read_bytes(), "portrait.png", "speech.wav")
    return record["id"]


def _record(stack, job_id: str) -> dict | None:
    try:
        return stack.storage().get_json(Keys.job(TENANT, job_id))
    except Exception:  # noqa: BLE001 - S3 may be down on purpose
        return None


def _wait_for(stack, job_id: str, predicate: Callable[[dict], bool], timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = _record(stack, job_id)
        if record is not None and predicate(record):
            return record
        if record is not None and record["state"] in TERMINAL and not predicate(record):
            raise AssertionError(f"job {job_id} ended {record['state']}: {record.get('error')}")
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id}: condition not met in {timeout_s}s; last {_record(stack, job_id)}")


def _denoised(steps: int) -> Callable[[dict], bool]:
    return lambda r: r["stage"] == "denoise" and r["progress"]["done"] >= steps or r["stage"] in (
        "decode", "postprocess", "done")


def _succeeded(record: dict) -> bool:
    return record["state"] == "succeeded"


def _kill_replica(deployment: str) -> str:
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::sonic#{deployment}#")]
    assert names, f"no {deployment} replica"
    victim = names[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    return victim["name"]


def _run_capture(job_id: str) -> concurrent.futures.Future:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(lambda: _manager().run.remote(TENANT, job_id, True).result(timeout_s=600))
    pool.shutdown(wait=False)
    return future


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every POST."""

    def __init__(self) -> None:
        self.events: list[tuple[dict, dict]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, job_id: str) -> list[str]:
        return [body["type"] for _, body in self.events if body["data"]["job"]["id"] == job_id]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def test_diffusion_replica_killed_mid_step_gives_the_same_frames(serve_stack):
    undisturbed = _run_capture(_create(serve_stack, seed=31)).result()
    job_id = _create(serve_stack, seed=31)
    running = _run_capture(job_id)
    _wait_for(serve_stack, job_id, _denoised(1))
    killed = _kill_replica("Diffusion")
    result = running.result()
    assert result["record"]["state"] == "succeeded", result["record"]["error"]
    assert np.array_equal(result["frames"], undisturbed["frames"])
    import ray

    assert killed not in {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}


def test_job_manager_killed_mid_job_resumes_from_its_checkpoint_once(serve_stack, receiver):
    job_id = _create(serve_stack, seed=32, webhook_url=receiver.url)
    _manager().submit.remote(TENANT, job_id).result(timeout_s=60)
    at_kill = _wait_for(serve_stack, job_id, lambda r: (r.get("checkpoint") or {}).get("steps_done", 0) >= 2
                        or r["stage"] in ("decode", "postprocess", "done"))
    checkpoint = at_kill["checkpoint"]
    assert checkpoint["steps_done"] >= 2 and serve_stack.storage().exists(checkpoint["key"])
    _kill_replica("JobManager")
    record = _wait_for(serve_stack, job_id, _succeeded, timeout_s=400)
    states = [h["state"] for h in record["history"]]
    assert states.count("succeeded") == 1 and states.count("running") == 2, states
    assert record["attempts"] == 2 and record["history"][-2].get("resumed") is True
    steps_rerun = {w["step"] for w in record["placement"]["windows"]}
    assert min(steps_rerun) >= checkpoint["steps_done"], (steps_rerun, checkpoint)    # not from scratch
    # the terminal record is written first, then the webhook queued, then marker and checkpoints dropped
    storage, deadline = serve_stack.storage(), time.monotonic() + 60
    while (storage.exists(Keys.active(TENANT, job_id)) or storage.list(Keys.checkpoint(TENANT, job_id, ""))) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not storage.list(Keys.checkpoint(TENANT, job_id, ""))
    assert not storage.exists(Keys.active(TENANT, job_id))
    deadline = time.monotonic() + 60
    while not receiver.of(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    assert receiver.of(job_id) == ["job.succeeded"]          # delivered exactly once


def test_s3_unreachable_for_10_s_mid_job(serve_stack, s3_process):
    job_id = _create(serve_stack, seed=33)
    _manager().submit.remote(TENANT, job_id).result(timeout_s=60)
    _wait_for(serve_stack, job_id, _denoised(1))
    s3_process.stop()
    try:
        time.sleep(10)
    finally:
        s3_process.start()
    record = _wait_for(serve_stack, job_id, _succeeded, timeout_s=400)
    assert record["attempts"] == 1, "the job rode out the outage without a restart"
    assert serve_stack.storage().stat(record["output"]["video_key"]).size > 0


def test_cancel_mid_job_stops_within_one_step(serve_stack, receiver):
    job_id = _create(serve_stack, seed=34, steps=8, webhook_url=receiver.url)
    manager = _manager()
    manager.submit.remote(TENANT, job_id).result(timeout_s=60)
    before = _wait_for(serve_stack, job_id, _denoised(1))["progress"]["done"]
    answer = manager.cancel.remote(TENANT, job_id).result(timeout_s=120)
    assert answer == {"id": job_id, "state": "cancelled", "cancelled": True}
    record = _record(serve_stack, job_id)
    assert record["state"] == "cancelled" and record["progress"]["done"] <= before + 1
    dispatched = manager.dispatch_order.remote().result().count(job_id)
    time.sleep(3)
    assert manager.dispatch_order.remote().result().count(job_id) == dispatched     # nothing more ran
    assert manager.active.remote().result()["diffusion"]["in_flight"] == 0
    assert manager.cancel.remote(TENANT, job_id).result()["cancelled"] is False      # already ended
    deadline = time.monotonic() + 30
    while not receiver.of(job_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert receiver.of(job_id) == ["job.cancelled"]


def test_scale_down_mid_job_finishes_the_work_in_flight(serve_stack):
    undisturbed = _run_capture(_create(serve_stack, seed=35)).result()
    job_id = _create(serve_stack, seed=35)
    running = _run_capture(job_id)
    _wait_for(serve_stack, job_id, _denoised(1))
    try:
        serve_stack.scale("Diffusion", 1)
        result = running.result()
    finally:
        serve_stack.scale("Diffusion", 2)
    assert result["record"]["state"] == "succeeded", result["record"]["error"]
    assert np.array_equal(result["frames"], undisturbed["frames"])


@pytest.mark.slow
def test_whole_app_restart_resumes_unfinished_jobs(serve_stack):
    """A hard stop (Ray gone, as in a crash or `ray stop --force`), then `up` again on the same S3."""
    job_id = _create(serve_stack, seed=36)
    _manager().submit.remote(TENANT, job_id).result(timeout_s=60)
    _wait_for(serve_stack, job_id, _denoised(1))
    serve_stack.stop(hard=True)
    assert _record(serve_stack, job_id)["state"] == "running"
    serve_stack.start()
    record = _wait_for(serve_stack, job_id, _succeeded, timeout_s=600)
    assert record["attempts"] == 2 and [h["state"] for h in record["history"]].count("succeeded") == 1
