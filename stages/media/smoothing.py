"""``temporal_smoothing``: Gaussian smoothing of the per-frame motion buckets before windowing.

Definition: ``scipy.ndimage.gaussian_filter1d(buckets, sigma=strength, axis=0, mode="reflect",
truncate=4.0)``: a normalised Gaussian of ``sigma = strength`` frames, cut at 4 sigma, with half-sample
symmetric padding (``d c b a | a b c d | d c b a``), so the end frames are not pulled toward zero and a
constant sequence stays constant. Each column (bucket) is smoothed on its own. ``strength == 0`` returns
the input object untouched (the reference's numbers).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d


def smooth_buckets(buckets: np.ndarray | torch.Tensor, strength: float) -> np.ndarray | torch.Tensor:
    """Smooth ``buckets`` [F, 2] (or [F, ...]) along frames; same type, dtype and device as the input."""
    if not strength >= 0:
        raise ValueError(f"temporal_smoothing strength must be >= 0, got {strength}")
    if strength == 0 or buckets.shape[0] < 2:
        return buckets
    if isinstance(buckets, torch.Tensor):
        values = buckets.detach().to("cpu", torch.float64).numpy()
        smoothed = gaussian_filter1d(values, sigma=float(strength), axis=0, mode="reflect", truncate=4.0)
        return torch.from_numpy(smoothed).to(device=buckets.device, dtype=buckets.dtype)
    values = np.asarray(buckets)
    smoothed = gaussian_filter1d(values.astype(np.float64), sigma=float(strength), axis=0, mode="reflect",
                                 truncate=4.0)
    return smoothed.astype(values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64)
