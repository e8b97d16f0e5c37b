"""The windowed, guided Euler sampler of Sonic, cut into pure units of work.

One denoising step = ``plan_windows`` -> ``denoise_window`` per window (independent, parallelisable) ->
``merge_windows``. Windows only read the previous step's latents and the job's fixed conditioning, and only the
frames they cover: ``window_dependencies`` names the previous step's windows each one reads, and ``StepMerge``
merges a step window by window, so a distributed sampler can start a window as soon as its inputs exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import EulerDiscreteScheduler

from sonic_core.models.unet import FaceMask, SonicContext, SonicUNet

WINDOW = 25
SHIFT_PER_STEP = 7
GUIDANCE_IMAGE = 2.0
GUIDANCE_AUDIO = 7.5
LATENT_SCALE = 0.18215
CFG_BRANCHES = 3  # uncond / drop-audio / cond


@dataclass(frozen=True)
class StepState:
    """Everything a window needs about its step; small and picklable."""

    index: int
    timestep: torch.Tensor      # 0-d float32, 0.25 * ln(sigma)
    sigma: torch.Tensor         # 0-d float32
    sigma_next: torch.Tensor    # 0-d float32
    guidance_image: float = GUIDANCE_IMAGE
    guidance_audio: float = GUIDANCE_AUDIO


@dataclass
class Schedule:
    steps: list[StepState]

    @property
    def sigma_start(self) -> torch.Tensor:
        return self.steps[0].sigma


def make_schedule(scheduler_config: dict, num_steps: int, noise_strength: float = 1.0,
                  guidance_image: float = GUIDANCE_IMAGE, guidance_audio: float = GUIDANCE_AUDIO) -> Schedule:
    """Karras sigmas of the SVD Euler scheduler; ``noise_strength`` < 1 keeps the last ``int(n*s)`` steps."""
    scheduler = EulerDiscreteScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(num_steps, device="cpu")
    kept = min(int(num_steps * noise_strength), num_steps)
    first = max(num_steps - kept, 0)
    sigmas, timesteps = scheduler.sigmas, scheduler.timesteps
    steps = [
        StepState(i - first, timesteps[i], sigmas[i], sigmas[i + 1], guidance_image, guidance_audio)
        for i in range(first, num_steps)
    ]
    if not steps:
        raise ValueError(f"no denoising steps: steps={num_steps}, noise strength={noise_strength}")
    return Schedule(steps)


def plan_windows(num_frames: int, step_index: int, window: int = WINDOW,
                 shift_per_step: int = SHIFT_PER_STEP) -> list[list[int]]:
    """Circular windows of ``window`` frames starting at ``window*k - shift``, shift = 7 * step, no overlap.

    With fewer frames than a window, indices repeat inside the window.
    """
    shift = shift_per_step * step_index
    return [
        [(start - shift + j) % num_frames for j in range(window)]
        for start in range(0, num_frames, window)
    ]


@dataclass
class JobConditioning:
    """Per-job conditioning, computed once and sliced per window.

    ``cond_latents`` [1,4,h,w] (unscaled VAE mode), ``image_embeds`` [1,D], ``audio_tokens`` [F,T,D],
    ``uncond_tokens`` [T,D] (audio2token of silence-in-feature-space), ``buckets`` [F,2] already scaled,
    ``face_mask`` [1,1,H,W], ``fps`` the frame rate given to the UNet.
    """

    cond_latents: torch.Tensor
    image_embeds: torch.Tensor
    audio_tokens: torch.Tensor
    uncond_tokens: torch.Tensor
    buckets: torch.Tensor
    face_mask: torch.Tensor
    fps: float = 12.5

    @property
    def num_frames(self) -> int:
        return self.audio_tokens.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> JobConditioning:
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        return JobConditioning(cast(self.cond_latents), cast(self.image_embeds), cast(self.audio_tokens),
                               cast(self.uncond_tokens), self.buckets, cast(self.face_mask), self.fps)


@dataclass
class WindowConditioning:
    """What one window needs from the job conditioning, all on the UNet's device and dtype."""

    cond_latents: torch.Tensor   # [3, W, 4, h, w]: zeros for the unconditional branch
    context: SonicContext        # per frame, 3 * W rows
    added_time_ids: torch.Tensor  # [3, 3]


