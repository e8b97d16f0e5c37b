"""The benchmark commands (``sonic-serve bench ...``) at toy size: each prints a table and a parseable RESULT line
and records its section; the GPU levers compute what the production window step computes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sonic_serve.bench.report import Report, Table, parse_result, record_section, result_line
from tests.helpers import tiny_weights

ROOT = Path(__file__).resolve().parents[1]
EXISTING = """# Benchmarks and measurements

## 2026-11-21 — parity with the reference (CPU, 2 cores, fp32)

| case | max abs difference |
| --- | --- |
| 2.5 s speech | 1.6e-5 |

## Not yet measured

- Any GPU figure.
"""


def _bench(args: list[str], tmp_path: Path, timeout: int = 900) -> tuple[subprocess.CompletedProcess, dict, str]:
    """Run ``sonic-serve bench ...`` in a fresh process (its own Ray, if any); RESULT items and the record."""
    record = tmp_path / "BENCHMARKS.md"
    if not record.exists():
        record.write_text(EXISTING)
    env = dict(os.environ, SONIC_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "sonic_serve.cli", "bench", *args, "--benchmarks-file",
                           str(record)], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return proc, parse_result(proc.stdout), record.read_text()


def test_result_line_and_record_keep_other_sections(tmp_path):
    line = result_line({"a": 1, "b_ms": 0.123456, "ok": True, "list": "1:0.5,2:0.4"})
    assert line == "RESULT a=1 b_ms=0.1235 ok=1 list=1:0.5,2:0.4"
    assert parse_result("x\n" + line) == {"a": "1", "b_ms": "0.1235", "ok": "1", "list": "1:0.5,2:0.4"}
    with pytest.raises(ValueError):
        result_line({"bad key": 1})
    path = tmp_path / "B.md"
    path.write_text(EXISTING)
    table = Table("t", ["x", "y"], [[1, 2.5]])
    record_section(path, "demo", Report("demo", "first", [table], ["n"], {"v": 1}).section(["bench", "demo"]))
    record_section(path, "demo", Report("demo", "second", [table], [], {"v": 2}).section(["bench", "demo"]))
    text = path.read_text()
    assert text.count("<!-- bench:demo -->") == 1 and "second" in text and "first" not in text
    assert "`RESULT v=2`" in text and "| 1 | 2.5 |" in text and "Command: `sonic-serve bench demo`" in text
    assert text.index("parity with the reference") < text.index("bench:demo") < text.index("## Not yet measured")
    assert "1.6e-5" in text and "Any GPU figure." in text


def test_ideal_schedule_and_busy_fraction():
    from sonic_serve.bench.scaling import busy_fraction, ideal_seconds, idle_gaps
    from sonic_serve.bench.simulated_diffusion import SimConfig

    sim = SimConfig(sigmas=[1.0, 0.0], gpu_tflops=95.0, decode_tflop_per_frame=95.0 / 8)   # 1 s per unit
    # 750 frames = 30 windows per step; 94 decode chunks (the last one of 6 frames)
    assert ideal_seconds(750, 2, 1, sim) == pytest.approx(2 * 30 + 93 + 6 / 8)
    # the wavefront has no step barrier: 60 window-steps over 16 replicas, then ceil(94 / 16) decode chunks
    assert ideal_seconds(750, 2, 16, sim) == pytest.approx(2 * 30 / 16 + 6)
    # ... but never shorter than the chain of one window per step
    assert ideal_seconds(750, 2, 64, sim) == pytest.approx(2 + 2)
    rows = [("r1", "window", "j", 0.0, 1.0), ("r1", "window", "j", 1.5, 2.0), ("r2", "window", "j", 0.0, 2.0)]
    assert busy_fraction(rows, 2) == pytest.approx(3.5 / 4)
    assert busy_fraction(rows, 2, since=1.0) == pytest.approx(0.5 / (2 * 0.5))
    assert idle_gaps(rows) == [pytest.approx(0.5)]


def test_simulation_is_used_only_by_the_bench():
    users = []
    for package in ("deployments", "stages", "sonic_core", "sonic_serve"):
        for path in (ROOT / package).rglob("*.py"):
            if "bench" in path.relative_to(ROOT).parts:
                continue
            text = path.read_text()
            if "simulated_diffusion" in text or "sim_app" in text or "SimulatedDiffusion" in text:
                users.append(str(path))
    assert users == []


def test_simulation_stand_ins_have_the_real_signatures():
    """The manager calls the simulated deployments exactly as the real ones: same methods, same parameters."""
    import inspect

    from deployments.diffusion import Diffusion
    from deployments.encoders import AudioEncoder, Fusion, ImageEncoder
    from deployments.postprocess import PostProcess
    from sonic_serve.bench.sim_app import SimAudioEncoder, SimFusion, SimImageEncoder, SimPostProcess
    from sonic_serve.bench.simulated_diffusion import SimulatedDiffusion

    pairs = [(Diffusion, SimulatedDiffusion, ("prepare", "denoise", "decode")), (AudioEncoder, SimAudioEncoder,
             ("encode",)), (ImageEncoder, SimImageEncoder, ("encode",)), (Fusion, SimFusion, ("describe", "fuse")),
             (PostProcess, SimPostProcess, ("run",))]
    for real, sim, methods in pairs:
        assert sim.name == real.name
        for method in methods:
            want = inspect.signature(getattr(real.func_or_class, method)).parameters
            got = inspect.signature(getattr(sim.func_or_class, method)).parameters
            assert list(got) == list(want), (real.name, method)
            assert [p.default for p in got.values()] == [p.default for p in want.values()], (real.name, method)


def test_gpu_levers_compute_the_production_window_step():
    """kv-once, split CFG and explicit-softmax attention give the window step of sonic_core (tiny UNet, fp32)."""
    from sonic_core.models.unet import FaceMask
    from sonic_core.sampler import denoise_window, make_schedule, window_conditioning
    from sonic_core.tiny_weights import SCHEDULER_CONFIG
    from sonic_serve.bench import gpu_variants as gv
    from sonic_serve.bench.gpu import build_models, random_job

    unet, _, cross_dim = build_models(True, "cpu", torch.float32)
    job, latents = random_job(25, 8, cross_dim, "cpu", torch.float32)
    cond = window_conditioning(job, list(range(25)), FaceMask(job.face_mask))
    step = make_schedule(SCHEDULER_CONFIG, 25).steps[3]
    expected = denoise_window(unet, latents, cond, step)
    outputs = {}
    for name, kv_once, math, split in [("kv-once", True, False, False), ("cfg-split", False, False, True),
                                       ("no-sdpa", False, True, False), ("all", True, True, True)]:
        gv.configure(unet, kv_once=kv_once, math_attention=math)
        vcond = gv.context_for(cond, kv_once)
        outputs[name] = (gv.split_cfg_step if split else denoise_window)(unet, latents, vcond, step)
    gv.configure(unet, kv_once=False, math_attention=False)
    assert torch.equal(denoise_window(unet, latents, cond, step), expected)      # configure() restores it
    for name, out in outputs.items():
        assert out.shape == expected.shape
        assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4), (name, (out - expected).abs().max())
    assert not torch.allclose(expected, latents, atol=1e-3)                      # the step did something


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_without_cuda_says_so_and_fails(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sonic_serve.cli", "bench", "gpu", "--benchmarks-file",
                           str(tmp_path / "B.md")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0 and "CUDA is not available" in proc.stderr
    assert "RESULT" not in proc.stdout and not (tmp_path / "B.md").exists()


def test_gpu_toy_on_cpu(tmp_path):
    proc, result, record = _bench(["gpu", "--allow-cpu", "--tiny", "--steps", "1", "--no-compile", "--configs",
                                   "reference,kv-once", "--sampler-steps", "4"], tmp_path)
    assert result["device"] == "cpu" and result["representative"] == "0" and result["tiny"] == "1"
    assert float(result["s_per_video_s"]) > 0 and float(result["peak_tflops"]) > 0
    assert result["best"] in ("reference", "kv-once")
    assert "NOT representative" in proc.stdout and "kv-once" in proc.stdout
    assert "bench:gpu-toy" in record and "not representative" in record and "1.6e-5" in record


def test_memory_toy(tmp_path):
    proc, result, record = _bench(["memory", "--minutes", "0.05,0.1", "--steps", "1", "--weights",
                                   str(tiny_weights())], tmp_path)
    peaks = dict(item.split(":") for item in result["peak_mb"].split(","))
    assert set(peaks) == {"0.05", "0.1"} and all(200 < float(p) < 8000 for p in peaks.values())
    assert float(result["max_peak_mb"]) == pytest.approx(max(float(p) for p in peaks.values()), abs=1)
    assert "slope_mb_per_min" in result and result["flat"] in ("0", "1")
    assert "bench:memory" in record and "Peak RSS" in record


@pytest.mark.ray
@pytest.mark.s3
def test_scaling_simulation_toy(tmp_path):
    proc, result, record = _bench(["scaling", "--replicas", "1,2", "--clip-seconds", "4", "--steps", "2",
                                   "--time-scale", "0.01", "--stream-jobs", "2", "--stream-clip-seconds", "2",
                                   "--stream-gap-s", "0"], tmp_path)
    assert result["simulated"] == "1"
    efficiency = dict(item.split(":") for item in result["efficiency"].split(","))
    assert set(efficiency) == {"1", "2"} and float(efficiency["1"]) == 1.0 and float(efficiency["2"]) > 0
    assert 0 < float(result["busy"]) <= 1.0
    assert "SIMULATION" in proc.stdout and "SIMULATION" in record and "bench:scaling" in record


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.s3
def test_overhead_toy(tmp_path):
    proc, result, record = _bench(["overhead", "--seconds", "2", "--steps", "1", "--min-resolution", "64",
                                   "--probe-units", "6", "--weights", str(tiny_weights())], tmp_path, timeout=1500)
    assert float(result["local_s"]) > 0 and float(result["pipeline_s"]) > 0
    assert 0 < float(result["dispatch_p50_ms"]) <= float(result["dispatch_p95_ms"])
    assert int(result["bytes_per_step"]) == 2 * 25 * 4 * 8 * 8 * 4          # 1 window: slice + result, fp32
    assert "bench:overhead" in record and "dispatch" in record
