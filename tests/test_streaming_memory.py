"""Long clips stream: decode -> RIFE -> encode never holds the whole video, so peak memory is flat in length."""

from __future__ import annotations

import subprocess
import sys

import pytest
import soundfile as sf

from tests.helpers import SESSION_DIR, astronaut_png, synthetic_speech, tiny_weights

RUNNER = """
import resource, sys
from sonic_serve.cli import main
code = main(sys.argv[1:])
print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
sys.exit(code)
"""


def peak_rss_mb(seconds: float, tmp_path) -> float:
    audio = SESSION_DIR / f"long-{seconds}.wav"
    sf.write(audio, synthetic_speech(seconds), 16000)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "generate", "--image", str(astronaut_png()), "--audio", str(audio),
         "-o", str(tmp_path / f"long-{seconds}.mp4"), "--weights", str(tiny_weights()),
         "--min-resolution", "64", "--steps", "1"],
        capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.split("PEAK_RSS_MB")[-1])


@pytest.mark.slow
def test_peak_memory_is_flat_in_clip_length(tmp_path):
    short, long = peak_rss_mb(15, tmp_path), peak_rss_mb(180, tmp_path)
    print(f"peak RSS: 15 s clip {short:.0f} MB, 3 min clip {long:.0f} MB")
    # 12x the frames; holding decoded 25 fps frames would add > 500 MB at this size
    assert long - short < 150
