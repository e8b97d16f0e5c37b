"""The two audio adapters of Sonic: whisper features -> cross-attention tokens, and -> motion buckets.

Parameter names (``proj1/2/3``, ``norm``) follow ``Sonic/audio2token.pth`` and ``Sonic/audio2bucket.pth``;
all sizes are read back from the tensors so tiny and full checkpoints load through the same path.
"""

from __future__ import annotations

import torch
from torch import nn


def _linear_shapes(state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    in_dim = state["proj1.weight"].shape[1]
    hidden = state["proj1.weight"].shape[0]
    out_dim = state["proj3.weight"].shape[0]
    return in_dim, hidden, out_dim


class AudioToTokens(nn.Module):
    """Flattened whisper clip -> ``tokens`` x ``dim`` tokens (three linears with ReLU, then LayerNorm)."""

    def __init__(self, in_dim: int, hidden: int, tokens: int, dim: int):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.proj1 = nn.Linear(in_dim, hidden)
        self.proj2 = nn.Linear(hidden, hidden)
        self.proj3 = nn.Linear(hidden, tokens * dim)
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> AudioToTokens:
        in_dim, hidden, out_dim = _linear_shapes(state)
        dim = state["norm.weight"].shape[0]
        model = cls(in_dim, hidden, out_dim // dim, dim)
        model.load_state_dict(state, strict=True)
        return model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: [N, steps, layers, channels] -> [N, tokens, dim]."""
        x = clips.reshape(clips.shape[0], -1)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        return self.norm(self.proj3(x).reshape(-1, self.tokens, self.dim))


class AudioToBucket(nn.Module):
    """Flattened last-layer whisper clip + CLIP image embedding -> motion values (SiLU MLP, no norm)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.proj1 = nn.Linear(in_dim, hidden)
        self.proj2 = nn.Linear(hidden, hidden)
        self.proj3 = nn.Linear(hidden, out_dim)
        self.act = nn.SiLU()

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> AudioToBucket:
        model = cls(*_linear_shapes(state))
        model.load_state_dict(state, strict=True)
        return model

    def forward(self, clips: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """clips: [N, steps, 1, channels]; image_embeds: [N, clip_dim] -> [N, out_dim]."""
        x = torch.cat([clips.reshape(clips.shape[0], -1), image_embeds], dim=-1)
        x = self.act(self.proj1(x))
        x = self.act(self.proj2(x))
        return self.proj3(x)
