"""Stage 4: RIFE interpolation per chunk, lip-sync estimation, H.264/AAC encode and mux."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sonic_core.decode import interpolate_chunk
from sonic_core.face import FaceBox
from sonic_core.weights import WeightsLayout, load_rife
from stages.media.audio_in import LoadedAudio
from stages.media.encode import EncodeStats, Mp4Writer, write_poster
from stages.media.lipsync import clamp_offset, estimate_av_offset

LIPSYNC_PROBE_S = 8.0   # frames buffered (float16) to estimate the offset before encoding starts
LIPSYNC_SEARCH_S = 0.1
LIPSYNC_APPLY_LIMIT_S = 0.05


def to_hwc(frames: torch.Tensor) -> np.ndarray:
    """[n, 3, H, W] float tensor -> [n, H, W, 3] float32 array."""
    return frames.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32, copy=False)


def mouth_box(face: FaceBox, framed_size: tuple[int, int], video_size: tuple[int, int]) -> tuple[float, ...]:
    """The lower-middle part of the face box, mapped from the framed image into video pixels."""
    sx, sy = video_size[0] / framed_size[0], video_size[1] / framed_size[1]
    return ((face.x + 0.25 * face.w) * sx, (face.y + 0.6 * face.h) * sy,
            (face.x + 0.75 * face.w) * sx, (face.y + 0.95 * face.h) * sy)


@dataclass
class EncodeResult:
    stats: EncodeStats
    lip_sync_estimate_s: float | None
    lip_sync_applied_s: float


def encode_stream(chunks: Iterable[np.ndarray], output: Path, size: tuple[int, int], fps: float,
                  audio: LoadedAudio, *, crf: int = 18, out_size: tuple[int, int] | None = None,
                  poster: Path | None = None, lip_sync_box: tuple[float, ...] | None = None) -> EncodeResult:
    """Encode [n, H, W, 3] float chunks in order. With ``lip_sync_box``, the first ``LIPSYNC_PROBE_S`` seconds
    are buffered to estimate the audio/video offset (within ±0.1 s), which is applied at mux time clamped to
    ±0.05 s. Memory stays bounded whatever the clip length."""
    iterator = iter(chunks)
    buffered: list[np.ndarray] = []
    estimate = None
    if lip_sync_box is not None:
        probe_frames = int(LIPSYNC_PROBE_S * fps)
        while sum(len(c) for c in buffered) < probe_frames:
            chunk = next(iterator, None)
            if chunk is None:
                break
            buffered.append(chunk.astype(np.float16))
        if buffered:
            probe = np.concatenate(buffered).astype(np.float32)
            estimate = estimate_av_offset(probe, fps, audio.samples[: int(len(probe) / fps * 16000)],
                                          lip_sync_box, max_offset_s=LIPSYNC_SEARCH_S)
    applied = clamp_offset(estimate, LIPSYNC_APPLY_LIMIT_S) if estimate is not None else 0.0
    first = True
    with Mp4Writer(output, size[0], size[1], fps, audio, crf=crf, out_size=out_size, av_offset_s=applied) as writer:
        for chunk in itertools.chain(buffered, iterator):
            chunk = np.asarray(chunk, dtype=np.float32)
            if first and poster is not None:
                write_poster(poster, chunk[0])
            first = False
            writer.write(chunk)
        stats = writer.close()
    return EncodeResult(stats, estimate, applied)


class PostProcessStage:
    def __init__(self, weights: str | Path, device: str = "cpu"):
        self.rife = load_rife(WeightsLayout(Path(weights)), device)

    def display_chunks(self, decoded: Iterable[torch.Tensor], interpolate: bool) -> Iterator[np.ndarray]:
        """Decoded chunks in order -> [n, H, W, 3] float32 chunks at display rate. With interpolation, each chunk
        after the first is interpolated together with the previous chunk's last frame."""
        previous_last: torch.Tensor | None = None
        for frames in decoded:
            if interpolate:
                overlaps = previous_last is not None
                batch = torch.cat([previous_last, frames]) if overlaps else frames
                previous_last = frames[-1:]
                frames = self.interpolate(batch, overlaps_previous=overlaps)
            yield to_hwc(frames)

    def interpolate(self, frames: torch.Tensor, overlaps_previous: bool) -> torch.Tensor:
        """RIFE on one decoded chunk. A chunk that starts with the previous chunk's last frame (one-frame
        overlap) returns its output without that shared frame."""
        out = interpolate_chunk(self.rife, frames)
        return out[1:] if overlaps_previous else out
