"""Latents -> RGB frames (temporal VAE, in chunks) and RIFE frame interpolation, per chunk."""

from __future__ import annotations

import torch

from sonic_core.models.rife import IFNet

DECODE_CHUNK = 8


@torch.no_grad()
def decode_chunk(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decode consecutive latent frames [n, 4, h, w] -> float32 RGB [n, 3, H, W] in [0, 1]."""
    scaled = (1 / vae.config.scaling_factor) * latents.to(vae.dtype)
    frames = vae.decode(scaled, num_frames=latents.shape[0]).sample
    return (frames.float() * 0.5 + 0.5).clamp(0, 1)


def decode_chunks(num_frames: int, chunk: int = DECODE_CHUNK) -> list[range]:
    return [range(start, min(start + chunk, num_frames)) for start in range(0, num_frames, chunk)]


@torch.no_grad()
def interpolate_chunk(rife: IFNet, frames: torch.Tensor, pair_batch: int = 4) -> torch.Tensor:
    """Insert a RIFE middle frame between each consecutive pair: [n, 3, H, W] -> [2n - 1, 3, H, W].

    Chunks that share their boundary frame (one-frame overlap) concatenate without that repeat.
    """
    if frames.shape[0] < 2:
        return frames
    param = next(rife.parameters())
    frames_in = frames.to(device=param.device, dtype=param.dtype)
    middles = []
    for start in range(0, frames.shape[0] - 1, pair_batch):
        stop = min(start + pair_batch, frames.shape[0] - 1)
        middles.append(rife(frames_in[start:stop], frames_in[start + 1:stop + 1]).clamp(0, 1))
    middle = torch.cat(middles).to(frames.dtype).to(frames.device)
    out = torch.empty((2 * frames.shape[0] - 1, *frames.shape[1:]), dtype=frames.dtype, device=frames.device)
    out[0::2] = frames
    out[1::2] = middle
    return out
