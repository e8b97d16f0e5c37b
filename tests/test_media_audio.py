"""Audio upload decoding: every accepted format, content sniffing, reference numerics, rejections."""

from __future__ import annotations

import pickle
import shutil

import librosa
import numpy as np
import pytest
from scipy.signal import correlate

from sonic_core.audio import SAMPLE_RATE
from stages.media import LoadedAudio, MediaError, load_audio, sniff_audio
from tests.media_fixtures import damaged_copies, make_audio_set, synth_speech, write_wav


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    return make_audio_set(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def reference(audio_files) -> np.ndarray:
    return librosa.load(audio_files["wav"], sr=SAMPLE_RATE)[0]


def best_alignment(a: np.ndarray, b: np.ndarray, max_lag: int = 2000) -> float:
    """Highest normalised cross-correlation of ``a`` and ``b`` within +-``max_lag`` samples."""
    n = min(a.size, b.size)
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    full = correlate(a, b, mode="full", method="fft")
    mid = n - 1
    return float(full[mid - max_lag:mid + max_lag + 1].max() / np.sqrt((a @ a) * (b @ b)))


@pytest.mark.parametrize("name, fmt, rate", [
    ("wav", "wav", 22050), ("mp3", "mp3", 44100), ("m4a", "m4a", 44100), ("aac", "aac", 22050),
    ("opus", "ogg/opus", 48000), ("flac", "flac", 22050), ("wav8k", "wav", 8000), ("wav11k", "wav", 11025),
    ("stereo44k", "wav", 44100),
])
def test_every_format_decodes_to_16k_mono(audio_files, reference, name, fmt, rate):
    loaded = load_audio(audio_files[name])
    assert isinstance(loaded, LoadedAudio)
    assert loaded.source_format == fmt and loaded.source_rate == rate
    assert loaded.samples.dtype == np.float32 and loaded.samples.ndim == 1
    assert loaded.sample_rate == SAMPLE_RATE
    assert loaded.duration_s == pytest.approx(loaded.samples.size / SAMPLE_RATE)
    # ADTS cannot carry the encoder delay, so raw AAC keeps ~50 ms of priming/padding
    assert loaded.duration_s == pytest.approx(reference.size / SAMPLE_RATE, abs=0.08)
    assert best_alignment(loaded.samples, reference) > (0.8 if rate < 16000 else 0.9)
    assert (rate < SAMPLE_RATE) == any("below 16000 Hz" in w for w in loaded.warnings)


def test_wav_is_bit_identical_to_librosa(audio_files, reference):
    assert np.array_equal(load_audio(audio_files["wav"]).samples, reference)
    assert np.array_equal(load_audio(audio_files["wav"].read_bytes()).samples, reference)
    stereo = audio_files["stereo44k"]
    assert np.array_equal(load_audio(stereo).samples, librosa.load(stereo, sr=SAMPLE_RATE)[0])
    assert load_audio(stereo).source_channels == 2


def test_flac_is_lossless(audio_files, reference):
    assert np.array_equal(load_audio(audio_files["flac"]).samples, reference)


def test_sniffs_content_not_extension(audio_files, tmp_path):
    cases = {"mp3": "voice.wav", "opus": "voice.mp3", "wav": "voice.m4a", "m4a": "voice.ogg"}
    for name, fake in cases.items():
        target = tmp_path / fake
        shutil.copy(audio_files[name], target)
        assert load_audio(target).source_format == load_audio(audio_files[name]).source_format
    assert load_audio(audio_files["m4a"].read_bytes()).source_format == "m4a"


@pytest.mark.parametrize("head, fmt", [
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav"), (b"fLaC\x00\x00\x00\x22", "flac"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
    (b"\xff\xfb\x90\x64", "mp3"), (b"\xff\xf1\x50\x80", "aac"), (b"\x00\x00\x00\x20ftypM4A ", "m4a"),
    (b"OggS\x00\x02" + b"\x00" * 22 + b"OpusHead", "ogg/opus"),
])
def test_sniff_audio(head, fmt):
    assert sniff_audio(head) == fmt


def test_duration_override_trims_and_pads(audio_files, reference):
    short = load_audio(audio_files["wav"], duration_s=1.5)
    assert short.samples.size == 24_000 and short.duration_s == 1.5
    assert np.array_equal(short.samples, reference[:24_000])
    assert any("cut" in w for w in short.warnings)
    long = load_audio(audio_files["wav"], duration_s=8.0)
    assert long.samples.size == 128_000 and long.duration_s == 8.0
    assert np.array_equal(long.samples[:reference.size], reference)
    assert not long.samples[reference.size:].any()
    assert any("padded" in w for w in long.warnings)


def expect_rejection(source, field="audio", match="", **kwargs) -> MediaError:
    with pytest.raises(MediaError) as info:
        load_audio(source, **kwargs)
    err = info.value
    assert err.field == field and str(err).startswith(f"{field}: ") and ". Fix: " in str(err)
    assert "\n" not in str(err) and match.lower() in str(err).lower()
    return err


@pytest.mark.badinput
def test_rejects_bad_audio(tmp_path, audio_files):
    rng = np.random.default_rng(0)
    expect_rejection(b"", match="empty")
    expect_rejection(rng.bytes(5000), match="unknown type")
    expect_rejection(b"hello, this is not audio at all\n" * 20, match="unknown type")
    expect_rejection(b"\x89PNG\r\n\x1a\n" + bytes(100), match="PNG image")
    expect_rejection(b"\x1aE\xdf\xa3" + bytes(100), match="WebM")
    expect_rejection(tmp_path / "missing.wav", match="no file")
    wav = audio_files["wav"].read_bytes()
    expect_rejection(wav[:44], match="no audio samples")  # header only
    expect_rejection(b"\x00\x00\x00\x20ftypM4A " + rng.bytes(3000), match="could not be decoded")
    m4a = audio_files["m4a"].read_bytes()
    expect_rejection(m4a[:len(m4a) // 3], match="could not be decoded")


@pytest.mark.badinput
def test_rejects_silence_short_and_long(tmp_path):
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16_000, np.float32), 16_000)
    expect_rejection(silent, match="silent")
    hiss = write_wav(tmp_path / "hiss.wav", np.full(16_000, 5e-5, np.float32), 16_000, subtype="FLOAT")
    expect_rejection(hiss, match="silent")
    short = write_wav(tmp_path / "short.wav", synth_speech(0.15, 16_000), 16_000)
    expect_rejection(short, match="0.150 s")
    two_s = write_wav(tmp_path / "two.wav", synth_speech(2.0, 16_000), 16_000)
    expect_rejection(two_s, max_seconds=1.0, match="over the 1 s limit")
    assert load_audio(two_s, max_seconds=3.0).duration_s == 2.0
    err = expect_rejection(two_s, field="duration_s", duration_s=0.05)
    assert "duration_s" in err.message
    expect_rejection(two_s, field="duration_s", duration_s=5000.0)
    nan = write_wav(tmp_path / "nan.wav", np.full(16_000, np.nan, np.float32), 16_000, subtype="FLOAT")
    expect_rejection(nan, match="NaN")


@pytest.mark.badinput
@pytest.mark.parametrize("name", ["wav", "mp3", "m4a", "opus", "flac"])
def test_damaged_files_load_or_raise_media_error(audio_files, name):
    for damaged in damaged_copies(audio_files[name].read_bytes(), 9):
        try:
            loaded = load_audio(damaged)
        except MediaError as err:
            assert err.field == "audio"
        else:
            assert loaded.samples.size and np.isfinite(loaded.samples).all()


def test_media_error_shape_and_pickle():
    err = MediaError("audio", "the file is empty.", "upload speech.")
    assert str(err) == "audio: the file is empty. Fix: upload speech"
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.field, copy.message, copy.fix, str(copy)) == (err.field, err.message, err.fix, str(err))
    assert err.to_dict() == {"field": "audio", "message": "the file is empty", "fix": "upload speech"}