def window_conditioning(job: JobConditioning, frames: list[int], mask: FaceMask) -> WindowConditioning:
    idx = torch.tensor(frames, device=job.audio_tokens.device)
    n = len(frames)
    latents = job.cond_latents[:, None].expand(1, n, *job.cond_latents.shape[1:])
    cond_latents = torch.cat([torch.zeros_like(latents), latents, latents])
    embeds = job.image_embeds[:, None, None].expand(1, n, 1, -1)
    image_ctx = torch.cat([torch.zeros_like(embeds), embeds, embeds]).flatten(0, 1)
    audio = job.audio_tokens[idx][None]
    uncond = job.uncond_tokens[None, None].expand_as(audio)
    audio_ctx = torch.cat([uncond, uncond, audio]).flatten(0, 1)
    motion = job.buckets[idx.cpu()].mean(dim=0)
    time_ids = torch.stack([torch.tensor(job.fps, dtype=torch.float32), motion[0], motion[1]])
    added = time_ids[None].repeat(CFG_BRANCHES, 1).to(device=image_ctx.device, dtype=image_ctx.dtype)
    return WindowConditioning(cond_latents, SonicContext(image_ctx, audio_ctx, mask), added)


def guidance(v_uncond: torch.Tensor, v_drop_audio: torch.Tensor, v_cond: torch.Tensor,
             g_image: float | torch.Tensor, g_audio: float | torch.Tensor) -> torch.Tensor:
    """3-way classifier-free guidance: image guidance then audio guidance on top."""
    return v_uncond + g_image * (v_drop_audio - v_uncond) + g_audio * (v_cond - v_drop_audio)


