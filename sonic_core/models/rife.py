"""IFNet (RIFE HDv3) frame interpolation, as used by Sonic to go from 12.5 to 25 fps.

Module names mirror ``RIFE/flownet.pkl`` (after its ``module.`` prefix is stripped) so the official file loads
strictly; the block width is read from the checkpoint. ``block_tea`` is the training-time teacher: it is only
present so that loading stays strict and is never run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=True), nn.PReLU(cout))


def _upsampler(width: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(width, width // 2, 4, 2, 1),
        nn.PReLU(width // 2),
        nn.ConvTranspose2d(width // 2, out_channels, 4, 2, 1),
    )


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False,
                         recompute_scale_factor=False)


class FlowBlock(nn.Module):
    """Estimates a flow update (4 channels) and a blend-mask update (1 channel) at one scale."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_channels, width // 2, 2), _conv(width // 2, width, 2))
        for i in range(4):
            setattr(self, f"convblock{i}", nn.Sequential(_conv(width, width), _conv(width, width)))
        self.conv1 = _upsampler(width, 4)
        self.conv2 = _upsampler(width, 1)

    def forward(self, x: torch.Tensor, flow: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = _resize(x, 1.0 / scale)
        flow = _resize(flow, 1.0 / scale) * (1.0 / scale)
        feat = self.conv0(torch.cat((x, flow), 1))
        for i in range(4):
            feat = getattr(self, f"convblock{i}")(feat) + feat
        return _resize(self.conv1(feat), scale) * scale, _resize(self.conv2(feat), scale)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at positions displaced by ``flow`` (pixels), bilinear, border padding."""
    batch, _, height, width = flow.shape
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device).view(1, 1, 1, width).expand(batch, -1, height, -1)
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device).view(1, 1, height, 1).expand(batch, -1, -1, width)
    base = torch.cat([xs, ys], 1)
    norm_flow = torch.cat([flow[:, 0:1] / ((image.shape[3] - 1.0) / 2.0),
                           flow[:, 1:2] / ((image.shape[2] - 1.0) / 2.0)], 1)
    grid = (base + norm_flow).permute(0, 2, 3, 1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


class IFNet(nn.Module):
    SCALES = (4.0, 2.0, 1.0)

    def __init__(self, width: int = 90):
        super().__init__()
        self.block0 = FlowBlock(7 + 4, width)
        self.block1 = FlowBlock(7 + 4, width)
        self.block2 = FlowBlock(7 + 4, width)
        self.block_tea = FlowBlock(10 + 4, width)

    @classmethod
    def from_checkpoint_state(cls, raw: dict[str, torch.Tensor]) -> IFNet:
        """Build from a ``flownet.pkl`` state dict: keep ``module.``-prefixed keys, strip the prefix."""
        state = {k.replace("module.", ""): v for k, v in raw.items() if "module." in k}
        if "block0.conv0.1.0.weight" not in state:
            raise ValueError("flownet.pkl has no 'module.block0.conv0.1.0.weight': not an IFNet HDv3 checkpoint")
        model = cls(width=state["block0.conv0.1.0.weight"].shape[0])
        model.load_state_dict(state, strict=True)
        return model

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        """The middle frame between ``img0`` and ``img1`` ([B, 3, H, W] in [0, 1]), not yet clamped."""
        batch, _, height, width = img0.shape
        flow = img0.new_zeros(batch, 4, height, width)
        mask = img0.new_zeros(batch, 1, height, width)
        warped0, warped1 = img0, img1
        for block, scale in zip((self.block0, self.block1, self.block2), self.SCALES, strict=True):
            f0, m0 = block(torch.cat((warped0, warped1, mask), 1), flow, scale)
            f1, m1 = block(torch.cat((warped1, warped0, -mask), 1), torch.cat((flow[:, 2:4], flow[:, :2]), 1), scale)
            flow = flow + (f0 + torch.cat((f1[:, 2:4], f1[:, :2]), 1)) / 2
            mask = mask + (m0 + (-m1)) / 2
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:4])
        blend = torch.sigmoid(mask)
        return warped0 * blend + warped1 * (1 - blend)
