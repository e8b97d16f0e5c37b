"""Inputs for the load test, made once per process and never downloaded: a portrait (scikit-image's astronaut,
or ``SONIC_LOAD_IMAGE``) and speech of any length (espeak-ng when installed, else a synthetic voiced signal).
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

LECTURE = (
    "Good morning everyone. Welcome back to the course. Today we look at how light travels through glass, "
    "and why a spoon in a glass of water seems to bend. Take out your notebooks. First, a short review of "
    "last week's homework. Then we will do two experiments together, and at the end of the lesson there is "
    "a quiz of five questions. Please read chapter four before Thursday."
)
SYNTH_RATE = 16000
PAUSE_S = 0.4


@functools.cache
def portrait_png() -> bytes:
    """The portrait every job sends (PNG bytes)."""
    override = os.environ.get("SONIC_LOAD_IMAGE", "").strip()
    if override:
        return Path(override).read_bytes()
    try:
        import skimage.data
        from PIL import Image
    except ImportError as exc:
        raise RuntimeError("the load test needs scikit-image and Pillow for its portrait, or set SONIC_LOAD_IMAGE "
                           "to a portrait file") from exc
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


def _espeak(text: str, voice: str) -> tuple[np.ndarray, int] | None:
    exe = shutil.which("espeak-ng")
    if not exe:
        return None
    with tempfile.TemporaryDirectory(prefix="sonic-load-") as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-s", "150", "-w", str(path), text], check=True, capture_output=True,
                       timeout=120)
        with wave.open(str(path), "rb") as handle:
            rate = handle.getframerate()
            samples = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16)
            if handle.getnchannels() > 1:
                samples = samples.reshape(-1, handle.getnchannels())[:, 0]
    return samples.astype(np.float32) / 32768.0, rate


def _synthetic(seconds: float) -> tuple[np.ndarray, int]:
    """Speech-like audio without a TTS engine: the test suite's generator when importable, else a vowel-like
    harmonic signal with a wandering pitch and syllable-rate loudness."""
    try:
        from tests.helpers import synthetic_speech

        return synthetic_speech(seconds, SYNTH_RATE), SYNTH_RATE
    except ImportError:
        pass
    t = np.arange(int(seconds * SYNTH_RATE)) / SYNTH_RATE
    pitch = 130 + 25 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SYNTH_RATE
    formants = sum(np.sin(k * phase) * np.exp(-((k * 130 - 700) / 900) ** 2) for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) ** 1.5
    return (0.4 * formants * syllables).astype(np.float32), SYNTH_RATE


@functools.cache
def _speech(seconds: float) -> tuple[np.ndarray, int]:
    """At least ``seconds`` of speech: the lecture read out, repeated with short pauses."""
    spoken = _espeak(LECTURE, os.environ.get("SONIC_LOAD_VOICE", "en"))
    if spoken is None:
        return _synthetic(seconds)
    samples, rate = spoken
    pause = np.zeros(int(PAUSE_S * rate), dtype=np.float32)
    reps = int(np.ceil(seconds * rate / (len(samples) + len(pause))))
    return np.concatenate([np.concatenate([samples, pause])] * max(1, reps)), rate


class Media:
    """Speech clips cut from one recording made for the longest clip the run can ask for."""

    def __init__(self, longest_s: float):
        self.longest_s = longest_s

    @property
    def speech_source(self) -> str:
        return "espeak-ng" if shutil.which("espeak-ng") else "synthetic"

    def wav(self, seconds: float) -> bytes:
        """``seconds`` of speech as a 16-bit mono WAV."""
        samples, rate = _speech(max(self.longest_s, seconds))
        cut = np.clip(samples[: int(round(seconds * rate))], -1.0, 1.0)
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(rate)
            handle.writeframes((cut * 32767).astype("<i2").tobytes())
        return buffer.getvalue()

    @staticmethod
    def portrait() -> bytes:
        return portrait_png()
