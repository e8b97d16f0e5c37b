"""Stage 3: denoising windows and VAE decode chunks, with per-job conditioning cached by job id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sonic_core.decode import decode_chunk
from sonic_core.engine import job_noise, vae_scale_factor
from sonic_core.models.unet import FaceMask
from sonic_core.sampler import JobConditioning, Schedule, denoise_window, initial_latents, window_conditioning
from sonic_core.weights import WeightsLayout, load_unet, load_vae
from stages.payloads import FusedJob, WindowResult, WindowTask


@dataclass
class _CachedJob:
    conditioning: JobConditioning
    mask: FaceMask


class DiffusionStage:
    def __init__(self, weights: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 replica: str = "local"):
        layout = WeightsLayout(Path(weights))
        self.device, self.dtype, self.replica = device, dtype, replica
        self.unet = load_unet(layout, device, dtype)
        self.vae = load_vae(layout, device, dtype)
        self._jobs: dict[str, _CachedJob] = {}

    @property
    def vae_scale(self) -> int:
        return vae_scale_factor(self.vae)

    def start_latents(self, fused: FusedJob, seed: int, schedule: Schedule) -> torch.Tensor:
        """Initial latents [1, F, 4, h, w] on CPU (fp32 noise drawn as the reference does)."""
        noise = job_noise(seed, fused.ref_shape, fused.conditioning.num_frames, self.vae_scale)
        return initial_latents(fused.ref_latents_scaled.float(), noise, schedule.sigma_start).to(self.dtype)

    def load_job(self, job_id: str, conditioning: JobConditioning) -> None:
        cond = conditioning.to(self.device, self.dtype)
        self._jobs[job_id] = _CachedJob(cond, FaceMask(cond.face_mask))

    def has_job(self, job_id: str) -> bool:
        return job_id in self._jobs

    def release_job(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def denoise_window(self, task: WindowTask) -> WindowResult:
        job = self._jobs.get(task.job_id)
        if job is None:
            raise KeyError(f"job {task.job_id} has no conditioning on replica {self.replica}")
        cond = window_conditioning(job.conditioning, task.frames, job.mask)
        out = denoise_window(self.unet, task.latents.to(self.device, self.dtype), cond, task.step)
        return WindowResult(frames=task.frames, latents=out.cpu(), replica=self.replica)

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """[n, 4, h, w] latents -> float32 [n, 3, H, W] frames in [0, 1] on CPU."""
        return decode_chunk(self.vae, latents.to(self.device)).cpu()
