"""Speech upload -> float32 mono 16 kHz samples, with the reference's numerics where it matters.

The type is sniffed from the bytes, never from the file name. Content that libsndfile reads (WAV, FLAC, Ogg,
MP3) is decoded and resampled exactly as ``librosa.load(path, sr=16000)`` does (libsndfile float32 read,
channel mean, ``soxr_hq``), so a WAV gives bit-identical samples to the reference. Everything else (M4A/MP4,
ADTS AAC, or a file libsndfile refuses) is decoded by PyAV and then mixed and resampled the same way.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import av
import librosa
import numpy as np
import soundfile as sf

from sonic_core.audio import SAMPLE_RATE
from stages.media.errors import MediaError

MAX_SECONDS = 1800.0
MIN_SECONDS = 0.2
SILENCE_PEAK = 1e-4
QUIET_PEAK = 0.01            # -40 dBFS: audible, but the speech features get weak
MIN_SAMPLE_RATE = 4000       # below this no speech survives (telephone audio is 8 kHz)
MAX_SAMPLE_RATE = 384_000
CLIP_LEVEL = 0.999
CLIP_FRACTION = 0.01         # more than 1% of samples at full scale: audibly clipped
CUT_SLACK_S = 0.25           # decoded shorter than the header says by more than this: the file was cut
_EXACT_LENGTH = ("wav", "flac", "m4a")  # containers whose header states the exact length
ACCEPTED = "WAV, MP3, M4A/AAC, OGG/Opus or FLAC"
_SNIFF_BYTES = 4096
_SOUNDFILE_FORMATS = {"wav", "flac", "ogg/opus", "ogg/vorbis", "ogg/flac", "ogg", "mp3"}
_OGG_CODECS = ((b"OpusHead", "ogg/opus"), (b"\x01vorbis", "ogg/vorbis"), (b"\x7fFLAC", "ogg/flac"))
_HEADER_SLACK_S = 1.0  # headers of VBR streams may estimate the length; the decoded length decides


@dataclass
class LoadedAudio:
    """Decoded speech: ``samples`` float32 mono at 16 kHz, plus what the upload was."""

    samples: np.ndarray
    source_rate: int
    source_format: str
    duration_s: float
    warnings: list[str] = field(default_factory=list)
    source_channels: int = 1

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE


def _not_audio(kind: str) -> MediaError:
    return MediaError("audio", f"the upload is {kind}, not a supported audio file",
                      f"send speech as {ACCEPTED}")


def id3_size(head: bytes) -> int:
    """Bytes taken by a leading ID3v2 tag (0 when there is none)."""
    if head[:3] != b"ID3" or len(head) < 10:
        return 0
    size = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F)
    return size + (10 if head[5] & 0x10 else 0)


def sniff_audio(head: bytes) -> str:
    """Name the audio container from its first bytes (past any ID3 tag); :class:`MediaError` otherwise."""
    if head[:3] == b"ID3" and len(head) >= 10:
        rest = head[id3_size(head):]
        if rest[:4] == b"fLaC":
            return "flac"
        return "aac" if len(rest) >= 2 and rest[0] == 0xFF and rest[1] & 0xF6 == 0xF0 else "mp3"
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        for marker, name in _OGG_CODECS:
            if marker in head[:128]:
                return name
        return "ogg"
    if head[4:8] == b"ftyp":
        if head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"hevc"):
            raise _not_audio("a HEIC/AVIF image")
        return "m4a"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
            return "mp3"
    kinds = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
             b"\x1aE\xdf\xa3": "WebM/Matroska", b"%PDF": "a PDF document"}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            raise _not_audio(kind)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise _not_audio("a WebP image")
    raise _not_audio("of an unknown type")


def _check_rate(rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise MediaError("audio", f"the sample rate is {rate} Hz, outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz "
                         "(not a speech recording, or a damaged header)",
                         f"re-export the speech at 16, 44.1 or 48 kHz as {ACCEPTED}")


def _decode_soundfile(source: str | io.BytesIO, max_seconds: float) -> tuple[np.ndarray, int, int, float]:
    """``librosa.core.audio.__soundfile_load`` without offset/duration: ``[channels, n]`` or ``[n]``, the rate,
    the channels and the length the header announces (s)."""
    with sf.SoundFile(source) as handle:
        _check_rate(handle.samplerate)
        announced = handle.frames / handle.samplerate
        if announced > max_seconds + _HEADER_SLACK_S:
            raise _too_long(announced, max_seconds)
        y = handle.read(frames=-1, dtype=np.float32, always_2d=False).T
        return y, handle.samplerate, handle.channels, announced


def _decode_pyav(source: str | io.BytesIO, max_seconds: float) -> tuple[np.ndarray, int, int, float | None]:
    """First audio stream as float32 ``[channels, n]`` at its own rate, and the container's length (s)."""
    with av.open(source, "r") as container:
        if not container.streams.audio:
            raise MediaError("audio", "the file has no audio track", f"send speech as {ACCEPTED}")
        stream = container.streams.audio[0]
        _check_rate(stream.rate)
        announced = container.duration / 1e6 if container.duration else None
        if container.duration and container.duration / 1e6 > max_seconds + _HEADER_SLACK_S:
            raise _too_long(container.duration / 1e6, max_seconds)
        rate, layout = stream.rate, stream.layout.name
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        chunks, total = [], 0
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                chunks.append(converted.to_ndarray())
                total += converted.samples
            if total > (max_seconds + _HEADER_SLACK_S) * rate:
                raise _too_long(total / rate, max_seconds)
        chunks.extend(c.to_ndarray() for c in resampler.resample(None))
    if not chunks:
        return np.zeros(0, np.float32), rate, stream.channels, announced
    y = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    return (y[0] if y.shape[0] == 1 else y), rate, y.shape[0], announced


