"""Variants of the Sonic UNet's attention for ``bench gpu``: each lever as a switch on a built ``SonicUNet``.

* ``kv_once``: the temporal cross-attention context is the mean over the window's frames, the same for every
  spatial position. The production code repeats it per position (as the reference does), so its K/V
  projections run ``h·w`` times; here every position's queries attend the one shared K/V of their window
  (exactly the same result: attention is independent per query).
* ``math_attention``: explicit softmax(QKᵀ)V instead of ``scaled_dot_product_attention`` (what SDPA is worth).
* ``split_cfg_step``: the three CFG branches as three batch-1 forwards instead of one batch of 3.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from sonic_core.models.unet import AudioIPAttnProcessor, SonicContext, SonicUNet
from sonic_core.sampler import CFG_BRANCHES, StepState, WindowConditioning, euler_v_step, guidance


class SharedMeanContext(SonicContext):
    """A per-frame context whose temporal mean stays one row per window (not repeated per position)."""

    def frame_mean(self, batch: int, frames: int, positions: int) -> SharedMeanContext:
        def mean(ctx: torch.Tensor) -> torch.Tensor:
            return ctx.reshape(batch, frames, ctx.shape[-2], ctx.shape[-1]).mean(dim=1)

        return SharedMeanContext(mean(self[0]), mean(self[1]), None)


class SharedKVProcessor(AudioIPAttnProcessor):
    """Temporal attn2 with K/V computed once per window: queries [B·S, F, C] attend as [B, S·F, C]."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None) -> torch.Tensor:
        image_ctx, audio_ctx, _ = encoder_hidden_states
        batch = image_ctx.shape[0]
        rows, frames, _ = hidden_states.shape
        query = attn.to_q(hidden_states).reshape(batch, (rows // batch) * frames, -1)
        out = self._attend(attn, query, attn.to_k(image_ctx), attn.to_v(image_ctx))
        audio = self._attend(attn, query, self.to_k_ip[0](audio_ctx), self.to_v_ip[0](audio_ctx))
        out = attn.to_out[1](attn.to_out[0](out + self.scale * audio))
        return out.reshape(rows, frames, -1)


def _math_attend(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    batch, heads = query.shape[0], attn.heads
    head_dim = key.shape[-1] // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, heads, head_dim).transpose(1, 2)

    q, k, v = split(query), split(key), split(value)
    weights = torch.softmax((q @ k.transpose(-1, -2)) * head_dim**-0.5, dim=-1)
    out = weights @ v
    return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)


class MathAudioIPProcessor(AudioIPAttnProcessor):
    _attend = staticmethod(_math_attend)


class MathSharedKVProcessor(SharedKVProcessor):
    _attend = staticmethod(_math_attend)


def configure(unet: SonicUNet, kv_once: bool, math_attention: bool) -> None:
    """Set every attention processor of ``unet`` for the variant (parameters are kept)."""
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        if name.endswith("attn1"):
            module.set_processor(AttnProcessor() if math_attention else AttnProcessor2_0())
            continue
        processor = module.processor
        if not isinstance(processor, AudioIPAttnProcessor):
            continue
        temporal = "temporal_transformer_blocks" in name
        if temporal and kv_once:
            processor.__class__ = MathSharedKVProcessor if math_attention else SharedKVProcessor
        else:
            processor.__class__ = MathAudioIPProcessor if math_attention else AudioIPAttnProcessor


def context_for(cond: WindowConditioning, kv_once: bool) -> WindowConditioning:
    cls = SharedMeanContext if kv_once else SonicContext
    return WindowConditioning(cond.cond_latents, cls(*cond.context), cond.added_time_ids)


@torch.no_grad()
def split_cfg_step(unet, latents: torch.Tensor, cond: WindowConditioning, step: StepState) -> torch.Tensor:
    """``sonic_core.sampler.denoise_window`` with one forward per CFG branch."""
    device, dtype = latents.device, latents.dtype
    sigma = step.sigma.to(device)
    scaled = latents / ((sigma**2 + 1) ** 0.5)
    frames = latents.shape[1]
    image_ctx, audio_ctx, mask = cond.context
    outputs = []
    for b in range(CFG_BRANCHES):
        rows = slice(b * frames, (b + 1) * frames)
        context = type(cond.context)(image_ctx[rows], audio_ctx[rows], mask)
        unet_in = torch.cat([scaled, cond.cond_latents[b:b + 1]], dim=2)
        outputs.append(unet(unet_in, step.timestep.to(device), context, cond.added_time_ids[b:b + 1]))
    g_image = torch.tensor(step.guidance_image, device=device, dtype=dtype)
    g_audio = torch.tensor(step.guidance_audio, device=device, dtype=dtype)
    return euler_v_step(latents, guidance(*outputs, g_image, g_audio), sigma, step.sigma_next.to(device))
