"""The `sonic-serve` command line: weights commands and single-process generation on tiny weights."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest

from sonic_serve.cli import main
from tests.helpers import astronaut_png, speech_wav, tiny_weights


def test_make_tiny_is_deterministic_and_verifies(tmp_path, capsys):
    assert main(["weights", "make-tiny", str(tmp_path / "a"), "--seed", "5"]) == 0
    assert main(["weights", "make-tiny", str(tmp_path / "b"), "--seed", "5"]) == 0
    a = (tmp_path / "a" / "Sonic" / "audio2token.pth").read_bytes()
    b = (tmp_path / "b" / "Sonic" / "audio2token.pth").read_bytes()
    import torch

    state_a = torch.load(tmp_path / "a" / "Sonic" / "unet.pth", weights_only=True)
    state_b = torch.load(tmp_path / "b" / "Sonic" / "unet.pth", weights_only=True)
    assert len(a) == len(b) and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert main(["weights", "verify", str(tmp_path / "a")]) == 0
    assert "complete tiny random test weights" in capsys.readouterr().out
    (tmp_path / "a" / "Sonic" / "audio2bucket.pth").write_bytes(b"garbage")
    assert main(["weights", "verify", str(tmp_path / "a")]) == 1
    assert "malformed Sonic audio2bucket" in capsys.readouterr().out


def test_generate_writes_mp4_poster_metadata_and_raw_frames(tmp_path, capsys):
    out = tmp_path / "talk.mp4"
    raw = tmp_path / "raw.npy"
    code = main(["generate", "--image", str(astronaut_png()), "--audio", str(speech_wav(2.0)), "-o", str(out),
                 "--weights", str(tiny_weights()), "--min-resolution", "64", "--steps", "2", "--seed", "9",
                 "--raw-frames", str(raw)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "TINY RANDOM weights" in printed
    frames = np.load(raw)
    assert frames.shape == (49, 64, 64, 3) and frames.dtype == np.float32  # 25 frames -> 49 with RIFE
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    with av.open(str(out)) as container:
        kinds = {s.type: s.codec_context.name for s in container.streams}
        duration = container.duration / 1e6
    assert kinds == {"video": "h264", "audio": "aac"}
    assert abs(duration - 2.0) <= 1 / 25 + 0.03
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["tiny_weights"] is True and "noise" in meta["notice"]
    assert meta["parameters"]["steps"] == 2 and meta["fps"] == 25.0
    assert out.with_suffix(".jpg").stat().st_size > 0


@pytest.mark.parametrize(("args", "names"), [
    (["--image", "{audio}", "--audio", "{audio}"], "image:"),
    (["--image", "{image}", "--audio", "{image}"], "audio:"),
    (["--image", "{image}", "--audio", "{audio}", "--face-bbox", "1,2,3"], "face bbox"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, names):
    args = [a.format(image=astronaut_png(), audio=speech_wav(2.0)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "sonic_serve.cli", "generate", *args, "-o", str(tmp_path / "x.mp4"),
                           "--weights", str(tiny_weights())], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sonic-serve: error")]
    assert len(lines) == 1 and names in lines[0]
    assert "Traceback" not in proc.stderr
