"""Stage 4: RIFE interpolation per chunk, lip-sync estimation, H.264/AAC encode and mux."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sonic_core.decode import interpolate_chunk
from sonic_core.weights import WeightsLayout, load_rife


def to_hwc(frames: torch.Tensor) -> np.ndarray:
    """[n, 3, H, W] float tensor -> [n, H, W, 3] float32 array."""
    return frames.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32, copy=False)


class PostProcessStage:
    def __init__(self, weights: str | Path, device: str = "cpu"):
        self.rife = load_rife(WeightsLayout(Path(weights)), device)

    def interpolate(self, frames: torch.Tensor, overlaps_previous: bool) -> torch.Tensor:
        """RIFE on one decoded chunk. A chunk that starts with the previous chunk's last frame (one-frame
        overlap) returns its output without that shared frame."""
        out = interpolate_chunk(self.rife, frames)
        return out[1:] if overlaps_previous else out
