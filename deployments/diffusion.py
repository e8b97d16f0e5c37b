"""Stage deployment 3: denoising windows and VAE decode chunks (:class:`stages.diffusion.DiffusionStage`).

Per-job conditioning cache. Serve's router may send any window of any job to any replica, so every window
request carries the job's FusedJob as an ObjectRef (nested in a list, so Ray does not resolve it). A replica
that does not hold the job yet fetches it from the object store once and caches it by job id; concurrent
windows of the same job on one replica share that single fetch. Per step, only the window's latent slice
travels. Cached jobs are evicted when the job's denoising ends (the manager lists recently ended jobs in every
request it sends), when idle for ``CACHE_IDLE_S``, and beyond ``MAX_CACHED_JOBS`` (least recently used).

Tracing: every unit of work takes an optional ``trace`` carrier (``deployments.telemetry.inject()`` in the
manager) and opens its span under it: ``diffusion.prepare``, ``diffusion.window`` (step, frames, replica),
``diffusion.decode`` (chunk, replica). Without a carrier the work is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from ray import serve
from ray.serve.config import RequestRouterConfig

from deployments import telemetry
from deployments.common import OncePerKey, replica_max_ongoing, replica_name, run_blocking
from deployments.config import AppConfig, stage_runtime
from deployments.logs import configure_json_logging, job_context
from deployments.routing import LEAST_LOADED_ROUTER
from sonic_core.sampler import Schedule, StepState, make_schedule
from sonic_core.weights import WeightsLayout, scheduler_config
from stages.payloads import FusedJob, WindowResult, WindowTask

log = logging.getLogger(__name__)

CACHE_IDLE_S = 300.0
MAX_CACHED_JOBS = 16


@dataclass
class Prepared:
    schedule: Schedule
    latents: torch.Tensor          # [1, F, 4, h, w] initial latents
    num_frames: int
    replica: str
    max_ongoing_requests: int


@dataclass
class WindowOutcome:
    result: WindowResult
    loaded_conditioning: bool      # this request fetched the job's conditioning into the replica
    seconds: float                 # compute time on the replica (not the wait for the one before it)


@dataclass
class DecodedChunk:
    frames: torch.Tensor           # float32 [n, 3, H, W] in [0, 1]
    replica: str
    seconds: float


@serve.deployment(name="Diffusion", max_ongoing_requests=2, graceful_shutdown_timeout_s=300,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 16, "target_ongoing_requests": 1},
                  request_router_config=RequestRouterConfig(request_router_class=LEAST_LOADED_ROUTER),
                  ray_actor_options={"num_cpus": 1})
class Diffusion:
    def __init__(self, config: dict[str, Any]):
        from stages.diffusion import DiffusionStage

        self.replica = replica_name()
        configure_json_logging(os.environ.get("SONIC_LOG_LEVEL", "INFO"), replica=self.replica)
        telemetry.setup_tracing()
        self.config = AppConfig(**config)
        runtime = stage_runtime(self.config)
        self.stage = DiffusionStage(runtime.weights, runtime.device, runtime.dtype, replica=self.replica)
        self.scheduler_config = scheduler_config(WeightsLayout(runtime.weights))
        self._last_used: dict[str, float] = {}
        self._loading = OncePerKey()
        self._sweeper: asyncio.Task | None = None
        # One unit computes at a time; a second accepted request waits here with its inputs already
        # delivered and its job's conditioning loaded, so the device never idles between units.
        self._compute = asyncio.Lock()
        self.loads = 0

    # -- conditioning cache -------------------------------------------------------------------------

    def _evict(self, job_id: str) -> None:
        self.stage.release_job(job_id)
        self._last_used.pop(job_id, None)

    def _note_ended(self, ended: tuple[str, ...] | list[str]) -> None:
        for job_id in ended:
            if self.stage.has_job(job_id):
                self._evict(job_id)

    def _sweep(self) -> None:
        now = time.monotonic()
        for job_id, used in list(self._last_used.items()):
            if now - used > CACHE_IDLE_S:
                self._evict(job_id)
        while len(self._last_used) > MAX_CACHED_JOBS:
            self._evict(min(self._last_used, key=self._last_used.get))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(30)
            self._sweep()

    async def _ensure_job(self, job_id: str, fused_box: list) -> bool:
        """Make the job's conditioning resident; True when this call fetched it."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        self._last_used[job_id] = time.monotonic()
        if self.stage.has_job(job_id):
            return False

        async def load() -> None:
            fused: FusedJob = await fused_box[0]
            await run_blocking(self.stage.load_job, job_id, fused.conditioning)
            self.loads += 1

        if not await self._loading.run(job_id, load):
            return False
        self._last_used[job_id] = time.monotonic()
        self._sweep()
        return True

    # -- units of work ------------------------------------------------------------------------------

    async def prepare(self, job_id: str, fused_box: list, seed: int, steps: int, noise_strength: float,
                      guidance_image: float, guidance_audio: float, trace: dict | None = None) -> Prepared:
        """The job's schedule and initial latents (needs the weights' scheduler config and VAE scale)."""
        with telemetry.attach(trace), job_context(job_id), telemetry.span(
                "diffusion.prepare", job_id=job_id, steps=steps, replica=self.replica) as span:
            loaded = await self._ensure_job(job_id, fused_box)
            fused: FusedJob = await fused_box[0]
            schedule = make_schedule(self.scheduler_config, steps, noise_strength, guidance_image, guidance_audio)
            async with self._compute:
                latents = await run_blocking(self.stage.start_latents, fused, seed, schedule)
            span.set_attributes({"frames": fused.conditioning.num_frames, "loaded_conditioning": loaded})
            return Prepared(schedule, latents, fused.conditioning.num_frames, self.replica,
                            replica_max_ongoing(2))

    async def denoise(self, job_id: str, fused_box: list, step: StepState, frames: list[int],
                      latents: torch.Tensor, ended: tuple[str, ...] = (), trace: dict | None = None) -> WindowOutcome:
        self._note_ended(ended)
        with telemetry.attach(trace), job_context(job_id), telemetry.span(
                "diffusion.window", job_id=job_id, step=step.index, frames=len(frames),
                first_frame=frames[0] if frames else None, replica=self.replica) as span:
            loaded = await self._ensure_job(job_id, fused_box)
            span.set_attribute("loaded_conditioning", loaded)
            async with self._compute:
                start = time.perf_counter()
                result = await run_blocking(self.stage.denoise_window, WindowTask(job_id, step, frames, latents))
                seconds = time.perf_counter() - start
        self._last_used[job_id] = time.monotonic()
        return WindowOutcome(result, loaded, seconds)

    async def decode(self, latents: torch.Tensor, ended: tuple[str, ...] = (), trace: dict | None = None,
                     chunk: int | None = None, job_id: str | None = None) -> DecodedChunk:
        """One decode chunk; ``chunk`` and ``job_id`` only label the span and log lines."""
        self._note_ended(ended)
        with telemetry.attach(trace), job_context(job_id), telemetry.span(
                "diffusion.decode", job_id=job_id, chunk=chunk, frames=int(latents.shape[0]), replica=self.replica):
            async with self._compute:
                start = time.perf_counter()
                frames = await run_blocking(self.stage.decode_chunk, latents)
                seconds = time.perf_counter() - start
        return DecodedChunk(frames, self.replica, seconds)

    async def release(self, job_ids: list[str]) -> list[str]:
        """Evict the given jobs if cached here (best effort: reaches whichever replica the router picks)."""
        self._note_ended(job_ids)
        return sorted(self._last_used)

    async def cached_jobs(self) -> dict[str, Any]:
        return {"replica": self.replica, "jobs": sorted(self._last_used), "loads": self.loads}

    def __del__(self):
        with contextlib.suppress(Exception):
            if self._sweeper is not None:
                self._sweeper.cancel()
