"""Stage 2: audio windows + image embedding -> per-frame tokens and motion buckets (per-job conditioning)."""

from __future__ import annotations

from pathlib import Path

from sonic_core.conditioning import fuse
from sonic_core.weights import WeightsLayout, load_audio_adapters
from stages.media.smoothing import smooth_buckets
from stages.payloads import EncodedAudio, EncodedImage, FusedJob


class FusionStage:
    def __init__(self, weights: str | Path, device: str = "cpu"):
        self.audio_to_tokens, self.audio_to_bucket = load_audio_adapters(WeightsLayout(Path(weights)), device)

    def __call__(self, audio: EncodedAudio, image: EncodedImage, *, dynamic_scale: float = 1.0,
                 motion_scale: float = 1.0, temporal_smoothing: float = 0.0) -> FusedJob:
        conditioning = fuse(self.audio_to_tokens, self.audio_to_bucket, audio.clips, image.encoding,
                            dynamic_scale=dynamic_scale, motion_scale=motion_scale)
        if temporal_smoothing > 0:
            conditioning.buckets = smooth_buckets(conditioning.buckets, temporal_smoothing)
        return FusedJob(conditioning=conditioning, ref_latents_scaled=image.encoding.ref_latents_scaled,
                        ref_shape=image.encoding.ref_shape)
