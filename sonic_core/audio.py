"""Speech -> whisper hidden states -> per-frame audio clips (the reference's audio numerics).

One video frame (12.5 fps) spans two 40 ms audio units; whisper yields one hidden state per 20 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16_000
SAMPLES_PER_UNIT = 640          # 40 ms: one unit at 25 fps
WHISPER_CHUNK_SAMPLES = 480_000  # 30 s, normalised independently by the feature extractor
ENCODER_SLICE = 3000            # mel frames per whisper encoder call
TOKEN_CONTEXT = 10              # hidden states per frame for audio2token
BUCKET_CONTEXT = 50             # hidden states per frame for audio2bucket
TOKEN_PAD = (4, 6)
BUCKET_PAD = (24, 26)
HIDDEN_PER_FRAME = 4            # 2 units per frame x 2 hidden states per unit
MAX_UNITS = 45_000              # 30 min; the reference caps at 10 000 units (400 s)


@dataclass
class AudioClips:
    """Per-frame whisper windows: ``tokens`` [F, 10, layers, C] and ``buckets`` [F, 50, 1, C]."""

    tokens: torch.Tensor
    buckets: torch.Tensor

    @property
    def num_frames(self) -> int:
        return self.tokens.shape[0]


def audio_units(num_samples: int, max_units: int = MAX_UNITS) -> int:
    return min(max_units, num_samples // SAMPLES_PER_UNIT)


def num_video_frames(num_samples: int, max_units: int = MAX_UNITS) -> int:
    """Frames at 12.5 fps for a clip of ``num_samples`` 16 kHz samples."""
    return audio_units(num_samples, max_units) // 2


def whisper_features(samples: np.ndarray, feature_extractor) -> torch.Tensor:
    """Log-mel features [1, 80, 3000 * chunks]; each 30 s chunk is padded and normalised on its own."""
    chunks = [
        feature_extractor(samples[i:i + WHISPER_CHUNK_SAMPLES], sampling_rate=SAMPLE_RATE,
                          return_tensors="pt").input_features
        for i in range(0, len(samples), WHISPER_CHUNK_SAMPLES)
    ]
    return torch.cat(chunks, dim=-1)


@torch.no_grad()
def whisper_hidden_states(encoder, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the encoder per 3000-frame slice.

    Returns ``(all_layers [T, layers, C], last_layer [T, 1, C])``; the last entry of ``hidden_states`` is the
    final-LayerNorm output, i.e. ``last_hidden_state``.
    """
    all_layers, last = [], []
    dtype = next(encoder.parameters()).dtype
    for start in range(0, features.shape[-1], ENCODER_SLICE):
        out = encoder(features[:, :, start:start + ENCODER_SLICE].to(dtype), output_hidden_states=True)
        stacked = torch.stack(out.hidden_states, dim=2)[0]
        all_layers.append(stacked)
        last.append(out.last_hidden_state[0].unsqueeze(1))
    return torch.cat(all_layers, 0), torch.cat(last, 0)


def _pad_time(x: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    before = x.new_zeros((pad[0], *x.shape[1:]))
    after = x.new_zeros((pad[1], *x.shape[1:]))
    return torch.cat([before, x, after], 0)


def frame_clips(all_layers: torch.Tensor, last_layer: torch.Tensor, units: int) -> AudioClips:
    """Trim to ``2 * units`` hidden states, zero-pad in hidden-state space, cut one window per frame."""
    frames = units // 2
    if frames < 1:
        raise ValueError("audio is too short: at least 80 ms of speech is needed for one video frame")
    tokens = _pad_time(all_layers[: 2 * units], TOKEN_PAD)
    buckets = _pad_time(last_layer[: 2 * units], BUCKET_PAD)
    starts = torch.arange(frames) * HIDDEN_PER_FRAME
    token_idx = starts[:, None] + torch.arange(TOKEN_CONTEXT)
    bucket_idx = starts[:, None] + torch.arange(BUCKET_CONTEXT)
    return AudioClips(tokens=tokens[token_idx], buckets=buckets[bucket_idx])
