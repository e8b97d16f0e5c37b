"""Framing modes: the reference's square crop (numpy slicing semantics), the whole image, 9:16 vertical."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sonic_core.face import FaceBox
from sonic_core.image import expand_to_square, generation_size
from stages.media import MediaError, frame_portrait, keep_resolution_size, numpy_slice_box
from tests.media_fixtures import ASTRONAUT_FACE, astronaut


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    return astronaut()


def canvas(width: int, height: int, face_centre: tuple[int, int]) -> tuple[Image.Image, FaceBox]:
    """The astronaut's head pasted on a noise canvas of any size; returns the image and the face box."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    head = astronaut().crop((120, 10, 330, 220))  # 210x210 around ASTRONAUT_FACE
    x, y = face_centre[0] - 105, face_centre[1] - 105
    image.paste(head, (x, y))
    face = ASTRONAUT_FACE
    return image, FaceBox(face.x - 120 + x, face.y - 10 + y, face.w, face.h)


def test_full_is_the_whole_image(portrait):
    framed = frame_portrait(portrait, ASTRONAUT_FACE, "full")
    assert framed.size == (512, 512) and framed.box == (0, 0, 512, 512) and framed.face == ASTRONAUT_FACE


@pytest.mark.parametrize("ratio", [0.5, 0.2, 0.15])
def test_crop_matches_the_reference(portrait, ratio):
    framed = frame_portrait(portrait, ASTRONAUT_FACE, "crop", expand_ratio=ratio)
    x1, y1, x2, y2 = expand_to_square(ASTRONAUT_FACE, ratio, 512, 512)
    assert framed.box == (x1, y1, x2, y2) and framed.size == (x2 - x1, y2 - y1)
    assert framed.size[0] == framed.size[1]
    assert np.array_equal(np.asarray(framed.image), np.asarray(portrait)[y1:y2, x1:x2])
    assert (framed.face.x, framed.face.y) == (ASTRONAUT_FACE.x - x1, ASTRONAUT_FACE.y - y1)
    assert framed.face.w == ASTRONAUT_FACE.w


def test_tighter_ratio_gives_a_smaller_crop(portrait):
    wide = frame_portrait(portrait, ASTRONAUT_FACE, "crop", expand_ratio=0.5).size[0]
    tight = frame_portrait(portrait, ASTRONAUT_FACE, "crop", expand_ratio=0.15).size[0]
    assert tight < wide


@pytest.mark.parametrize("box", [(10, 20, 100, 90), (-50, 5, 40, 60), (400, -30, 700, 20), (-5, -5, -1, 30),
                                 (0, 0, 600, 600), (-600, 10, 50, 50)])
def test_numpy_slice_semantics(box):
    """Negative starts wrap like Python slicing, ends past the edge clamp; PIL cuts what numpy would."""
    array = np.arange(300 * 500 * 3, dtype=np.uint32).reshape(300, 500, 3) % 251
    x1, y1, x2, y2 = box
    expected = array[y1:y2, x1:x2]
    rx1, ry1, rx2, ry2 = numpy_slice_box(box, 500, 300)
    assert np.array_equal(array[ry1:ry2, rx1:rx2], expected)
    if expected.size:
        cropped = Image.fromarray(array.astype(np.uint8)).crop((rx1, ry1, rx2, ry2))
        assert np.array_equal(np.asarray(cropped), expected.astype(np.uint8))


def test_crop_with_a_face_box_outside_the_left_edge():
    image, _ = canvas(640, 480, (320, 240))
    face = FaceBox(-40.0, 150.0, 120.0, 130.0)  # sticks out on the left: expand_to_square clips it
    framed = frame_portrait(image, face, "crop", expand_ratio=0.5)
    x1, y1, x2, y2 = expand_to_square(face, 0.5, 640, 480)
    assert np.array_equal(np.asarray(framed.image), np.asarray(image)[y1:y2, x1:x2])


@pytest.mark.parametrize("size, centre", [((1280, 720), (900, 300)), ((1280, 720), (120, 600)),
                                          ((900, 2400), (450, 1000)), ((512, 512), (256, 200)),
                                          ((1080, 1920), (540, 700))])
def test_vertical_is_nine_by_sixteen(size, centre):
    image, face = canvas(*size, centre)
    framed = frame_portrait(image, face, "vertical")
    w, h = framed.size
    assert w * 16 == h * 9 and w % 9 == 0 and h % 16 == 0
    k = min(size[0] // 9, size[1] // 16)
    assert (w, h) == (9 * k, 16 * k)  # as large as fits
    x1, y1, x2, y2 = framed.box
    assert x1 >= 0 and y1 >= 0 and x2 <= size[0] and y2 <= size[1]
    fcx, fcy = framed.face.x + framed.face.w / 2, framed.face.y + framed.face.h / 2
    if x1 > 0 and x2 < size[0]:
        assert abs(fcx - w / 2) <= 1  # centred when nothing is in the way
    if y1 > 0 and y2 < size[1]:
        assert abs(fcy - h / 3) <= 1  # on the upper-third line
    assert 0 <= fcx <= w and 0 <= fcy <= h
    assert generation_size(w, h, 576) == (576, 1024)
    gw, gh = generation_size(w, h, 512)
    assert gw == 512 and abs(gh - 512 * 16 / 9) <= 64


def test_vertical_face_position_on_a_tall_image():
    image, face = canvas(900, 2400, (450, 1000))
    framed = frame_portrait(image, face, "vertical")
    assert framed.size == (900, 1600)
    assert framed.box[1] == round(face.y + face.h / 2 - 1600 / 3)


@pytest.mark.badinput
def test_framing_rejections(portrait):
    for face in (FaceBox(600, 100, 50, 50), FaceBox(100, -300, 50, 50), FaceBox(100, 100, 0, 50)):
        with pytest.raises(MediaError) as info:
            frame_portrait(portrait, face, "crop")
        assert info.value.field == "face" and str(info.value).startswith("face: ")
    with pytest.raises(MediaError) as info:
        frame_portrait(portrait, ASTRONAUT_FACE, "square")
    assert info.value.field == "framing" and "crop, full, vertical" in str(info.value)
    with pytest.raises(MediaError) as info:
        frame_portrait(portrait, ASTRONAUT_FACE, "crop", expand_ratio=-0.1)
    assert info.value.field == "expand_ratio"


def test_keep_resolution_size():
    assert keep_resolution_size(512, 512) == (512, 512)
    assert keep_resolution_size(513, 767) == (512, 766)
    assert keep_resolution_size(1, 1) == (2, 2)
