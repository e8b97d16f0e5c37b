"""Portrait upload decoding: PNG/JPEG/WebP, EXIF orientation, modes, animation, size limits, rejections."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from stages.media import LoadedImage, MediaError, load_image, sniff_image
from tests.media_fixtures import (
    astronaut,
    damaged_copies,
    make_exif_rotated_jpeg,
    png_header_only,
    save_image,
)


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    return astronaut()


def diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.mark.parametrize("fmt, name, kwargs, tolerance", [
    ("PNG", "png", {}, 0.0), ("JPEG", "jpeg", {"quality": 95}, 3.0), ("WEBP", "webp", {"quality": 95}, 3.0),
])
def test_formats(tmp_path, portrait, fmt, name, kwargs, tolerance):
    path = save_image(portrait, tmp_path / f"p.{name}", fmt, **kwargs)
    for source in (path, path.read_bytes()):
        loaded = load_image(source)
        assert isinstance(loaded, LoadedImage)
        assert loaded.source_format == name and loaded.image.mode == "RGB" and loaded.size == (512, 512)
        assert loaded.warnings == [] and loaded.orientation == 1
        assert diff(loaded.image, portrait) <= tolerance


def test_sniffs_content_not_extension(tmp_path, portrait):
    png = save_image(portrait, tmp_path / "p.png", "PNG")
    shutil.copy(png, tmp_path / "portrait.jpg")
    assert load_image(tmp_path / "portrait.jpg").source_format == "png"
    jpeg = save_image(portrait, tmp_path / "p.jpeg", "JPEG")
    shutil.copy(jpeg, tmp_path / "portrait.webp")
    assert load_image(tmp_path / "portrait.webp").source_format == "jpeg"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, portrait, orientation):
    wide = portrait.crop((0, 64, 512, 448))  # 512x384, so a quarter turn shows in the size
    path = make_exif_rotated_jpeg(wide, tmp_path / "phone.jpg", orientation)
    with Image.open(path) as stored:
        assert stored.size == ((512, 384) if orientation == 3 else (384, 512))
    loaded = load_image(path)
    assert loaded.orientation == orientation and loaded.size == (512, 384)
    assert diff(loaded.image, wide) < 3.0


def test_modes_become_rgb(tmp_path, portrait):
    grey = load_image(save_image(portrait.convert("L"), tmp_path / "g.png", "PNG"))
    assert grey.image.mode == "RGB" and grey.source_mode == "L"
    palette = load_image(save_image(portrait.convert("P"), tmp_path / "p.png", "PNG"))
    assert palette.image.mode == "RGB"
    cmyk = load_image(save_image(portrait.convert("CMYK"), tmp_path / "c.jpg", "JPEG", quality=95))
    assert cmyk.image.mode == "RGB" and cmyk.source_mode == "CMYK" and diff(cmyk.image, portrait) < 8


def test_sixteen_bit_grey_is_scaled(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 512).round().astype(np.uint16), (300, 1))
    path = save_image(Image.fromarray(ramp), tmp_path / "deep.png", "PNG")
    loaded = load_image(path)
    assert loaded.source_mode.startswith("I") and loaded.image.mode == "RGB"
    row = np.asarray(loaded.image)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.abs(row - np.round(ramp[0] / 257)).max() == 0


def test_transparency_is_flattened_on_white(tmp_path, portrait):
    rgba = portrait.convert("RGBA")
    alpha = np.full((512, 512), 255, np.uint8)
    alpha[:, :100] = 0
    rgba.putalpha(Image.fromarray(alpha))
    loaded = load_image(save_image(rgba, tmp_path / "cutout.png", "PNG"))
    pixels = np.asarray(loaded.image)
    assert (pixels[:, :100] == 255).all() and np.array_equal(pixels[:, 100:], np.asarray(portrait)[:, 100:])
    assert any("transparency" in w for w in loaded.warnings)
    opaque = load_image(save_image(portrait.convert("RGBA"), tmp_path / "opaque.png", "PNG"))
    assert opaque.warnings == []


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_uses_first_frame(tmp_path, portrait, fmt):
    frames = [portrait, portrait.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    loaded = load_image(path)
    assert any("animated" in w and "first frame" in w for w in loaded.warnings)
    assert diff(loaded.image, portrait) < 1.0


def test_small_images(tmp_path, portrait):
    warned = load_image(save_image(portrait.resize((300, 400)), tmp_path / "small.png", "PNG"))
    assert any("under 512" in w for w in warned.warnings)
    assert load_image(save_image(portrait.resize((256, 256)), tmp_path / "min.png", "PNG")).size == (256, 256)
    expect_rejection(save_image(portrait.resize((255, 600)), tmp_path / "tiny.png", "PNG"), match="255x600")


def expect_rejection(source, match="", **kwargs) -> MediaError:
    with pytest.raises(MediaError) as info:
        load_image(source, **kwargs)
    err = info.value
    assert err.field == "image" and str(err).startswith("image: ") and ". Fix: " in str(err)
    assert match.lower() in str(err).lower()
    return err


@pytest.mark.badinput
def test_decompression_bombs(portrait):
    expect_rejection(png_header_only(8000, 6000), match="48.0 MP")  # header check, nothing decoded
    buffer = io.BytesIO()
    portrait.save(buffer, format="PNG")
    expect_rejection(buffer.getvalue(), max_pixels=200_000, match="over the 0.2 MP limit")
    # beyond Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS) even a raised max_pixels is refused
    expect_rejection(png_header_only(20_000, 20_000), max_pixels=10**9, match="huge")


@pytest.mark.badinput
def test_rejects_bad_images(tmp_path, portrait):
    rng = np.random.default_rng(1)
    expect_rejection(b"", match="empty")
    expect_rejection(rng.bytes(4000), match="unknown type")
    expect_rejection(b"GIF89a" + bytes(100), match="GIF")
    expect_rejection(b"\x00\x00\x00\x18ftypheic" + bytes(100), match="HEIC")
    expect_rejection(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(100), match="WAV")
    expect_rejection(tmp_path / "missing.png", match="no file")
    buffer = io.BytesIO()
    portrait.save(buffer, format="JPEG")
    expect_rejection(buffer.getvalue()[:len(buffer.getvalue()) // 2], match="damaged")
    buffer = io.BytesIO()
    portrait.save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[100:140] = rng.bytes(40)  # break a chunk's CRC / the zlib stream
    expect_rejection(bytes(data), match="damaged")


@pytest.mark.badinput
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_damaged_images_load_or_raise_media_error(portrait, fmt):
    buffer = io.BytesIO()
    portrait.save(buffer, format=fmt)
    for damaged in damaged_copies(buffer.getvalue(), 12):
        try:
            loaded = load_image(damaged)
        except MediaError as err:
            assert err.field == "image"
        else:
            assert loaded.image.mode == "RGB"
