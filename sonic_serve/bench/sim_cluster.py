"""SIMULATION ONLY (``bench scaling``): a local Ray and S3 server running the simulation app, and the manager's
own per-step work measured with the real code."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sonic_serve.bench.sim_app import APP_NAME, build_sim_app
from sonic_serve.bench.simulated_diffusion import SimConfig

TENANT = "bench"


def manager_step_costs(storage, frames: int, steps: int, latent_hw: int, reps: int = 3) -> dict[str, float]:
    """Seconds of the manager's own per-step work on a job's critical path, measured here with the same code and
    the same S3 server: merging the step's windows, slicing the next step's windows, the latents checkpoint and
    the record write (with the placement of every window, as at the job's end)."""
    import torch

    from deployments.checkpoints import save_latents
    from sonic_core.sampler import merge_windows, plan_windows

    latents = torch.zeros((1, frames, 4, latent_hw, latent_hw), dtype=torch.float16)
    windows = plan_windows(frames, 1)
    results = [latents[:, w] for w in windows]
    record = {"id": "bench-costs", "tenant": TENANT, "state": "running", "placement": {"windows": [
        {"step": n // len(windows), "window": n % len(windows), "first_frame": 0, "replica": "Diffusion#abcdefgh",
         "loaded_conditioning": False, "seconds": 0.2375} for n in range(steps * len(windows))]}}

    def timed(fn) -> float:
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    return {
        "merge": timed(lambda: merge_windows(frames, windows, results)),
        "slice": timed(lambda: [latents[:, w] for w in windows]),
        "checkpoint": timed(lambda: save_latents(storage, TENANT, "bench-costs", 1, latents)),
        "record": timed(lambda: storage.put_json(f"jobs/{TENANT}/bench-costs.json", record)),
        "latents_mb": latents.nbytes / 1e6,
    }


class SimCluster:
    """A local Ray with an embedded S3 server; deploys the simulation app with N Diffusion replicas."""

    def __init__(self, args: Any, sigmas: list[float]):
        self.args = args
        self.sigmas = sigmas
        self.root = Path(tempfile.mkdtemp(prefix="sonic-bench-scaling-"))
        self.s3 = None
        self.storage = None
        self.handle = None

    def start(self) -> None:
        import os

        import ray
        from ray import serve

        from deployments.s3server import EmbeddedS3
        from deployments.storage import Storage

        self.s3 = EmbeddedS3(self.root / "s3")
        settings = self.s3.start()
        os.environ.update(settings.as_env())      # inherited by the Ray workers
        self.storage = Storage(settings, "bench")
        self.storage.ensure_bucket()
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, namespace="sonic-bench")
        serve.start(proxy_location="Disabled")
        self.settings = settings

    def deploy(self, replicas: int, log_dir: Path) -> None:
        from ray import serve

        log_dir.mkdir(parents=True, exist_ok=True)
        sim = self.sim_config(log_dir)
        manager_config = {"s3_endpoint": self.settings.endpoint, "s3_bucket": "bench", "weights": "unused",
                          "max_active_jobs": 64}
        if self.args.checkpoint_every is not None:
            manager_config["checkpoint_every"] = self.args.checkpoint_every
        if self.args.queue_per_replica is not None:
            manager_config["diffusion_queue_per_replica"] = self.args.queue_per_replica
        app = build_sim_app(manager_config, asdict(sim), replicas, self.manager_env(),
                            1 if self.args.replica_queue is None else self.args.replica_queue)
        self.handle = serve.run(app, name=APP_NAME, route_prefix=None)

    def manager_env(self) -> dict[str, str]:
        env = {}
        if self.args.router_max_backoff_s is not None:
            env["RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S"] = str(self.args.router_max_backoff_s)
            env["RAY_SERVE_ROUTER_RETRY_INITIAL_BACKOFF_S"] = str(min(0.025, self.args.router_max_backoff_s))
        return env

    def undeploy(self) -> None:
        from ray import serve

        serve.delete(APP_NAME)
        self.handle = None

    def sim_config(self, log_dir: Path) -> SimConfig:
        return SimConfig(sigmas=self.sigmas, gpu_tflops=self.args.gpu_tflops, time_scale=self.args.time_scale,
                         latent_hw=self.args.min_resolution // 8, log_dir=str(log_dir))

    def new_job(self, clip_s: float, steps: int) -> str:
        from deployments.jobs import JobParams, create_job

        params = JobParams.from_dict({"steps": steps, "duration_s": clip_s,
                                      "min_resolution": self.args.min_resolution, "interpolate": False})
        record = create_job(self.storage, TENANT, params, b"simulated image", b"simulated audio",
                            "portrait.png", "speech.wav")
        return record["id"]

    def run_jobs(self, clips: list[float], steps: int, gap_s: float = 0.0) -> list[dict[str, Any]]:
        """Start one job per clip length, ``gap_s`` apart; wait for all; their final records."""
        ids = [self.new_job(clip, steps) for clip in clips]
        responses = []
        for n, job_id in enumerate(ids):
            if n and gap_s:
                time.sleep(gap_s)
            responses.append(self.handle.run.remote(TENANT, job_id))
        records = []
        for response in responses:
            record = response.result(timeout_s=3600)["record"]
            if record["state"] != "succeeded":
                raise RuntimeError(f"simulated job {record['id']} {record['state']}: {record.get('error')}")
            records.append(record)
        return records

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if self.s3 is not None:
                self.s3.stop()
            shutil.rmtree(self.root, ignore_errors=True)
