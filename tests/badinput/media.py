"""Bad (and odd but valid) media, made at test time as bytes: nothing large is committed.

Every maker is cheap (milliseconds to a second) and deterministic. Long or huge inputs are made honestly but
small: a 30-minute FLAC of near-silence compresses to a few hundred KiB, and decompression bombs are real
PNG/JPEG headers that claim a huge size over a tiny body.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import av
import cv2
import numpy as np
import soundfile as sf
from PIL import Image

from tests.helpers import astronaut_png, speech_wav, synthetic_speech

SPEECH_S = 1.0


# -- audio ------------------------------------------------------------------------------------------------


@functools.cache
def speech_16k() -> np.ndarray:
    """One second of real (espeak) speech at 16 kHz, float32."""
    samples, _ = sf.read(speech_wav(SPEECH_S), dtype="float32")
    return samples


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def raw_wav(pcm16: bytes, rate: int, channels: int = 1, data_size: int | None = None) -> bytes:
    """A PCM-16 WAV written field by field, so the header may say anything (rate 0 or 1 Hz, a data chunk
    longer than the file)."""
    block = 2 * channels
    size = len(pcm16) if data_size is None else data_size
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block & 0xFFFFFFFF, block, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + pcm16
    return b"RIFF" + struct.pack("<I", min(len(body), 0xFFFFFFFF)) + body


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


@functools.cache
def good_wav() -> bytes:
    return speech_wav(SPEECH_S).read_bytes()


def resampled_speech(rate: int) -> bytes:
    return wav_bytes(synthetic_speech(SPEECH_S, rate), rate)


def encoded(samples: np.ndarray, rate: int, codec: str, container: str) -> bytes:
    """``samples`` (mono float32) encoded with PyAV, e.g. ``("libmp3lame", "mp3")``, ``("aac", "ipod")``."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for converted in resampler.resample(frame):
            out.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buffer.getvalue()


@functools.cache
def speech_mp3() -> bytes:
    return encoded(synthetic_speech(2.0, 16000), 16000, "libmp3lame", "mp3")


@functools.cache
def speech_m4a() -> bytes:
    return encoded(synthetic_speech(2.0, 16000), 16000, "aac", "ipod")


@functools.cache
def long_flac(seconds: float = 1801.0, rate: int = 8000) -> bytes:
    """A valid FLAC of ``seconds`` of faint noise (over the 30-minute limit): ~1 MiB."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as handle:
        block = rng.integers(-2, 3, rate * 10).astype(np.int16)
        for _ in range(int(seconds // 10) + 1):
            handle.write(block)
    return buffer.getvalue()


def speech_at(scale: float, clip: bool = True) -> bytes:
    samples = speech_16k() * scale
    return wav_bytes(np.clip(samples, -1, 1) if clip else samples, 16000, subtype="PCM_16" if clip else "FLOAT")


def clipped_speech() -> bytes:
    """Speech driven 30x into full scale: a third of the samples sit at the rails."""
    return speech_at(30.0 / max(1e-6, float(np.abs(speech_16k()).max())))


def dc_only() -> bytes:
    """A flat DC offset at half scale: no sound at all, though no sample is zero."""
    return wav_bytes(np.full(32000, 0.5, np.float32), 16000)


def multichannel_speech(channels: int = 8) -> bytes:
    speech = speech_16k()
    return wav_bytes(np.stack([speech * (1 - c / (2 * channels)) for c in range(channels)], 1), 16000)


@functools.cache
def video_only_mp4() -> bytes:
    """An MP4 with one H.264 video stream and no audio track."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def id3_only() -> bytes:
    """An ID3v2 tag (title only) and nothing after it: an "MP3" without a single frame."""
    title = b"\x03lecture"
    frame = b"TIT2" + struct.pack(">I", len(title)) + b"\x00\x00" + title
    size = len(frame)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x04\x00\x00" + syncsafe + frame


# -- images -----------------------------------------------------------------------------------------------


@functools.cache
def portrait() -> Image.Image:
    return Image.open(astronaut_png()).convert("RGB")


def image_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@functools.cache
def good_png() -> bytes:
    return astronaut_png().read_bytes()


@functools.cache
def good_jpeg() -> bytes:
    return image_bytes(portrait(), "JPEG", quality=90)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A well-formed PNG header claiming ``width`` x ``height`` over one compressed row: a decompression
    bomb's shape without its cost."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    row = zlib.compress(b"\x00" * (min(width, 1 << 20) * 3 + 1))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", row) + png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 frame header is patched to claim ``width`` x ``height``."""
    data = bytearray(image_bytes(portrait().resize((64, 64)), "JPEG"))
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def apng() -> bytes:
    frames = [portrait(), portrait().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return image_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def animated_gif() -> bytes:
    frames = [portrait().convert("P"), portrait().transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    return image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def cmyk_jpeg() -> bytes:
    return image_bytes(portrait().convert("CMYK"), "JPEG", quality=90)


def png16_rgb() -> bytes:
    """48-bit colour PNG (16 bits per channel), as a RAW converter writes it."""
    deep = np.asarray(portrait()).astype(np.uint16) * 257
    ok, encoded_png = cv2.imencode(".png", deep[..., ::-1])
    assert ok
    return encoded_png.tobytes()


def png16_grey() -> bytes:
    grey = np.asarray(portrait().convert("L")).astype(np.uint16) * 257
    return image_bytes(Image.fromarray(grey), "PNG")


def flat_image(value: tuple[int, int, int] = (128, 128, 128), size: tuple[int, int] = (512, 512)) -> bytes:
    return image_bytes(Image.new("RGB", size, value), "PNG")


def transparent_png() -> bytes:
    """Every pixel fully transparent: flattened onto white it is a blank page."""
    return image_bytes(Image.new("RGBA", (512, 512), (200, 30, 30, 0)), "PNG")


def noise_image(size: int = 512, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def two_faces() -> Image.Image:
    """Two portraits side by side, the right one smaller: two faces, the left one the larger."""
    canvas = Image.new("RGB", (1024, 512), (90, 90, 90))
    canvas.paste(portrait(), (0, 0))
    canvas.paste(portrait().resize((384, 384)), (576, 64))
    return canvas


def resized_png(width: int, height: int) -> bytes:
    return image_bytes(portrait().resize((width, height)), "PNG")


def damaged(data: bytes, start: int, length: int, seed: int = 0) -> bytes:
    out = bytearray(data)
    out[start:start + length] = np.random.default_rng(seed).bytes(length)
    return bytes(out)


def noise_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(size)
