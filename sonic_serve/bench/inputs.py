"""Benchmark inputs, made once into a cache folder: tiny weights, the scikit-image astronaut portrait, and speech
of a given length (espeak-ng sentences repeated, else synthetic voiced harmonics)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

RATE = 16000
SENTENCES = ("Welcome to the course. Today we talk about light, lenses and the colours of the sky. "
             "Take notes, and ask questions at the end.")


def cache_dir(override: str | None = None) -> Path:
    if override:
        root = Path(override)
    else:
        home = Path(os.environ.get("SONIC_HOME") or Path.home() / ".sonic-serve").expanduser()
        root = home / "bench"
    root.mkdir(parents=True, exist_ok=True)
    return root


def tiny_weights(root: Path, seed: int = 0) -> Path:
    """Deterministic tiny random weights (``sonic-serve weights make-tiny``) under ``root``, made once."""
    from sonic_core.tiny_weights import make_tiny_weights
    from sonic_core.weights import blocking_problems, verify

    path = root / f"weights-tiny-{seed}"
    if blocking_problems(verify(path)):
        make_tiny_weights(path, seed=seed)
    return path


def astronaut_png(root: Path) -> Path:
    path = root / "astronaut.png"
    if not path.exists():
        import skimage.data
        from PIL import Image

        Image.fromarray(skimage.data.astronaut()).save(path)
    return path


def synthetic_speech(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Voiced, syllable-modulated harmonics: speech-like energy without a TTS engine (also the tests' input)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    return (0.3 * voice * syllables + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def _espeak(seconds: float) -> np.ndarray | None:
    if not shutil.which("espeak-ng"):
        return None
    import librosa

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        done = subprocess.run(["espeak-ng", "-w", str(raw), SENTENCES], capture_output=True)
        if done.returncode != 0 or not raw.exists():
            return None
        samples, _ = librosa.load(raw, sr=RATE)
    need = int(seconds * RATE)
    pause = np.zeros(RATE // 2, np.float32)
    phrase = np.concatenate([samples.astype(np.float32), pause])
    return np.tile(phrase, need // len(phrase) + 1)[:need]


def speech_wav(root: Path, seconds: float) -> Path:
    """A 16 kHz mono WAV of exactly ``seconds`` of speech."""
    import soundfile as sf

    path = root / f"speech-{seconds:g}s.wav"
    if not path.exists():
        samples = _espeak(seconds)
        if samples is None:
            samples = synthetic_speech(seconds)
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, samples, RATE, subtype="PCM_16")
        tmp.replace(path)
    return path
