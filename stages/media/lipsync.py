"""Audio-video offset of a generated clip, from mouth motion against speech loudness.

Video side: mouth-region motion energy, ``m[t] = mean |f[t] - f[t-1]|`` inside the mouth box. Audio side:
the RMS envelope at the frame rate (frame ``t`` owns samples ``[t, t+1) * 16000 / fps``, the engine's
frame-to-audio mapping) put through the same backward difference, ``a[t] = |rms[t] - rms[t-1]|``, so both
measure *change* and the half-frame delay of a backward difference cancels. The lag with the highest
normalised (Pearson) cross-correlation within +-``max_offset_s`` wins, refined to sub-frame precision by a
parabola through the peak and its neighbours. Positive = the video lags the audio (delay the audio to fix).
"""

from __future__ import annotations

import math

import numpy as np

from sonic_core.audio import SAMPLE_RATE


def mouth_motion(frames: np.ndarray, mouth_box: tuple[float, float, float, float]) -> np.ndarray:
    """``[n]`` mean absolute frame difference inside ``mouth_box`` (``m[0]`` = 0)."""
    n, height, width = frames.shape[:3]
    x1, y1 = max(0, int(mouth_box[0])), max(0, int(mouth_box[1]))
    x2, y2 = min(width, int(math.ceil(mouth_box[2]))), min(height, int(math.ceil(mouth_box[3])))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"mouth box {mouth_box} is empty inside {width}x{height} frames")
    region = np.asarray(frames[:, y1:y2, x1:x2], dtype=np.float32)
    motion = np.zeros(n, np.float64)
    if n > 1:
        motion[1:] = np.abs(np.diff(region, axis=0)).mean(axis=(1, 2, 3))
    return motion


def audio_envelope(samples: np.ndarray, fps: float, n_frames: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[n_frames]`` RMS of the samples each frame owns (zeros past the end of the audio)."""
    edges = np.round(np.arange(n_frames + 1) * rate / fps).astype(np.int64)
    squares = np.concatenate([[0.0], np.cumsum(np.asarray(samples, np.float64) ** 2)])
    lo, hi = np.minimum(edges[:-1], samples.size), np.minimum(edges[1:], samples.size)
    energy = squares[hi] - squares[lo]
    return np.sqrt(np.where(hi > lo, energy / np.maximum(hi - lo, 1), 0.0))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 1e-12 else 0.0


def lag_correlations(video: np.ndarray, audio: np.ndarray, max_lag: int) -> np.ndarray:
    """Pearson correlation of ``video[t]`` with ``audio[t - lag]`` for lags ``-max_lag..max_lag``."""
    n = min(video.size, audio.size)
    out = np.zeros(2 * max_lag + 1)
    for i, lag in enumerate(range(-max_lag, max_lag + 1)):
        lo, hi = max(1, lag + 1), min(n, n + lag)  # t-1 and t-lag-1 must exist for both differences
        if hi - lo >= 3:
            out[i] = _pearson(video[lo:hi], audio[lo - lag:hi - lag])
    return out


def estimate_av_offset(frames: np.ndarray, fps: float, samples: np.ndarray,
                       mouth_box: tuple[float, float, float, float], max_offset_s: float = 0.1,
                       min_correlation: float = 0.0) -> float:
    """Seconds by which the video lags the audio (negative: it leads), within +-``max_offset_s``.

    ``frames`` [n, H, W, 3] float in [0, 1] at ``fps``; ``samples`` 16 kHz mono; ``mouth_box`` ``(x1, y1, x2,
    y2)`` in frame pixels. Returns 0.0 when there is no evidence (too few frames, a still mouth, silence, or
    a best correlation not above ``min_correlation``)."""
    max_lag = max(1, int(math.floor(max_offset_s * fps + 1e-6)))
    n = frames.shape[0]
    if n < 2 * max_lag + 5:
        return 0.0
    video = mouth_motion(frames, mouth_box)
    envelope = audio_envelope(samples, fps, n)
    audio = np.zeros(n)
    audio[1:] = np.abs(np.diff(envelope))
    corr = lag_correlations(video, audio, max_lag)
    best = int(np.argmax(corr))
    if corr[best] <= min_correlation:
        return 0.0
    lag = float(best - max_lag)
    if 0 < best < corr.size - 1:
        left, mid, right = corr[best - 1], corr[best], corr[best + 1]
        curvature = left - 2 * mid + right
        if curvature < 0:
            lag += float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    return float(np.clip(lag / fps, -max_offset_s, max_offset_s))


def clamp_offset(offset: float, limit: float = 0.05) -> float:
    """``offset`` limited to +-``limit`` seconds; NaN becomes 0."""
    if not math.isfinite(offset):
        return 0.0 if math.isnan(offset) else math.copysign(limit, offset)
    return max(-limit, min(limit, float(offset)))