def euler_v_step(sample: torch.Tensor, v_pred: torch.Tensor, sigma: torch.Tensor,
                 sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of a v-prediction model (diffusers ``EulerDiscreteScheduler.step`` with no churn)."""
    x = sample.to(torch.float32)
    x0 = v_pred * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    derivative = (x - x0) / sigma
    return (x + derivative * (sigma_next - sigma)).to(v_pred.dtype)


@torch.no_grad()
def denoise_window(unet: SonicUNet, latents: torch.Tensor, cond: WindowConditioning,
                   step: StepState) -> torch.Tensor:
    """Advance one window's latents [1, W, 4, h, w] by one guided Euler step."""
    device, dtype = latents.device, latents.dtype
    sigma = step.sigma.to(device)
    scaled = torch.cat([latents] * CFG_BRANCHES) / ((sigma**2 + 1) ** 0.5)
    unet_in = torch.cat([scaled, cond.cond_latents], dim=2)
    v = unet(unet_in, step.timestep.to(device), cond.context, cond.added_time_ids)
    v_uncond, v_drop_audio, v_cond = v.chunk(CFG_BRANCHES)
    g_image = torch.tensor(step.guidance_image, device=device, dtype=dtype)
    g_audio = torch.tensor(step.guidance_audio, device=device, dtype=dtype)
    v_guided = guidance(v_uncond, v_drop_audio, v_cond, g_image, g_audio)
    return euler_v_step(latents, v_guided, sigma, step.sigma_next.to(device))


class StepMerge:
    """One step's merged latents, filled window by window in any order.

    A frame's value is the mean over the windows (and repeats inside a window) that produced it. With at
    least a window's worth of frames, windows are runs of consecutive frames (mod F) that tile the clip and
    only the last one overlaps the first, so a frame is summed from at most two windows; with fewer frames
    there is a single window, summed in its own order. Either way a frame's sum does not depend on the order
    windows arrive (``0 + a + b`` equals ``0 + b + a`` exactly), so a frame read as soon as its windows are in
    equals the whole step's merge.
    """

    def __init__(self, num_frames: int, windows: list[list[int]]):
        self.num_frames = num_frames
        self.windows = windows
        self._missing = [0] * num_frames          # window slots still to arrive, per frame
        for frames in windows:
            for frame in frames:
                self._missing[frame] += 1
        self._left = len(windows)
        self._added = [False] * len(windows)
        self._total: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._merged: torch.Tensor | None = None

    @classmethod
    def of(cls, latents: torch.Tensor) -> StepMerge:
        """A complete state holding ``latents`` [1, F, ...] as they are (the start of denoising)."""
        merge = cls(latents.shape[1], [])
        merge._merged = latents
        return merge

    @property
    def complete(self) -> bool:
        return self._left == 0

    def add(self, index: int, result: torch.Tensor) -> None:
        """Accumulate window ``index``'s output [1, W, ...] (each window once)."""
        if self._added[index]:
            raise ValueError(f"window {index} was already merged")
        self._added[index] = True
        if self._total is None:
            self._total = result.new_zeros((result.shape[0], self.num_frames, *result.shape[2:]))
            self._count = result.new_zeros((result.shape[0], self.num_frames, 1, 1, 1))
        frames = self.windows[index]
        if len(set(frames)) == len(frames):       # one add per frame: the same sums as the loop below, at once
            where = torch.tensor(frames, device=result.device)
            self._total.index_add_(1, where, result)
            self._count.index_add_(1, where, torch.ones_like(result[:, :, :1, :1, :1]))
        else:                                     # a short clip repeats frames inside its window: in order
            for j, frame in enumerate(frames):
                self._total[:, frame] += result[:, j]
                self._count[:, frame] += 1
        for frame in frames:
            self._missing[frame] -= 1
        self._left -= 1

    def ready(self, frames: list[int]) -> bool:
        return all(self._missing[frame] == 0 for frame in frames)

    def take(self, frames: list[int]) -> torch.Tensor:
        """The merged latents of ``frames`` (all ready), as a new tensor."""
        if self._merged is not None:
            return self._merged[:, frames]
        if not self.ready(frames):
            raise ValueError("frames read before every window producing them was merged")
        assert self._total is not None and self._count is not None
        return self._total[:, frames] / self._count[:, frames]

    def latents(self) -> torch.Tensor:
        """The whole step's merged latents [1, F, ...] (once complete)."""
        if self._merged is None:
            if not self.complete:
                raise ValueError(f"{self._left} windows of the step are not merged yet")
            assert self._total is not None and self._count is not None
            self._merged = self._total / self._count
            self._total = self._count = None      # later reads come from the merged tensor
        return self._merged


def merge_windows(num_frames: int, windows: list[list[int]], results: list[torch.Tensor]) -> torch.Tensor:
    """Average every frame over the windows (and repeats) that produced it."""
    merge = StepMerge(num_frames, windows)
    for index, result in enumerate(results):
        merge.add(index, result)
    return merge.latents()


def window_dependencies(num_frames: int, before: list[list[int]], after: list[list[int]]) -> list[list[int]]:
    """For each window of the next step (``after``), the windows of the previous step (``before``) whose output
    it reads: those covering any of its frames. With the 7-frame shift these are two or three neighbours, so
    windows of consecutive steps can run as soon as their inputs exist instead of waiting for a whole step."""
    owners: list[list[int]] = [[] for _ in range(num_frames)]
    for index, frames in enumerate(before):
        for frame in dict.fromkeys(frames):
            owners[frame].append(index)
    return [sorted({owner for frame in dict.fromkeys(frames) for owner in owners[frame]}) for frames in after]


def initial_latents(ref_latents_scaled: torch.Tensor, noise: torch.Tensor, sigma_start: torch.Tensor) -> torch.Tensor:
    """ref latents (already x0.18215, [1,4,h,w]) broadcast over frames, plus sigma_start * noise [1,F,4,h,w]."""
    sigma = sigma_start.to(device=noise.device, dtype=noise.dtype)
    return ref_latents_scaled[:, None] + noise * sigma


def draw_noise(seed: int, image_shape: tuple[int, ...], latent_shape: tuple[int, ...]) -> torch.Tensor:
    """The reference's CPU draw order: first the (unused) image-augmentation noise, then the latent noise."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    torch.randn(image_shape, generator=generator, dtype=torch.float32)
    return torch.randn(latent_shape, generator=generator, dtype=torch.float32)


def latent_shape(num_frames: int, width: int, height: int, vae_scale: int = 8) -> tuple[int, int, int, int, int]:
    return (1, num_frames, 4, height // vae_scale, width // vae_scale)

