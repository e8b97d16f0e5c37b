"""Stage 1a: speech -> per-frame whisper windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sonic_core.conditioning import encode_audio
from sonic_core.weights import WeightsLayout, load_whisper
from stages.payloads import EncodedAudio


class AudioEncodeStage:
    def __init__(self, weights: str | Path, device: str = "cpu"):
        self.encoder, self.feature_extractor = load_whisper(WeightsLayout(Path(weights)), device)

    def __call__(self, samples: np.ndarray, warnings: list[str] | None = None) -> EncodedAudio:
        clips = encode_audio(self.encoder, self.feature_extractor, samples)
        return EncodedAudio(clips=clips, num_samples=len(samples), warnings=list(warnings or []))