def wav_announced_s(head: bytes) -> float | None:
    """Seconds of audio the data chunk of a RIFF WAV header announces; None when unknown or streamed
    (size 0 or 0xFFFFFFFF, RF64) or past the bytes given."""
    pos, rate, block = 12, 0, 0
    while pos + 8 <= len(head):
        kind, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if kind == b"fmt " and size >= 16 and pos + 22 <= len(head):
            _, _, rate, _, block = struct.unpack("<HHIIH", head[pos + 8:pos + 22])
        elif kind == b"data":
            return size / block / rate if rate and block and size not in (0, 0xFFFFFFFF) else None
        pos += 8 + size + (size & 1)
    return None


def _level_warnings(y: np.ndarray) -> list[str]:
    """Clipping, judged on the source samples (resampling overshoots the rails)."""
    clipped = float(np.count_nonzero(np.abs(y) >= CLIP_LEVEL)) / max(1, y.size)
    if clipped > CLIP_FRACTION:
        return [f"the recording is clipped ({100 * clipped:.0f}% of samples at full scale): distorted speech "
                "may move the lips less precisely; record or export it at a lower level"]
    return []


def _too_long(seconds: float, max_seconds: float) -> MediaError:
    return MediaError("audio", f"the recording is {seconds:.1f} s long, over the {max_seconds:.0f} s limit",
                      f"trim it to at most {max_seconds:.0f} s or split it into several requests")


def _corrupt(fmt: str, exc: Exception) -> MediaError:
    return MediaError("audio", f"the {fmt.upper()} file could not be decoded ({type(exc).__name__}: {exc})",
                      f"re-export the recording as {ACCEPTED}")


