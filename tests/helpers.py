"""Shared test helpers: tiny weights made once per session, real inputs made by the tests."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from sonic_serve.bench.inputs import synthetic_speech  # shared with the benchmarks; loadtest imports it from here

SESSION_DIR = Path(tempfile.mkdtemp(prefix="sonic-tests-"))


@functools.cache
def tiny_weights(seed: int = 0) -> Path:
    from sonic_core.tiny_weights import make_tiny_weights

    return make_tiny_weights(SESSION_DIR / f"tiny-{seed}", seed=seed)


@functools.cache
def astronaut_png() -> Path:
    import skimage.data

    path = SESSION_DIR / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    return path


@functools.cache
def speech_wav(seconds: float = 2.5) -> Path:
    """espeak-ng speech when available (padded/trimmed to ``seconds``), else synthetic speech."""
    path = SESSION_DIR / f"speech-{seconds}.wav"
    if shutil.which("espeak-ng"):
        raw = SESSION_DIR / "espeak.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), "Welcome to the course. Today we talk about light."],
                       check=True, capture_output=True)
        import librosa

        samples, _ = librosa.load(raw, sr=16000)
        need = int(seconds * 16000)
        samples = np.pad(samples, (0, max(0, need - len(samples))))[:need]
    else:
        samples = synthetic_speech(seconds)
    sf.write(path, samples, 16000, subtype="PCM_16")
    return path
