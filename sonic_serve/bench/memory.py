"""``sonic-serve bench memory``: peak RSS of single-process generation for clips of several lengths, each in a
fresh subprocess (``ru_maxrss`` of that process), and the slope in MB per minute of clip."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sonic_serve.bench.inputs import astronaut_png, cache_dir, speech_wav, tiny_weights
from sonic_serve.bench.report import Report, Table

TARGET_SLOPE_MB_PER_MIN = 10.0
RUNNER = """
import resource, sys
from sonic_serve.cli import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(code)
"""


def peak_rss_mb(weights: Path, image: Path, audio: Path, out: Path, steps: int, min_resolution: int,
                timeout_s: float = 7200) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of ``sonic-serve generate`` in a fresh Python process."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, "generate", "--image", str(image), "--audio", str(audio), "-o", str(out),
         "--weights", str(weights), "--min-resolution", str(min_resolution), "--steps", str(steps),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"generate failed ({proc.returncode}): {proc.stderr[-2000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("PEAK_RSS_KB")][-1]
    return float(line.split()[1]) / 1024, wall


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    if len(xs) < 2:
        return float("nan")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def run(args: Any) -> Report:
    minutes = sorted({float(x) for x in str(args.minutes).split(",") if x.strip()})
    if not minutes or minutes[0] <= 0:
        raise ValueError("--minutes wants positive clip lengths, e.g. 1,5,10")
    root = cache_dir(args.cache_dir)
    weights = Path(args.weights) if args.weights else tiny_weights(root)
    image = astronaut_png(root)
    table = Table(f"Peak RSS of `sonic-serve generate` per clip length ({args.steps} steps, "
                  f"{args.min_resolution} px, RIFE on, CPU fp32, one fresh process each)",
                  ["clip min", "frames out", "peak RSS MB", "wall s"])
    peaks = []
    with tempfile.TemporaryDirectory(prefix="sonic-bench-memory-") as tmp:
        for m in minutes:
            audio = speech_wav(root, round(m * 60, 3))
            peak, wall = peak_rss_mb(weights, image, audio, Path(tmp) / f"clip-{m:g}.mp4", args.steps,
                                     args.min_resolution)
            peaks.append(peak)
            table.add(m, 2 * ((int(m * 60 * 16000) // 640) // 2) - 1, peak, wall)
    per_min = slope(minutes, peaks)
    decoded_per_min = 1500 * args.min_resolution**2 * 3 * 4 / 1e6    # 25 fps float32 frames, one minute
    flat = len(minutes) < 2 or per_min <= TARGET_SLOPE_MB_PER_MIN
    notes = [
        f"slope {per_min:.2f} MB per minute of clip (least squares); target flat: ≤ {TARGET_SLOPE_MB_PER_MIN:g} "
        f"MB/min: {'met' if flat else 'NOT met'}. For scale: one minute of decoded 25 fps float32 frames at "
        f"this size is {decoded_per_min:.0f} MB, so holding the video would show as a slope of at least that.",
        "What still grows with length by design: the audio samples, Whisper features, per-frame audio tokens "
        "and the latents of the whole clip (kept for the step-to-step merge).",
    ]
    result = {"slope_mb_per_min": round(per_min, 3), "peak_mb": ",".join(f"{m:g}:{p:.0f}" for m, p in
                                                                          zip(minutes, peaks, strict=True)),
              "max_peak_mb": round(max(peaks), 1), "flat": int(flat)}
    return Report("memory", "`bench memory` (tiny weights, single process)", [table], notes, result)
