"""The distributed pipeline on a real local Ray cluster and a real S3 server (tiny weights, 128 px, 2 steps).

One Serve app for the module (session fixture ``serve_stack``): five stage deployments, the job manager and
the HTTP ingress, two Diffusion replicas. Jobs of ~3 s of speech have 37 frames, i.e. two denoising windows
per step, so one job's windows can spread over both replicas.
"""

from __future__ import annotations

import concurrent.futures
import functools
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import torch
import yaml

from deployments.app import DEPLOYMENTS
from deployments.jobs import JobParams, create_job
from deployments.storage import Keys
from tests.helpers import SESSION_DIR, astronaut_png, speech_wav, tiny_weights

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(600)]

SECONDS = 3.0
TORCH_THREADS = 1      # the serve_stack fixture's torch_threads
BASE = {"steps": 2, "min_resolution": 128}


def _client(stack) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=60)


def _submit_http(client: httpx.Client, **params) -> dict:
    files = {"image": ("portrait.png", astronaut_png().read_bytes(), "image/png"),
             "audio": ("speech.wav", speech_wav(SECONDS).read_bytes(), "audio/wav")}
    response = client.post("/v1/jobs", files=files, data={k: str(v) for k, v in params.items()})
    assert response.status_code == 202, response.text
    return response.json()


def _wait(client: httpx.Client, job_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    seen_steps = set()
    while time.monotonic() < deadline:
        record = client.get(f"/v1/jobs/{job_id}").json()
        if record["stage"] == "denoise":
            seen_steps.add(record["progress"]["done"])
        if record["state"] in ("succeeded", "failed"):
            record["_seen_denoise_steps"] = sorted(seen_steps)
            return record
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} not finished after {timeout_s}s")


def _run_captured(stack, seed: int) -> tuple[dict, np.ndarray]:
    """A job run through every deployment, via the manager's handle, returning the raw frames it encoded."""
    from ray import serve

    params = JobParams.from_dict({**BASE, "seed": seed})
    record = create_job(stack.storage(), "local", params, astronaut_png().read_bytes(),
                        speech_wav(SECONDS).read_bytes(), "portrait.png", "speech.wav")
    handle = serve.get_deployment_handle("JobManager", "sonic")
    result = handle.run.remote("local", record["id"], True).result(timeout_s=300)
    assert result["record"]["state"] == "succeeded", result["record"]["error"]
    return result["record"], result["frames"]


@functools.cache
def _single_process_frames(seed: int) -> np.ndarray:
    """The same job through ``sonic-serve generate``'s single-process pipeline (same stage classes), at the
    replicas' intra-op thread count (torch's CPU reductions are ordered by thread count)."""
    from stages.local import JobInputs

    settings = JobParams.from_dict({**BASE, "seed": seed}).settings()
    out = SESSION_DIR / f"local-{seed}"
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        _local_pipeline().generate(JobInputs(image=astronaut_png(), audio=speech_wav(SECONDS)), settings,
                                   out / "video.mp4", raw_frames=out / "frames.npy")
    finally:
        torch.set_num_threads(threads)
    return np.load(out / "frames.npy")


@functools.cache
def _local_pipeline():
    from stages.local import LocalPipeline

    return LocalPipeline(tiny_weights(), "cpu", torch.float32)


