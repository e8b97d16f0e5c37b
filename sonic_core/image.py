"""Portrait preprocessing: face mask, resize to a multiple of 64, VAE and CLIP inputs, crop boxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sonic_core.face import FaceBox

MASK_AREA = 1.1
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PreparedImage:
    """Model inputs for one portrait: ``ref`` [1,3,H,W] in [-1,1], ``clip`` [1,3,224,224], ``mask`` [1,1,H,W]."""

    ref: torch.Tensor
    clip: torch.Tensor
    mask: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the generated video."""
        return self.ref.shape[-1], self.ref.shape[-2]


def face_mask(face: FaceBox, width: int, height: int, area: float = MASK_AREA) -> np.ndarray:
    """uint8 [H, W, 3] mask: 255 inside the face box grown by ``area`` about its (floored) centre."""
    x1, y1 = face.x, face.y
    x2, y2 = x1 + face.w, y1 + face.h
    grown_w, grown_h = (x2 - x1) * area, (y2 - y1) * area
    cx, cy = (x2 + x1) // 2, (y2 + y1) // 2
    left, top = max(cx - grown_w // 2, 0), max(cy - grown_h // 2, 0)
    right, bottom = min(cx + grown_w // 2, width), min(cy + grown_h // 2, height)
    mask = np.zeros((height, width, 3), dtype=np.uint8)
    mask[int(top):int(bottom), int(left):int(right)] = 255
    return mask


def generation_size(width: int, height: int, min_resolution: int) -> tuple[int, int]:
    """Scale so the short side is ``min_resolution``, each side rounded (half to even) to a multiple of 64."""
    scale = min_resolution / min(width, height)
    return round(width * scale / 64) * 64, round(height * scale / 64) * 64


def _to_unit_tensor(image: Image.Image) -> torch.Tensor:
    array = torch.from_numpy(np.array(image, dtype=np.uint8))
    return array.permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def prepare_image(image: Image.Image, face: FaceBox, min_resolution: int = 512,
                  area: float = MASK_AREA) -> PreparedImage:
    """The reference's image path: mask at source size, LANCZOS resize of both, CLIP 224 squash."""
    image = image.convert("RGB")
    width, height = image.size
    mask = Image.fromarray(face_mask(face, width, height, area))
    new_size = generation_size(width, height, min_resolution)
    if new_size != (width, height):
        image = image.resize(new_size, Image.LANCZOS)
        mask = mask.resize(new_size, Image.LANCZOS)
    ref = _to_unit_tensor(image).sub(0.5).div(0.5)
    clip = _to_unit_tensor(image.resize((CLIP_SIZE, CLIP_SIZE), Image.LANCZOS))
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    clip = (clip - mean) / std
    return PreparedImage(ref=ref[None], clip=clip[None], mask=_to_unit_tensor(mask)[None, :1])


def expand_to_square(face: FaceBox, expand_ratio: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The reference's crop box (``process_bbox``): grow the face box by ``expand_ratio`` on every side
    (clipped to the image), take a square of the shorter side centred on it and shifted toward the face
    centre by at most the slack, then round. Returns ``(x1, y1, x2, y2)``."""
    fx1, fy1, fx2, fy2 = face.as_xyxy()
    bw, bh = fx2 - fx1, fy2 - fy1
    ex1, ey1 = max(fx1 - expand_ratio * bw, 0), max(fy1 - expand_ratio * bh, 0)
    ex2, ey2 = min(fx2 + expand_ratio * bw, width), min(fy2 + expand_ratio * bh, height)
    eh, ew = ey2 - ey1, ex2 - ex1
    cy, cx = (ey1 + ey2) / 2, (ex1 + ex2) / 2
    half = min(eh, ew) / 2
    face_cy, face_cx = (fy1 + fy2) / 2, (fx1 + fx2) / 2
    slack = abs((eh - ew) / 2)
    shift_y = shift_x = 0.0
    if ew < eh:
        shift_y = min(slack, abs(face_cy - cy)) * (1 if face_cy > cy else -1)
    else:
        shift_x = min(slack, abs(face_cx - cx)) * (1 if face_cx > cx else -1)
    cy, cx = (ey1 + ey2) / 2 + shift_y, (ex1 + ex2) / 2 + shift_x
    x1, y1, x2, y2 = cx - half, cy - half, cx + half, cy + half
    side = min(x2 - x1, y2 - y1)
    mid_x, mid_y = (x1 + x2) / 2, (y1 + y2) / 2
    return (round(mid_x - side / 2), round(mid_y - side / 2), round(mid_x + side / 2), round(mid_y + side / 2))
