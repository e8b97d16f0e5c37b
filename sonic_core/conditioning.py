"""Per-job conditioning: audio encode, image encode and their fusion into :class:`JobConditioning`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sonic_core.audio import AudioClips, audio_units, frame_clips, whisper_features, whisper_hidden_states
from sonic_core.image import PreparedImage
from sonic_core.sampler import LATENT_SCALE, JobConditioning

BUCKET_SCALE = 16.0
BUCKET_OFFSET = 16.0
FPS = 12.5


@dataclass
class ImageEncoding:
    """CLIP image embeds [1, D]; VAE latent mean [1, 4, h, w] (unscaled) and the prepared inputs."""

    image_embeds: torch.Tensor
    latents: torch.Tensor
    mask: torch.Tensor
    ref_shape: tuple[int, ...]

    @property
    def ref_latents_scaled(self) -> torch.Tensor:
        return self.latents * LATENT_SCALE


@torch.no_grad()
def encode_audio(whisper_encoder, feature_extractor, samples: np.ndarray) -> AudioClips:
    """16 kHz mono samples -> per-frame whisper windows (fp32, like the reference)."""
    features = whisper_features(samples, feature_extractor)
    all_layers, last = whisper_hidden_states(whisper_encoder, features.to(next(whisper_encoder.parameters()).device))
    return frame_clips(all_layers.float().cpu(), last.float().cpu(), audio_units(len(samples)))


@torch.no_grad()
def encode_image(image_encoder, vae, prepared: PreparedImage) -> ImageEncoding:
    """CLIP embeds and VAE latents (mean; equal to the mode used for conditioning when noise_aug is 0)."""
    clip_param = next(image_encoder.parameters())
    embeds = image_encoder(prepared.clip.to(clip_param.device, clip_param.dtype)).image_embeds
    vae_param = next(vae.parameters())
    latents = vae.encode(prepared.ref.to(vae_param.device, vae_param.dtype)).latent_dist.mean
    return ImageEncoding(embeds.cpu(), latents.cpu(), prepared.mask, tuple(prepared.ref.shape))


@torch.no_grad()
def fuse(audio_to_tokens, audio_to_bucket, clips: AudioClips, image: ImageEncoding,
         dynamic_scale: float = 1.0, motion_scale: float = 1.0, fps: float = FPS,
         frame_batch: int = 256) -> JobConditioning:
    """Audio tokens, unconditional tokens and motion buckets for every frame.

    ``dynamic_scale`` multiplies both buckets (the reference's motion_bucket_scale); ``motion_scale`` then
    multiplies bucket 0 (head motion) only. Defaults reproduce the reference.
    """
    device = next(audio_to_tokens.parameters()).device
    embeds = image.image_embeds.float().to(device)
    tokens, buckets = [], []
    for start in range(0, clips.num_frames, frame_batch):
        token_clip = clips.tokens[start:start + frame_batch].to(device)
        bucket_clip = clips.buckets[start:start + frame_batch].to(device)
        tokens.append(audio_to_tokens(token_clip).cpu())
        raw = audio_to_bucket(bucket_clip, embeds.expand(bucket_clip.shape[0], -1))
        buckets.append((raw * BUCKET_SCALE + BUCKET_OFFSET).reshape(raw.shape[0], -1)[:, :2].cpu())
    uncond = audio_to_tokens(torch.zeros_like(clips.tokens[:1]).to(device))[0].cpu()
    scaled = torch.cat(buckets) * dynamic_scale
    scaled[:, 0] = scaled[:, 0] * motion_scale
    return JobConditioning(
        cond_latents=image.latents, image_embeds=image.image_embeds, audio_tokens=torch.cat(tokens),
        uncond_tokens=uncond, buckets=scaled, face_mask=image.mask, fps=fps,
    )