def test_serve_status_shows_every_deployment(serve_stack):
    out = subprocess.run([str(Path(sys.executable).with_name("serve")), "status", "-a", serve_stack.dashboard_url],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    status = yaml.safe_load(out)
    (app,) = [a for a in status["applications"].values()]
    assert app["status"] == "RUNNING"
    assert set(app["deployments"]) == set(DEPLOYMENTS)
    assert all(d["status"] == "HEALTHY" for d in app["deployments"].values()), app["deployments"]
    assert app["deployments"]["Diffusion"]["replica_states"]["RUNNING"] == 2


def test_healthz_and_auth(serve_stack):
    assert httpx.get(f"{serve_stack.url}/healthz", timeout=30).json() == {"status": "ok", "s3": True}
    assert httpx.get(f"{serve_stack.url}/v1/jobs/jnope", timeout=30).status_code == 401
    bad = httpx.get(f"{serve_stack.url}/v1/jobs/jnope", headers={"Authorization": "Bearer sk_x_y"}, timeout=30)
    assert bad.status_code == 401
    with _client(serve_stack) as client:
        assert client.get("/v1/jobs/jnope").status_code == 404
        rejected = client.post("/v1/jobs", files={"image": ("a.png", b"x"), "audio": ("a.wav", b"y")},
                               data={"steps": "0"})
        assert rejected.status_code == 422 and rejected.json()["errors"][0]["field"] == "steps"
        assert rejected.headers["content-type"].startswith("application/problem+json")
    stored = serve_stack.storage().list("apikeys/")
    assert stored and all(serve_stack.api_key not in o.key for o in stored)   # hashed at rest


def test_end_to_end_over_http(serve_stack, tmp_path):
    with _client(serve_stack) as client:
        job = _submit_http(client, seed=7, lip_sync="true", **BASE)
        assert job["state"] == "queued"
        record = _wait(client, job["id"])
        assert record["state"] == "succeeded", record["error"]
        assert record["stage"] == "done" and record["progress"]["fraction"] == 1.0
        assert record["_seen_denoise_steps"] and max(record["_seen_denoise_steps"]) <= 2
        assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 302
        response = client.get(f"/v1/jobs/{job['id']}/result", follow_redirects=True)
        assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    video = tmp_path / "out.mp4"
    video.write_bytes(response.content)
    with av.open(str(video)) as container:
        assert container.streams.video[0].width == 128 and container.streams.audio
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == round(SECONDS * 25)
    assert record["output"]["frames"] == 2 * 37 - 1 and record["output"]["tiny_weights"] is True
    assert abs(record["output"]["lip_sync_applied_s"]) <= 0.05 and "lip_sync_offset_s" in record["output"]
    stored = serve_stack.storage().get_json(Keys.job("local", job["id"]))
    assert stored["state"] == "succeeded"             # the S3 record is what the ingress served
    assert set(stored["timings_s"]) == {"encode", "fusion", "denoise", "decode", "postprocess"}


def test_bad_input_is_refused_at_submission_with_the_field(serve_stack):
    with _client(serve_stack) as client:
        files = {"image": ("portrait.png", astronaut_png().read_bytes(), "image/png"),
                 "audio": ("speech.wav", astronaut_png().read_bytes(), "audio/wav")}   # a PNG as audio
        before = len(serve_stack.storage().list("jobs/local/"))
        refused = client.post("/v1/jobs", files=files, data=BASE)
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert problem["errors"][0]["field"] == "audio" and "PNG" in problem["errors"][0]["message"]
        assert len(serve_stack.storage().list("jobs/local/")) == before          # nothing was stored


def test_a_job_failing_in_the_pipeline_records_the_field(serve_stack):
    """Input that fails in a stage (here the stored speech was damaged after submission): the job fails with the
    stage's field."""
    storage = serve_stack.storage()
    record = create_job(storage, "local", JobParams.from_dict(BASE), astronaut_png().read_bytes(),
                        speech_wav(SECONDS).read_bytes(), "portrait.png", "speech.wav")
    storage.put_bytes(record["inputs"]["audio"], b"RIFF\x00\x00\x00\x00WAVEjunk")
    from ray import serve

    result = serve.get_deployment_handle("JobManager", "sonic").run.remote("local", record["id"]).result(
        timeout_s=300)["record"]
    assert result["state"] == "failed" and result["error"]["field"], result["error"]
    with _client(serve_stack) as client:
        assert client.get(f"/v1/jobs/{record['id']}/result").status_code == 409


def test_distributed_frames_equal_single_process(serve_stack):
    record, frames = _run_captured(serve_stack, seed=11)
    expected = _single_process_frames(11)
    assert frames.shape == expected.shape == (2 * 37 - 1, 128, 128, 3)
    assert np.array_equal(frames, expected), f"max |diff| {np.abs(frames - expected).max()}"
    # alone on the deployment, each step's two windows ran on the two replicas (least-loaded routing)
    for step in (0, 1):
        replicas = [w["replica"] for w in record["placement"]["windows"] if w["step"] == step]
        assert len(replicas) == len(set(replicas)) == 2, record["placement"]


def test_two_concurrent_jobs_spread_windows_and_are_both_correct(serve_stack):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda seed: _run_captured(serve_stack, seed), (21, 22)))
    for seed, (_, frames) in zip((21, 22), runs, strict=True):
        assert np.array_equal(frames, _single_process_frames(seed)), f"seed {seed} differs"
    assert not np.array_equal(runs[0][1], runs[1][1])
    replicas_used = set()
    for record, _ in runs:
        placement = record["placement"]
        windows = placement["windows"]
        assert len(windows) == 2 * 2                   # 2 steps x 2 windows
        replicas_used |= {w["replica"] for w in windows}
        # conditioning reached each replica at most once for the job
        assert all(n == 1 for n in placement["conditioning_loads"].values()), placement["conditioning_loads"]
        assert set(placement["conditioning_loads"]) >= {w["replica"] for w in windows}
    assert len(replicas_used) >= 2, replicas_used        # both replicas worked (a replica takes two units,
                                                         # so each job may keep to one while both are busy)


def test_cli_submit_downloads_the_video(serve_stack, tmp_path, capsys):
    from sonic_serve.cli import main

    out = tmp_path / "cli.mp4"
    code = main(["submit", "--url", serve_stack.url, "--api-key", serve_stack.api_key, "--image",
                 str(astronaut_png()), "--audio", str(speech_wav(SECONDS)), "-o", str(out), "--steps", "2",
                 "--min-resolution", "128", "--no-interpolate"])
    assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    with av.open(str(out)) as container:
        assert float(container.streams.video[0].average_rate) == 12.5     # --no-interpolate
