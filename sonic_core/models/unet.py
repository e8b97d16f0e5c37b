"""Sonic's UNet: the stock diffusers SVD UNet with audio IP-attention in every cross-attention layer.

Differences from ``diffusers.UNetSpatioTemporalConditionModel`` (all needed to reproduce Sonic):

* the context is per frame: CLIP image embeds ``[B*F, 1, D]`` plus audio tokens ``[B*F, T, D]``;
* every ``attn2`` (spatial and temporal) adds ``SDPA(q, to_k_ip(audio), to_v_ip(audio))`` to the image
  attention; in spatial layers that audio term is multiplied by the face mask resized to the query grid;
* the temporal cross-attention context is the *mean over the window's frames* (stock diffusers uses frame 0).

Parameter names are stock plus ``...attn2.processor.to_{k,v}_ip.0.weight``, exactly as in ``Sonic/unet.pth``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from torch import nn


@dataclass
class FaceMask:
    """The face mask ``[1, 1, H, W]`` with per-query-count resized copies cached for the whole job."""

    mask: torch.Tensor
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def for_queries(self, num_queries: int) -> torch.Tensor:
        """Mask resized to a grid of ``num_queries`` cells, flattened to ``[num_queries]``.

        The grid height is ``int(sqrt(n / (W/H)))`` (float32 sqrt), plus one if it does not divide ``n``;
        bicubic resize without corner alignment; zero-pad or truncate to ``n``.
        """
        cached = self._cache.get(num_queries)
        if cached is None:
            height, width = self.mask.shape[-2:]
            ratio = width / height
            grid_h = int(torch.sqrt(torch.tensor([num_queries / ratio], dtype=torch.float32))[0])
            grid_h += int(num_queries % grid_h != 0)
            grid_w = num_queries // grid_h
            small = F.interpolate(self.mask[:, :1], size=(grid_h, grid_w), mode="bicubic").reshape(-1)
            if small.numel() < num_queries:
                small = F.pad(small, (0, num_queries - small.numel()))
            cached = self._cache[num_queries] = small[:num_queries]
        return cached


class SonicContext(tuple):
    """Cross-attention context ``(image_embeds, audio_tokens, face_mask_or_None)``, one row per frame."""

    def __new__(cls, image_embeds: torch.Tensor, audio_tokens: torch.Tensor, mask: FaceMask | None):
        return super().__new__(cls, (image_embeds, audio_tokens, mask))

    def frame_mean(self, batch: int, frames: int, positions: int) -> SonicContext:
        """The temporal-attention context: mean over frames, repeated for every spatial position."""

        def mean(ctx: torch.Tensor) -> torch.Tensor:
            ctx = ctx.reshape(batch, frames, ctx.shape[-2], ctx.shape[-1]).mean(dim=1, keepdim=True)
            return ctx.expand(batch, positions, -1, -1).reshape(batch * positions, -1, ctx.shape[-1])

        return SonicContext(mean(self[0]), mean(self[1]), None)


class AudioIPAttnProcessor(nn.Module):
    """Cross-attention over the image context plus a (masked) audio IP-attention term."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.to_k_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])
        self.to_v_ip = nn.ModuleList([nn.Linear(cross_attention_dim, hidden_size, bias=False)])

    @staticmethod
    def _attend(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        batch, heads = query.shape[0], attn.heads
        head_dim = key.shape[-1] // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: SonicContext | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        image_ctx, audio_ctx, face_mask = encoder_hidden_states
        query = attn.to_q(hidden_states)
        out = self._attend(attn, query, attn.to_k(image_ctx), attn.to_v(image_ctx))
        audio = self._attend(attn, query, self.to_k_ip[0](audio_ctx), self.to_v_ip[0](audio_ctx))
        if face_mask is not None:
            audio = audio * face_mask.for_queries(audio.shape[1]).to(query.dtype)[None, :, None]
        out = out + self.scale * audio
        return attn.to_out[1](attn.to_out[0](out))


class SonicSpatioTemporalTransformer(TransformerSpatioTemporalModel):
    """Stock spatio-temporal transformer, except for the temporal context (frame mean) and the face mask."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: SonicContext,
        image_only_indicator: torch.Tensor,
        return_dict: bool = False,
    ):
        batch_frames, _, height, width = hidden_states.shape
        num_frames = image_only_indicator.shape[-1]
        batch = batch_frames // num_frames
        temporal_ctx = encoder_hidden_states.frame_mean(batch, num_frames, height * width)

        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        channels = hidden_states.shape[1]
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        hidden_states = self.proj_in(hidden_states)

        frame_ids = torch.arange(num_frames, device=hidden_states.device).repeat(batch, 1).reshape(-1)
        frame_emb = self.time_pos_embed(self.time_proj(frame_ids).to(hidden_states.dtype))[:, None, :]

        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks, strict=True):
            hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states)
            mixed = temporal_block(hidden_states + frame_emb, num_frames=num_frames,
                                   encoder_hidden_states=temporal_ctx)
            hidden_states = self.time_mixer(x_spatial=hidden_states, x_temporal=mixed,
                                            image_only_indicator=image_only_indicator)

        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2)
        return (hidden_states.contiguous() + residual,)


class SonicUNet(UNetSpatioTemporalConditionModel):
    """SVD UNet taking a per-frame :class:`SonicContext`. Build it with :func:`build_sonic_unet`."""

    def install_audio_attention(self, ip_scale: float = 1.0) -> None:
        for module in self.modules():
            if isinstance(module, TransformerSpatioTemporalModel):
                module.__class__ = SonicSpatioTemporalTransformer
        cross_dim = self.config.cross_attention_dim
        for name, module in self.named_modules():
            if isinstance(module, Attention) and name.endswith("attn2"):
                hidden = module.to_q.out_features
                module.set_processor(AudioIPAttnProcessor(hidden, cross_dim, ip_scale))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: SonicContext,
        added_time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """sample: [B, F, C, h, w]; timestep: 0-d tensor; added_time_ids: [B, 3] -> [B, F, C_out, h, w]."""
        batch, frames = sample.shape[:2]
        timesteps = timestep.reshape(1).to(sample.device).expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        time_embeds = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
        emb = (emb + self.add_embedding(time_embeds)).repeat_interleave(frames, dim=0)

        hidden = self.conv_in(sample.flatten(0, 1))
        indicator = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=context,
                                    image_only_indicator=indicator)
            else:
                hidden, res = block(hidden_states=hidden, temb=emb, image_only_indicator=indicator)
            skips += res
        hidden = self.mid_block(hidden_states=hidden, temb=emb, encoder_hidden_states=context,
                                image_only_indicator=indicator)
        for block in self.up_blocks:
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            if getattr(block, "has_cross_attention", False):
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                               encoder_hidden_states=context, image_only_indicator=indicator)
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                               image_only_indicator=indicator)
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return hidden.reshape(batch, frames, *hidden.shape[1:])


def build_sonic_unet(config: dict, ip_scale: float = 1.0) -> SonicUNet:
    """A randomly initialised Sonic UNet from an SVD ``unet/config.json`` dict."""
    unet = SonicUNet.from_config(config)
    unet.install_audio_attention(ip_scale)
    return unet


def ip_adapter_key_count(unet: SonicUNet) -> int:
    """Number of audio IP-attention tensors (64 for SVD-xt)."""
    return sum(1 for key in unet.state_dict() if "_ip." in key)


__all__ = ["FaceMask", "SonicContext", "SonicUNet", "build_sonic_unet", "ip_adapter_key_count"]
