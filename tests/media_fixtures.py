"""Helpers that make real media files for the media tests: speech in every accepted audio format, portraits
as PNG / JPEG (with an EXIF orientation) / WebP, and a few deliberately broken files."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image

from sonic_core.face import FaceBox

SPEECH_TEXT = "Hello there. This is a short test of the talking head service, one two three."
ASTRONAUT_FACE = FaceBox(177.0, 67.0, 93.0, 93.0)  # OpenCV Haar box on skimage's astronaut (512x512)


def syllable_envelope(n: int, rate: float, syllables_per_s: float = 4.0, seed: int = 0) -> np.ndarray:
    """A speech-like loudness curve at ``rate`` Hz: raised-cosine syllables of random height with pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    period = 1.0 / syllables_per_s
    index = (t // period).astype(int)
    heights = rng.uniform(0.3, 1.0, index.max() + 1)
    heights[rng.random(heights.size) < 0.2] = 0.0  # pauses
    phase = (t % period) / period
    return (heights[index] * np.sin(np.pi * phase) ** 2).astype(np.float64)


def synth_speech(seconds: float = 3.0, rate: int = 22050, seed: int = 0) -> np.ndarray:
    """Voiced harmonics (gliding 110-160 Hz pitch) shaped by a syllable envelope; float32 mono in [-1, 1]."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f0 = 130 + 25 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    signal = voiced * syllable_envelope(n, rate, seed=seed)
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


def make_speech_wav(directory: Path, name: str = "speech.wav", text: str = SPEECH_TEXT) -> Path:
    """Real speech from ``espeak-ng`` (22.05 kHz mono WAV) when it is installed, else :func:`synth_speech`."""
    path = Path(directory) / name
    espeak = shutil.which("espeak-ng")
    if espeak:
        subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True, timeout=30)
    else:
        sf.write(path, synth_speech(), 22050, subtype="PCM_16")
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    """``samples`` is [n] or [n, channels] float in [-1, 1]."""
    sf.write(path, samples, rate, subtype=subtype)
    return Path(path)


def convert_audio(src: Path, dst: Path, codec: str, rate: int | None = None, channels: int = 1,
                  container_format: str | None = None, bit_rate: int | None = None) -> Path:
    """Re-encode ``src`` with PyAV: ``codec`` (``libmp3lame``, ``aac``, ``libopus``, ``flac``, ``pcm_s16le``)
    at ``rate`` Hz (``None`` keeps the source rate) and ``channels`` channels."""
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=container_format) as out:
        in_stream = inp.streams.audio[0]
        rate = rate or in_stream.rate
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        for frame in inp.decode(in_stream):
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        for converted in resampler.resample(None):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return Path(dst)


def make_audio_set(directory: Path) -> dict[str, Path]:
    """Speech in every accepted format plus low-rate and stereo WAVs, keyed by a short name."""
    directory = Path(directory)
    wav = make_speech_wav(directory)
    files = {"wav": wav}
    files["mp3"] = convert_audio(wav, directory / "speech.mp3", "libmp3lame", 44100)
    files["m4a"] = convert_audio(wav, directory / "speech.m4a", "aac", 44100, container_format="ipod")
    files["aac"] = convert_audio(wav, directory / "speech.aac", "aac", 22050, container_format="adts")
    files["opus"] = convert_audio(wav, directory / "speech.ogg", "libopus", 48000, container_format="ogg")
    files["flac"] = convert_audio(wav, directory / "speech.flac", "flac")
    files["wav8k"] = convert_audio(wav, directory / "speech_8k.wav", "pcm_s16le", 8000)
    files["wav11k"] = convert_audio(wav, directory / "speech_11k.wav", "pcm_s16le", 11025)
    files["stereo44k"] = convert_audio(wav, directory / "speech_stereo.wav", "pcm_s16le", 44100, channels=2)
    return files


def astronaut() -> Image.Image:
    """skimage's 512x512 astronaut portrait (face at :data:`ASTRONAUT_FACE`)."""
    from skimage import data

    return Image.fromarray(data.astronaut())


def save_image(image: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    image.save(path, format=fmt, **kwargs)
    return Path(path)


def make_exif_rotated_jpeg(image: Image.Image, path: Path, orientation: int = 6) -> Path:
    """Store ``image`` the way a phone does: pixels rotated, EXIF Orientation set so viewers undo it.

    Orientation 6 means "rotate 90 degrees clockwise to display", so the stored pixels are turned
    counter-clockwise; 3 is a half turn, 8 the other quarter turn."""
    stored = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
              8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.transpose(stored).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return Path(path)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but holds one row of data: a decompression-bomb
    stand-in that costs nothing to make."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def synthetic_frames(start: int, count: int, size: int = 128) -> np.ndarray:
    """``count`` float32 frames [count, size, size, 3] in [0, 1] of a drifting pattern, frame numbers from
    ``start`` (so chunks stitch into one smooth clip)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = (start + np.arange(count, dtype=np.float32))[:, None, None] / 25.0
    base = 0.5 + 0.4 * np.sin(2 * np.pi * (x[None] + 0.3 * t)) * np.cos(2 * np.pi * (y[None] - 0.2 * t))
    return np.stack([base, base[:, ::-1], 1 - base], axis=-1).astype(np.float32)


def video_fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1000)


def damaged_copies(data: bytes, count: int, seed: int = 0) -> list[bytes]:
    """``count`` damaged versions of ``data``: cut short, bytes flipped, or a run overwritten with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        damaged = bytearray(data)
        start = int(rng.integers(16, len(data)))
        if i % 3 == 0:
            del damaged[start:]
        elif i % 3 == 1:
            for pos in rng.integers(16, len(data), 16):
                damaged[pos] = int(rng.integers(256))
        else:
            damaged[start:start + 200] = rng.bytes(200)
        out.append(bytes(damaged))
    return out
