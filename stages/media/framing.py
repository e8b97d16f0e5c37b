"""How much of the portrait the video shows: the whole image, the reference's square face crop, or a 9:16
vertical crop for phone screens.

``crop`` reproduces the reference exactly: the box is :func:`sonic_core.image.expand_to_square` and it is cut
with numpy slicing semantics (``img[y1:y2, x1:x2]``): a negative start counts from the far edge (it wraps,
clamped at 0), an end past the edge is clamped, and an end at or before the start gives nothing (rejected).
For a face box inside the image the square never leaves the image, so wrapping only matters for a
``face_bbox`` that sticks out of the image; we still cut what numpy would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image

from sonic_core.face import FaceBox
from sonic_core.image import expand_to_square
from stages.media.errors import MediaError

FramingMode = Literal["crop", "full", "vertical"]
MODES = ("crop", "full", "vertical")
VERTICAL_ASPECT = (9, 16)  # width : height
VERTICAL_FACE_Y = 1 / 3    # face centre on the upper-third line of the vertical crop


@dataclass
class Framed:
    """``image`` as framed; ``box`` ``(x1, y1, x2, y2)`` is the part of the source it shows (source pixels);
    ``face`` is the face box in ``image``'s coordinates."""

    image: Image.Image
    box: tuple[int, int, int, int]
    face: FaceBox
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def numpy_slice_box(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """The box ``img[y1:y2, x1:x2]`` actually selects in a ``width`` x ``height`` array."""
    x1, x2, _ = slice(int(box[0]), int(box[2])).indices(width)
    y1, y2, _ = slice(int(box[1]), int(box[3])).indices(height)
    return x1, y1, max(x1, x2), max(y1, y2)


def vertical_box(face: FaceBox, width: int, height: int) -> tuple[int, int, int, int]:
    """The largest exact 9:16 box (width a multiple of 9, height of 16) inside the image, the face centred
    horizontally and its centre on the upper-third line, shifted as little as needed to stay inside."""
    aw, ah = VERTICAL_ASPECT
    k = min(width // aw, height // ah)
    if k < 1:
        raise MediaError("image", f"the image ({width}x{height}) is too small for a 9:16 crop",
                         "upload a larger portrait")
    cw, ch = aw * k, ah * k
    fx1, fy1, fx2, fy2 = face.as_xyxy()
    x1 = min(max(round((fx1 + fx2) / 2 - cw / 2), 0), width - cw)
    y1 = min(max(round((fy1 + fy2) / 2 - ch * VERTICAL_FACE_Y), 0), height - ch)
    return x1, y1, x1 + cw, y1 + ch


def frame_portrait(image: Image.Image, face: FaceBox, mode: FramingMode = "crop",
                   expand_ratio: float = 0.5) -> Framed:
    """Frame ``image`` around ``face`` (source pixels). ``crop``: the reference's square box grown by
    ``expand_ratio`` of the face size per side (its app uses 0.5); ``full``: the whole image (the reference
    demo); ``vertical``: see :func:`vertical_box`."""
    width, height = image.size
    fx1, fy1, fx2, fy2 = face.as_xyxy()
    if face.w <= 0 or face.h <= 0 or fx2 <= 0 or fy2 <= 0 or fx1 >= width or fy1 >= height:
        raise MediaError("face", f"the face box ({face.x:.0f},{face.y:.0f},{face.w:.0f},{face.h:.0f}) is "
                         f"empty or outside the {width}x{height} image",
                         "pass face_bbox as x,y,w,h in image pixels, or leave it out to detect the face")
    if mode == "full":
        box = (0, 0, width, height)
    elif mode == "crop":
        if not expand_ratio >= 0:
            raise MediaError("expand_ratio", f"expand_ratio must be >= 0, got {expand_ratio}",
                             "use 0.5 (the reference app) or 0.15-0.2 for a tight crop")
        box = numpy_slice_box(expand_to_square(face, expand_ratio, width, height), width, height)
    elif mode == "vertical":
        box = vertical_box(face, width, height)
    else:
        raise MediaError("framing", f"unknown framing mode {mode!r}", f"use one of {', '.join(MODES)}")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise MediaError("face", f"the crop box {box} is empty", "pass a face box inside the image")
    framed = image if box == (0, 0, width, height) else image.crop(box)
    moved = FaceBox(face.x - box[0], face.y - box[1], face.w, face.h, face.score)
    return Framed(image=framed, box=tuple(int(v) for v in box), face=moved, mode=mode)


def keep_resolution_size(framed_w: int, framed_h: int) -> tuple[int, int]:
    """Output size that keeps the framed portrait's resolution: each side rounded down to even (yuv420p)."""
    return max(2, framed_w - framed_w % 2), max(2, framed_h - framed_h % 2)
