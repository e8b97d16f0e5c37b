"""Lip-sync offset estimation on synthetic clips with a known lag, and motion-bucket smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from stages.media import clamp_offset, estimate_av_offset, smooth_buckets
from stages.media.lipsync import audio_envelope, mouth_motion
from tests.media_fixtures import syllable_envelope

MOUTH = (20, 24, 44, 40)


def synthetic_clip(lag_frames: int, fps: float = 25.0, seconds: float = 6.0, seed: int = 0):
    """Noise speech shaped by a syllable envelope, and frames whose mouth square brightens with the same
    envelope ``lag_frames`` frames later (positive: the video lags)."""
    rng = np.random.default_rng(seed)
    n_samples = int(seconds * 16_000)
    envelope = syllable_envelope(n_samples, 16_000, seed=seed)
    samples = (0.3 * envelope * rng.standard_normal(n_samples)).astype(np.float32)
    n_frames = int(seconds * fps)
    per_frame = np.array([envelope[int(t * 16_000 / fps):int((t + 1) * 16_000 / fps)].mean()
                          for t in range(n_frames)])
    shifted = np.zeros(n_frames)
    src = np.arange(n_frames) - lag_frames
    valid = (src >= 0) & (src < n_frames)
    shifted[valid] = per_frame[src[valid]]
    frames = 0.3 + 0.01 * rng.standard_normal((n_frames, 64, 64, 3))
    x1, y1, x2, y2 = MOUTH
    frames[:, y1:y2, x1:x2] += (0.6 * shifted / per_frame.max())[:, None, None, None]
    return frames.astype(np.float32), samples


@pytest.mark.parametrize("lag", [-2, -1, 0, 1, 2])
def test_known_lag_at_25fps(lag):
    frames, samples = synthetic_clip(lag)
    offset = estimate_av_offset(frames, 25.0, samples, MOUTH, max_offset_s=0.1)
    assert abs(offset - lag / 25.0) < 1 / 25.0  # the requirement: within one frame
    assert abs(offset * 25.0 - lag) < 0.25       # what the method achieves on a clean clip


@pytest.mark.parametrize("lag", [-1, 0, 1])
def test_known_lag_at_12_5fps(lag):
    frames, samples = synthetic_clip(lag, fps=12.5, seconds=10.0, seed=3)
    offset = estimate_av_offset(frames, 12.5, samples, MOUTH, max_offset_s=0.1)
    assert abs(offset - lag / 12.5) < 1 / 12.5


def test_no_evidence_gives_zero():
    frames, samples = synthetic_clip(1)
    still = np.repeat(frames[:1], len(frames), axis=0)
    assert estimate_av_offset(still, 25.0, samples, MOUTH) == 0.0
    assert estimate_av_offset(frames, 25.0, np.zeros_like(samples), MOUTH) == 0.0
    assert estimate_av_offset(frames[:5], 25.0, samples, MOUTH) == 0.0
    with pytest.raises(ValueError):
        mouth_motion(frames, (70, 70, 90, 90))


def test_features():
    frames = np.zeros((3, 4, 4, 3), np.float32)
    frames[1, :2, :2] = 1.0
    assert np.allclose(mouth_motion(frames, (0, 0, 2, 2)), [0, 1, 1])
    tone = np.ones(1600, np.float32) * 0.5
    assert np.allclose(audio_envelope(tone, 25.0, 4), [0.5, 0.5, 0.5, 0.0])


def test_clamp_offset():
    assert clamp_offset(0.08) == 0.05 and clamp_offset(-0.2) == -0.05 and clamp_offset(0.01) == 0.01
    assert clamp_offset(0.08, limit=0.1) == 0.08
    assert clamp_offset(float("nan")) == 0.0 and clamp_offset(float("-inf")) == -0.05


def reference_smoothing(x: np.ndarray, sigma: float) -> np.ndarray:
    """The documented definition written out: Gaussian cut at 4 sigma, half-sample symmetric padding."""
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(x, [(radius, radius)] + [(0, 0)] * (x.ndim - 1), mode="symmetric")
    return np.stack([np.tensordot(taps, padded[t:t + 2 * radius + 1], axes=(0, 0)) for t in range(len(x))])


def test_smoothing_definition():
    rng = np.random.default_rng(0)
    buckets = rng.uniform(0, 255, (40, 2))
    for sigma in (0.5, 1.0, 2.5):
        smoothed = smooth_buckets(buckets, sigma)
        assert smoothed.shape == buckets.shape and smoothed.dtype == buckets.dtype
        assert np.allclose(smoothed, reference_smoothing(buckets, sigma))
        assert np.allclose(smoothed, gaussian_filter1d(buckets, sigma, axis=0, mode="reflect"))
        assert smoothed.std(axis=0).max() < buckets.std(axis=0).min()
    constant = np.full((10, 2), 127.0)
    assert np.allclose(smooth_buckets(constant, 3.0), constant)
    short = rng.uniform(0, 255, (3, 2))  # radius longer than the sequence: padding reflects again
    assert np.allclose(smooth_buckets(short, 2.0), gaussian_filter1d(short, 2.0, axis=0, mode="reflect"))


def test_smoothing_zero_is_identity_and_types_are_kept():
    array = np.random.default_rng(1).uniform(0, 255, (12, 2)).astype(np.float32)
    tensor = torch.from_numpy(array.copy()).to(torch.float16)
    assert smooth_buckets(array, 0) is array
    assert smooth_buckets(tensor, 0.0) is tensor
    out = smooth_buckets(tensor, 1.5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float16 and out.shape == (12, 2)
    assert np.allclose(out.float().numpy(), smooth_buckets(array.astype(np.float64), 1.5), atol=0.2)
    assert smooth_buckets(array, 1.0).dtype == np.float32
    with pytest.raises(ValueError):
        smooth_buckets(array, -1.0)
