"""Portrait upload -> upright 8-bit RGB PIL image.

Decisions (see docs/media.md): the type is sniffed from the bytes (PNG, JPEG, WebP only); EXIF orientation
is applied; animated PNG/WebP use their first frame with a warning; transparency is flattened onto white;
16-bit grey is scaled to 8 bits (x / 257, rounded) and 16-bit colour keeps its high byte (Pillow's decoder);
any other mode Pillow can convert goes through ``convert("RGB")``; CMYK and 16-bit inputs are accepted with a
warning. Pixel counts over ``max_pixels`` (default 40 MP) and shapes wider or taller than 4:1 are rejected
from the header, before any pixel is decoded; a blank image (one flat colour: no face can be in it) is
rejected after decoding.
"""

from __future__ import annotations

import io
import warnings as pywarnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageStat

from stages.media.errors import MediaError

MAX_PIXELS = 40_000_000
MIN_SIDE = 256
WARN_SIDE = 512
MAX_ASPECT = 4.0        # long side : short side
FLAT_STDDEV = 2.0       # every channel's standard deviation below this (0-255): one flat colour
ACCEPTED = "PNG, JPEG or WebP"
_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_SIXTEEN_BIT_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_CONVERTIBLE = {"RGB", "L", "P", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


@dataclass
class LoadedImage:
    """``image`` is upright RGB (EXIF applied); ``source_format`` is ``png``, ``jpeg`` or ``webp``."""

    image: Image.Image
    source_format: str
    warnings: list[str] = field(default_factory=list)
    orientation: int = 1
    source_mode: str = "RGB"

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def _not_image(kind: str) -> MediaError:
    return MediaError("image", f"the upload is {kind}, not a supported portrait image",
                      f"send the portrait as {ACCEPTED}")


def sniff_image(head: bytes) -> str:
    """``png``, ``jpeg`` or ``webp`` from the first bytes; :class:`MediaError` for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"avif"):
        raise _not_image("HEIC/AVIF (an iPhone photo format); export it as JPEG")
    kinds = {b"GIF8": "a GIF", b"BM": "a BMP", b"II*\x00": "a TIFF", b"MM\x00*": "a TIFF", b"%PDF": "a PDF",
             b"RIFF": "a RIFF (WAV?) file", b"ID3": "an MP3", b"OggS": "an Ogg file", b"fLaC": "a FLAC file"}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            raise _not_image(kind)
    raise _not_image("of an unknown type")


def _corrupt(fmt: str, exc: BaseException) -> MediaError:
    return MediaError("image", f"the {fmt.upper()} file is damaged or cut off ({type(exc).__name__}: {exc})",
                      f"re-export the portrait as {ACCEPTED} and upload it again")


def _too_big(width: int, height: int, max_pixels: int) -> MediaError:
    return MediaError("image", f"the image is {width}x{height} ({width * height / 1e6:.1f} MP), over the "
                      f"{max_pixels / 1e6:g} MP limit", "downscale it (2048 px on the long side is plenty)")


def _too_elongated(width: int, height: int) -> MediaError:
    return MediaError("image", f"the image is {width}x{height}, more elongated than {MAX_ASPECT:g}:1 (a banner or "
                      "panorama, not a portrait)", "crop it around the person (3:4, 1:1 or 9:16 are typical)")


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "CMYK":
        notes.append("the portrait is CMYK (a print colour space); it was converted to RGB and its colours may "
                     "look off: export it as sRGB")
    if mode in _SIXTEEN_BIT_GREY:
        grey = np.rint(np.asarray(image, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            notes.append("the portrait has transparency; it was flattened onto a white background")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba.convert("RGB"), mask=alpha)
        return flat
    if mode in _CONVERTIBLE:
        return image.convert("RGB")
    raise MediaError("image", f"pixel mode {mode!r} is not supported", "save the portrait as 8-bit RGB")


def load_image(source: str | Path | bytes, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE,
               warn_side: int = WARN_SIDE) -> LoadedImage:
    """Decode a portrait (path or raw bytes) to an upright RGB image; :class:`MediaError` (field ``image``) on
    unsupported, damaged, oversized (``max_pixels``), too elongated (over 4:1), too small (short side <
    ``min_side``) or blank input."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise MediaError("image", f"no file at {path}", "check the path or upload the portrait again")
        data = path.read_bytes()
    if not data:
        raise MediaError("image", "the file is empty (0 bytes)", f"upload the portrait as {ACCEPTED}")
    fmt = sniff_image(data[:64])
    notes: list[str] = []
    try:
        with pywarnings.catch_warnings():  # Pillow's own warning is superseded by the max_pixels check
            pywarnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_FORMATS[fmt]])
        if image.width * image.height > max_pixels:
            raise _too_big(image.width, image.height, max_pixels)
        if min(image.size) > 0 and max(image.size) > MAX_ASPECT * min(image.size):
            raise _too_elongated(image.width, image.height)
        if getattr(image, "n_frames", 1) > 1:
            notes.append(f"the {fmt.upper()} is animated ({image.n_frames} frames); the first frame is used")
            image.seek(0)
        image.load()
        source_mode = image.mode
        orientation = image.getexif().get(0x0112, 1)
        orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
        upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise MediaError("image", f"the image header claims a huge size ({exc})",
                         "downscale it (2048 px on the long side is plenty)") from exc
    except (MediaError, MemoryError):
        raise
    except Exception as exc:  # untrusted bytes: any decoder failure is the upload's fault
        raise _corrupt(fmt, exc) from exc

    if fmt == "png" and data[24:25] == b"\x10":  # IHDR bit depth
        notes.append("the PNG has 16 bits per channel; it was reduced to 8 bits (no visible difference expected)")
    rgb = _to_rgb(upright, notes)
    short = min(rgb.size)
    if short < min_side:
        raise MediaError("image", f"the image is {rgb.width}x{rgb.height}, short side under {min_side} px",
                         f"upload a portrait at least {min_side} px (ideally {warn_side}+) on the short side")
    if max(ImageStat.Stat(rgb).stddev) < FLAT_STDDEV:
        raise MediaError("image", "the image is blank (one flat colour), so there is no face to animate",
                         "upload a photo in which the speaker's face is clearly visible")
    if short < warn_side:
        notes.append(f"the image's short side is {short} px (under {warn_side}); the result may look soft")
    return LoadedImage(image=rgb, source_format=fmt, warnings=notes, orientation=orientation,
                       source_mode=source_mode)
