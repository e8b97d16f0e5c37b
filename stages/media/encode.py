"""Streaming MP4 writer (PyAV, no ffmpeg CLI): H.264 yuv420p + AAC, ``+faststart``, chunk by chunk.

Decisions (see docs/media.md):
* frames float [0, 1] -> ``uint8(clip(round(x * 255)))``, RGB -> BT.709 limited-range yuv420p (tagged BT.709);
  rescaling to ``out_size`` uses Lanczos;
* the file lasts as long as the speech: exactly ``round(duration_s * fps)`` video frames; frames past that are
  dropped, missing ones repeat the last frame;
* AAC-LC mono at 48 kHz (the 16 kHz samples resampled by libswresample), because every player and social
  platform takes 48 kHz;
* the lip-sync offset moves the audio on the video's clock: positive delays it (leading silence), negative
  drops its first samples; the audio track keeps the speech's length (cut or padded with silence at the end).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter
from PIL import Image

from sonic_core.audio import SAMPLE_RATE
from stages.media.audio_in import LoadedAudio
from stages.media.framing import keep_resolution_size

AUDIO_RATE = 48_000
AUDIO_BITRATE = 64_000  # mono speech; 128k costs ~2x the encoder time for no audible gain
_AUDIO_CHUNK = 8192
_BT709 = 1  # AVCOL_SPC/PRI/TRC_BT709
_SCALER = Interpolation.LANCZOS | Interpolation.ACCURATE_RND


@dataclass
class EncodeStats:
    path: str
    width: int
    height: int
    fps: float
    frames: int              # video frames in the file
    duration_s: float        # frames / fps
    audio_duration_s: float  # the speech's length
    frames_received: int
    padded_frames: int
    dropped_frames: int
    av_offset_s: float
    bytes: int


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 by rounding (not truncating); uint8 passes through."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.round(frames.astype(np.float32, copy=False) * 255.0), 0, 255).astype(np.uint8)


class Mp4Writer:
    """``with Mp4Writer(path, w, h, fps, audio) as out: out.write(chunk)`` ... ; ``close()`` returns
    :class:`EncodeStats`. Holds one frame and one audio chunk at a time, never the whole video."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float,
                 audio: LoadedAudio | np.ndarray, crf: int = 18, out_size: tuple[int, int] | None = None,
                 av_offset_s: float = 0.0, preset: str = "medium", audio_bitrate: int = AUDIO_BITRATE):
        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        samples = audio.samples if isinstance(audio, LoadedAudio) else audio
        self._samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        if self._samples.size == 0 or self.fps <= 0:
            raise ValueError("Mp4Writer needs a positive fps and non-empty audio")
        self.audio_duration_s = self._samples.size / SAMPLE_RATE
        self.target_frames = max(1, round(self.audio_duration_s * self.fps))
        self.av_offset_s = float(av_offset_s)
        self._shift = int(round(self.av_offset_s * SAMPLE_RATE))
        self.out_w, self.out_h = keep_resolution_size(*(out_size or (self.width, self.height)))
        self._received = self._written = self._padded = self._audio_pos = 0
        self._last: np.ndarray | None = None
        self._scaler = VideoReformatter()  # one cached swscale context, not one per frame
        self._stats: EncodeStats | None = None

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w", format="mp4", options={"movflags": "+faststart"})
        try:
            video = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            video.width, video.height, video.pix_fmt = self.out_w, self.out_h, "yuv420p"
            video.options = {"crf": str(crf), "preset": preset}
            ctx = video.codec_context
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
            ctx.color_range = int(ColorRange.MPEG)
            sound = self._container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
            sound.bit_rate = audio_bitrate
            self._video, self._audio = video, sound
        except Exception:
            self._abort()
            raise

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._stats is None:  # a file already closed stays: it is complete
            self._abort()

    def write(self, frames: np.ndarray) -> None:
        """Append frames [n, H, W, 3] (or one [H, W, 3]) float32 in [0, 1] (uint8 also accepted)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"expected frames [n, {self.height}, {self.width}, 3], got {list(frames.shape)}")
        for frame in frames:
            self._received += 1
            if self._written < self.target_frames:
                self._encode_frame(to_uint8(frame))
        self._pump_audio(self._audio_until(self._written))

    def _encode_frame(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame = self._scaler.reformat(frame, self.out_w, self.out_h, "yuv420p", dst_colorspace=Colorspace.ITU709,
                                      interpolation=_SCALER, src_color_range=ColorRange.JPEG,
                                      dst_color_range=ColorRange.MPEG, threads=1)
        frame.pts = self._written
        self._container.mux(self._video.encode(frame))
        self._written += 1
        self._last = rgb

    def _audio_until(self, frames: int) -> int:
        return min(self._samples.size, round(frames * SAMPLE_RATE / self.fps))

    def _audio_slice(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` of the speech moved by the lip-sync offset (silence where none)."""
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start - self._shift, 0), min(stop - self._shift, self._samples.size)
        if hi > lo:
            out[lo + self._shift - start:hi + self._shift - start] = self._samples[lo:hi]
        return out

    def _pump_audio(self, until: int) -> None:
        while self._audio_pos < until:
            stop = min(until, self._audio_pos + _AUDIO_CHUNK)
            frame = av.AudioFrame.from_ndarray(self._audio_slice(self._audio_pos, stop)[None], format="flt",
                                               layout="mono")
            frame.sample_rate, frame.time_base = SAMPLE_RATE, Fraction(1, SAMPLE_RATE)
            frame.pts = self._audio_pos
            self._container.mux(self._audio.encode(frame))
            self._audio_pos = stop

    def close(self) -> EncodeStats:
        """Pad to the speech's length, flush both encoders, finish the file (moov moved to the front)."""
        if self._stats is not None:
            return self._stats
        if self._last is None:
            self._abort()
            raise ValueError("Mp4Writer closed before any frame was written")
        try:
            while self._written < self.target_frames:
                self._encode_frame(self._last)
                self._padded += 1
            self._container.mux(self._video.encode(None))
            self._pump_audio(self._samples.size)
            self._container.mux(self._audio.encode(None))
            self._container.close()
        except Exception:
            self._abort()
            raise
        self._stats = EncodeStats(
            path=str(self.path), width=self.out_w, height=self.out_h, fps=self.fps, frames=self._written,
            duration_s=self._written / self.fps, audio_duration_s=self.audio_duration_s,
            frames_received=self._received, padded_frames=self._padded,
            dropped_frames=max(0, self._received - (self._written - self._padded)),
            av_offset_s=self.av_offset_s, bytes=self.path.stat().st_size)
        return self._stats

    def _abort(self) -> None:
        """Drop a half-written file."""
        with contextlib.suppress(Exception):  # already failing; the partial file goes anyway
            self._container.close()
        self.path.unlink(missing_ok=True)


def _atomic_write(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_poster(path: str | Path, frame: np.ndarray, quality: int = 90) -> Path:
    """One frame [H, W, 3] (float [0, 1] or uint8) as a JPEG still."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(frame), "RGB").save(buffer, format="JPEG", quality=quality)
    return _atomic_write(path, buffer.getvalue())


def write_metadata(path: str | Path, metadata: dict[str, Any]) -> Path:
    """``metadata`` as pretty JSON (dataclasses, paths and numpy values converted)."""
    def default(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return asdict(value)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        return str(value)

    text = json.dumps(metadata, indent=2, sort_keys=True, default=default, ensure_ascii=False) + "\n"
    return _atomic_write(path, text.encode())
