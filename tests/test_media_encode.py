"""MP4 encoding: streams, exact duration, rounding, lip-sync shift, faststart, streaming memory, stills."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from stages.media import EncodeStats, LoadedAudio, Mp4Writer, to_uint8, write_metadata, write_poster
from tests.media_fixtures import synthetic_frames

RATE = 16_000


def tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        info = {
            "codecs": sorted(s.codec_context.name for s in container.streams),
            "duration": container.duration / 1e6,
            "video_duration": float(video.duration * video.time_base),
            "audio_duration": float(audio.duration * audio.time_base),
            "size": (video.codec_context.width, video.codec_context.height),
            "pix_fmt": video.codec_context.pix_fmt,
            "colorspace": video.codec_context.colorspace,
            "fps": float(video.average_rate),
            "audio_rate": audio.rate,
            "audio_channels": audio.codec_context.channels,
        }
        info["frames"] = sum(1 for _ in container.decode(video=0))
    return info


def decoded_audio(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray()[0] for frame in container.decode(stream)]
        return np.concatenate(chunks), stream.rate


@pytest.mark.parametrize("fps, seconds", [(25.0, 3.37), (12.5, 2.0), (25.0, 1.01)])
def test_h264_aac_with_exact_duration(tmp_path, fps, seconds):
    path = tmp_path / "out.mp4"
    audio = LoadedAudio(tone(seconds), 16_000, "wav", seconds)
    with Mp4Writer(path, 128, 96, fps, audio, preset="veryfast") as writer:
        for start in range(0, 40, 16):  # deliberately fewer frames than the audio needs
            writer.write(synthetic_frames(start, 16)[:, :96])
    stats = writer.close()
    expected = round(seconds * fps)
    assert isinstance(stats, EncodeStats) and stats.frames == expected and stats.frames_received == 48
    assert stats.padded_frames == max(0, expected - 48) and stats.dropped_frames == max(0, 48 - expected)
    info = probe(path)
    assert info["codecs"] == ["aac", "h264"] and info["pix_fmt"] == "yuv420p" and info["size"] == (128, 96)
    assert info["frames"] == expected and info["fps"] == fps and info["colorspace"] == 1  # BT.709
    assert info["audio_rate"] == 48_000 and info["audio_channels"] == 1
    assert abs(info["duration"] - seconds) < 1 / fps
    assert abs(info["video_duration"] - seconds) <= 0.5 / fps
    assert abs(info["audio_duration"] - seconds) < 0.025
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # +faststart


def test_out_size_and_even_sides(tmp_path):
    path = tmp_path / "scaled.mp4"
    with Mp4Writer(path, 128, 128, 25.0, tone(0.5), out_size=(257, 199), preset="ultrafast") as writer:
        writer.write(synthetic_frames(0, 13))
    assert writer.close().width == 256 and probe(path)["size"] == (256, 198)
    path = tmp_path / "odd.mp4"
    with Mp4Writer(path, 127, 95, 25.0, tone(0.5), preset="ultrafast") as writer:
        writer.write(synthetic_frames(0, 13)[:, :95, :127])
    assert probe(path)["size"] == (126, 94)


def test_frames_are_rounded_not_truncated():
    values = np.array([0.0, 0.4 / 255, 0.6 / 255, 0.998, 0.999, 1.0, 1.2, -0.1], np.float32)
    assert to_uint8(values).tolist() == [0, 0, 1, 254, 255, 255, 255, 0]
    assert to_uint8(np.array([7], np.uint8)).tolist() == [7]


def test_decoded_frames_match_input(tmp_path):
    path = tmp_path / "fidelity.mp4"
    frames = synthetic_frames(0, 10)
    with Mp4Writer(path, 128, 128, 25.0, tone(0.4), crf=0, preset="ultrafast") as writer:
        writer.write(frames)
    with av.open(str(path)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24", dst_colorspace="itu709")
    # yuv420p halves the chroma resolution, so compare with a tolerance
    assert np.abs(first.astype(np.float32) - to_uint8(frames[0]).astype(np.float32)).mean() < 3.0


@pytest.mark.parametrize("offset", [0.0, 0.04, -0.04])
def test_lipsync_offset_shifts_the_audio(tmp_path, offset):
    samples = np.zeros(2 * RATE, np.float32)
    burst = np.arange(320)
    samples[RATE:RATE + 320] = 0.5 * np.sin(2 * np.pi * 1000 * burst / RATE)  # 20 ms beep at 1.0 s
    path = tmp_path / "shift.mp4"
    with Mp4Writer(path, 64, 64, 25.0, samples, av_offset_s=offset, preset="ultrafast") as writer:
        writer.write(np.zeros((50, 64, 64, 3), np.float32))
    decoded, rate = decoded_audio(path)
    onset = np.argmax(np.abs(decoded) > 0.1) / rate
    assert abs(onset - (1.0 + offset)) < 0.003
    assert abs(probe(path)["audio_duration"] - 2.0) < 0.025  # still the speech's length


def test_abort_and_misuse(tmp_path):
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError), Mp4Writer(path, 64, 64, 25.0, tone(1.0), preset="ultrafast") as writer:
        writer.write(np.zeros((5, 64, 64, 3), np.float32))
        raise RuntimeError("generation failed")
    assert not path.exists()
    with pytest.raises(RuntimeError), Mp4Writer(path, 64, 64, 25.0, tone(0.3), preset="ultrafast") as writer:
        writer.write(np.zeros((8, 64, 64, 3), np.float32))
        writer.close()
        raise RuntimeError("failed after the video was finished")
    assert path.exists()  # a closed, complete file is kept
    path.unlink()
    writer = Mp4Writer(path, 64, 64, 25.0, tone(1.0), preset="ultrafast")
    with pytest.raises(ValueError, match="expected frames"):
        writer.write(np.zeros((5, 32, 64, 3), np.float32))
    with pytest.raises(ValueError, match="before any frame"):
        writer.close()
    assert not path.exists()


def test_poster_and_metadata(tmp_path):
    frame = synthetic_frames(0, 1)[0]
    poster = write_poster(tmp_path / "poster.jpg", frame)
    with Image.open(poster) as image:
        assert image.format == "JPEG" and image.size == (128, 128)
    stats = EncodeStats("a.mp4", 2, 2, 25.0, 1, 0.04, 0.04, 1, 0, 0, 0.0, 10)
    meta = write_metadata(tmp_path / "sub" / "meta.json", {"stats": stats, "seed": np.int64(3),
                                                             "offset": np.float32(0.5), "path": tmp_path})
    loaded = json.loads(meta.read_text())
    assert loaded["stats"]["frames"] == 1 and loaded["seed"] == 3 and loaded["offset"] == 0.5
    assert loaded["path"] == str(tmp_path) and not list((tmp_path / "sub").glob(".*tmp"))


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.slow
def test_streamed_encode_of_three_minutes_has_flat_memory(tmp_path):
    fps, seconds, chunk = 25.0, 180.0, 50
    audio = tone(seconds)
    path = tmp_path / "long.mp4"
    start_rss, peak_rss = resident_mb(), 0.0
    began = time.perf_counter()
    with Mp4Writer(path, 128, 128, fps, audio, preset="ultrafast") as writer:
        for first in range(0, int(seconds * fps), chunk):
            writer.write(synthetic_frames(first, chunk))
            peak_rss = max(peak_rss, resident_mb())
    stats = writer.close()
    elapsed = time.perf_counter() - began
    whole_video_mb = seconds * fps * 128 * 128 * 3 * 4 / 2**20
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nstreamed {stats.frames} frames in {elapsed:.1f} s: RSS {start_rss:.0f} MB at start, "
          f"{peak_rss:.0f} MB peak while encoding (+{peak_rss - start_rss:.0f} MB; the float video would be "
          f"{whole_video_mb:.0f} MB); process ru_maxrss {max_rss_mb:.0f} MB")
    assert stats.frames == 4500 and stats.padded_frames == 0
    assert peak_rss - start_rss < 120
    info = probe(path)
    assert info["frames"] == 4500 and abs(info["duration"] - seconds) < 1 / fps
