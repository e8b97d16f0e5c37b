"""Typed payloads passed between stages (locally, or through the Ray object store)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sonic_core.audio import AudioClips
from sonic_core.conditioning import ImageEncoding
from sonic_core.face import FaceBox
from sonic_core.sampler import JobConditioning, StepState


@dataclass
class EncodedImage:
    """Image-encode output: embeddings and latents plus where the video frame sits in the source."""

    encoding: ImageEncoding
    size: tuple[int, int]                 # generated (width, height)
    framed_size: tuple[int, int]          # framed source (width, height), for keep_resolution
    face: FaceBox                         # in framed-image pixels
    crop_box: tuple[int, int, int, int]   # framed region in source pixels
    warnings: list[str] = field(default_factory=list)


@dataclass
class EncodedAudio:
    clips: AudioClips
    num_samples: int
    warnings: list[str] = field(default_factory=list)


@dataclass
class FusedJob:
    """Everything the diffusion stage needs, computed once per job."""

    conditioning: JobConditioning
    ref_latents_scaled: torch.Tensor
    ref_shape: tuple[int, ...]


@dataclass
class WindowTask:
    job_id: str
    step: StepState
    frames: list[int]
    latents: torch.Tensor   # [1, W, 4, h, w]


@dataclass
class WindowResult:
    frames: list[int]
    latents: torch.Tensor
    replica: str = "local"
