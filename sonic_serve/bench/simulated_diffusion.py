"""SIMULATION ONLY (``sonic-serve bench scaling``): a stand-in for ``deployments.diffusion.Diffusion`` whose units
of work sleep for the time a GPU would need, from a FLOP model, instead of running the UNet and the VAE.

Same deployment name and method signatures as the real one (``prepare``, ``denoise``, ``decode``), so the real
:class:`deployments.manager.JobManager` and its :class:`FairDispatcher` drive it unchanged. Returned objects have
the attributes the manager reads (``Prepared``, ``WindowOutcome``, ``DecodedChunk``), as light dataclasses so
that a replica imports only torch and Ray (16 replicas fit a small machine). Latent tensors have the real shapes
and dtype, so what the object store moves per unit is what the real deployment moves; decoded frames are small.

Cost model: one window-step (25 frames, 512², 3 CFG branches) = ``window_tflop`` (95 TFLOP); VAE decode =
``decode_tflop_per_frame`` (3 TFLOP) per frame; divided by ``gpu_tflops`` (effective TFLOP/s), times
``time_scale``. Every unit's start and end are appended to ``log_dir/<replica>.tsv`` for busy fractions.

Never import this outside ``sonic_serve.bench``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import serve
from ray.serve.config import RequestRouterConfig

from deployments.common import OncePerKey, replica_max_ongoing, replica_name
from deployments.routing import LEAST_LOADED_ROUTER

WINDOW_TFLOP = 95.0
DECODE_TFLOP_PER_FRAME = 3.0
DEFAULT_GPU_TFLOPS = 400.0


@dataclass(frozen=True)
class SimStep:
    """What the manager passes back to ``denoise`` (the real ``StepState``'s fields)."""

    index: int
    timestep: torch.Tensor
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    guidance_image: float = 2.0
    guidance_audio: float = 7.5


@dataclass
class SimSchedule:
    steps: list[SimStep]


@dataclass
class SimPrepared:
    schedule: SimSchedule
    latents: torch.Tensor
    num_frames: int
    replica: str
    max_ongoing_requests: int


@dataclass
class SimWindowResult:
    frames: list[int]
    latents: torch.Tensor
    replica: str


@dataclass
class SimWindowOutcome:
    result: SimWindowResult
    loaded_conditioning: bool
    seconds: float


@dataclass
class SimDecodedChunk:
    frames: torch.Tensor
    replica: str
    seconds: float


@dataclass
class SimConfig:
    sigmas: list[float]                 # the real schedule's sigmas (steps + 1 values), computed by the driver
    gpu_tflops: float = DEFAULT_GPU_TFLOPS
    time_scale: float = 1.0
    window_tflop: float = WINDOW_TFLOP
    decode_tflop_per_frame: float = DECODE_TFLOP_PER_FRAME
    latent_hw: int = 64                 # 512 px / 8
    latent_dtype: str = "float16"
    frame_hw: int = 8                   # decoded frames are this small (their cost is modelled, not moved)
    log_dir: str = ""

    def window_s(self) -> float:
        return self.window_tflop / self.gpu_tflops * self.time_scale

    def decode_s(self, frames: int) -> float:
        return self.decode_tflop_per_frame * frames / self.gpu_tflops * self.time_scale


@serve.deployment(name="Diffusion", max_ongoing_requests=2, graceful_shutdown_timeout_s=30,
                  request_router_config=RequestRouterConfig(request_router_class=LEAST_LOADED_ROUTER),
                  ray_actor_options={"num_cpus": 0.01})
class SimulatedDiffusion:
    def __init__(self, config: dict[str, Any]):
        self.config = SimConfig(**config)
        self.replica = replica_name()
        self.dtype = getattr(torch, self.config.latent_dtype)
        self._jobs: set[str] = set()
        self._loading = OncePerKey()
        self._log = None
        self._gpu = asyncio.Lock()      # units computed one at a time, as in the real replica
        if self.config.log_dir:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.replica)
            self._log = open(Path(self.config.log_dir) / f"{safe}.tsv", "a", buffering=1)  # noqa: SIM115

    def _record(self, kind: str, job_id: str, start: float, end: float) -> None:
        if self._log is not None:
            self._log.write(f"{self.replica}\t{kind}\t{job_id}\t{start:.6f}\t{end:.6f}\n")

    async def _ensure_job(self, job_id: str, fused_box: list) -> bool:
        """Fetch the job's conditioning once per replica, like the real deployment."""
        if job_id in self._jobs:
            return False

        async def load() -> None:
            await fused_box[0]
            self._jobs.add(job_id)

        return await self._loading.run(job_id, load)

    def _forget(self, ended) -> None:
        self._jobs.difference_update(ended or ())

    async def prepare(self, job_id: str, fused_box: list, seed: int, steps: int, noise_strength: float,
                      guidance_image: float, guidance_audio: float, trace: dict | None = None) -> SimPrepared:
        start = time.time()
        await self._ensure_job(job_id, fused_box)
        fused = await fused_box[0]
        sigmas = [torch.tensor(s, dtype=torch.float32) for s in self.config.sigmas]
        kept = min(int(steps * noise_strength), steps)
        first = max(steps - kept, 0)
        schedule = SimSchedule([SimStep(i - first, 0.25 * torch.log(sigmas[i]), sigmas[i], sigmas[i + 1],
                                        guidance_image, guidance_audio) for i in range(first, steps)])
        hw = self.config.latent_hw
        latents = torch.zeros((1, fused["num_frames"], 4, hw, hw), dtype=self.dtype)
        self._record("prepare", job_id, start, time.time())
        return SimPrepared(schedule, latents, fused["num_frames"], self.replica, replica_max_ongoing(2))

    async def denoise(self, job_id: str, fused_box: list, step: SimStep, frames: list[int],
                      latents: torch.Tensor, ended: tuple[str, ...] = (), trace: dict | None = None
                      ) -> SimWindowOutcome:
        self._forget(ended)
        loaded = await self._ensure_job(job_id, fused_box)
        async with self._gpu:
            start = time.time()
            await asyncio.sleep(self.config.window_s())
            end = time.time()
            self._record("window", job_id, start, end)
        return SimWindowOutcome(SimWindowResult(frames, latents, self.replica), loaded, end - start)

    async def decode(self, latents: torch.Tensor, ended: tuple[str, ...] = (), trace: dict | None = None,
                     chunk: int | None = None, job_id: str | None = None) -> SimDecodedChunk:
        self._forget(ended)
        async with self._gpu:
            start = time.time()
            await asyncio.sleep(self.config.decode_s(latents.shape[0]))
            end = time.time()
            self._record("decode", job_id or "-", start, end)
        hw = self.config.frame_hw
        frames = torch.zeros((latents.shape[0], 3, hw, hw), dtype=torch.float32)
        return SimDecodedChunk(frames, self.replica, end - start)   # compute time, as the real replica reports