def load_audio(source: str | Path | bytes, *, max_seconds: float = MAX_SECONDS,
               duration_s: float | None = None) -> LoadedAudio:
    """Decode ``source`` (a path or the raw bytes) to 16 kHz mono float32.

    Rejects (:class:`MediaError`, field ``audio``) empty, unsupported, undecodable, all-silent (peak below
    1e-4 once any DC offset is removed), shorter than 0.2 s and longer than ``max_seconds`` recordings, and
    sample rates outside 4-384 kHz. Clipped, very quiet and cut-off (shorter than their header says)
    recordings are accepted with a warning. ``duration_s`` (field
    ``duration_s``) sets the output length: shorter trims the end, longer pads with trailing silence.
    """
    data: bytes | None = None
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        head = data[:max(_SNIFF_BYTES, id3_size(data) + 16)]
    else:
        path = Path(source)
        if not path.is_file():
            raise MediaError("audio", f"no file at {path}", "check the path or upload the recording again")
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
            if id3_size(head) > _SNIFF_BYTES - 16:  # cover art in the tag: look past it
                head += handle.read(id3_size(head) + 16 - len(head))

    def opener() -> str | io.BytesIO:  # a fresh reader per decoder attempt
        return io.BytesIO(data) if data is not None else str(path)
    if not head:
        raise MediaError("audio", "the file is empty (0 bytes)", f"upload a speech recording as {ACCEPTED}")
    if duration_s is not None and not MIN_SECONDS <= duration_s <= max_seconds:
        raise MediaError("duration_s", f"duration_s={duration_s} is outside {MIN_SECONDS}-{max_seconds:.0f}s",
                         "leave duration_s unset to use the recording's length, or pick a value in range")
    fmt = sniff_audio(head)

    y, announced = None, None
    if fmt in _SOUNDFILE_FORMATS:
        try:
            y, rate, channels, announced = _decode_soundfile(opener(), max_seconds)
        except (MediaError, MemoryError):
            raise
        except Exception:  # libsndfile refused it: PyAV may still read it
            y = None
    if y is None:
        try:
            y, rate, channels, announced = _decode_pyav(opener(), max_seconds)
        except (MediaError, MemoryError):
            raise
        except Exception as exc:  # untrusted bytes: any decoder failure is the upload's fault
            raise _corrupt(fmt, exc) from exc

    if y.size == 0:
        raise MediaError("audio", f"the {fmt.upper()} file holds no audio samples",
                         "check that the recording is not empty and export it again")
    if not np.isfinite(y).all():
        raise MediaError("audio", "the audio holds NaN or infinite samples", "re-export it as 16-bit PCM WAV")
    if y.shape[-1] / rate < MIN_SECONDS:
        raise MediaError("audio", f"the recording is only {y.shape[-1] / rate:.3f} s long",
                         f"send at least {MIN_SECONDS} s of speech")
    if y.shape[-1] / rate > max_seconds:
        raise _too_long(y.shape[-1] / rate, max_seconds)

    warnings = _level_warnings(y)
    samples = librosa.resample(librosa.to_mono(y), orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    peak = float(np.abs(samples - samples.mean()).max())  # a constant DC offset is no sound either
    if peak < SILENCE_PEAK:
        raise MediaError("audio", "the recording is silent (peak level below 1e-4)",
                         "check the microphone and upload a recording with audible speech")
    if peak < QUIET_PEAK:
        warnings.append(f"the recording is very quiet (peak {20 * np.log10(peak):.0f} dBFS): lip motion may be "
                        "weak; normalise it to about -3 dBFS")
    if fmt == "wav":
        announced = wav_announced_s(head)
    decoded = y.shape[-1] / rate
    if fmt in _EXACT_LENGTH and announced and announced - decoded > max(CUT_SLACK_S, 0.02 * announced):
        warnings.append(f"the {fmt.upper()} file seems cut off: its header announces {announced:.2f} s but only "
                        f"{decoded:.2f} s could be decoded; upload the complete file if speech is missing")
    if rate < SAMPLE_RATE:
        warnings.append(f"audio sample rate is {rate} Hz, below {SAMPLE_RATE} Hz: it was upsampled and lip "
                        "sync may be less precise; record at 16 kHz or more")
    if duration_s is not None:
        target = int(round(duration_s * SAMPLE_RATE))
        if target < samples.size:
            warnings.append(f"audio cut from {samples.size / SAMPLE_RATE:.2f} s to duration_s={duration_s}")
            samples = samples[:target].copy()
        elif target > samples.size:
            warnings.append(f"audio padded with silence from {samples.size / SAMPLE_RATE:.2f} s "
                            f"to duration_s={duration_s}")
            samples = np.concatenate([samples, np.zeros(target - samples.size, np.float32)])
    return LoadedAudio(samples=samples, source_rate=int(rate), source_format=fmt, warnings=warnings,
                       duration_s=samples.size / SAMPLE_RATE, source_channels=int(channels))
