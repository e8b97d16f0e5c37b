"""``sonic-serve bench``: overhead, scaling (simulation), memory and GPU benchmarks.

Each command prints a table and ends with one ``RESULT key=value ...`` line, and records a dated section (machine,
command line) in BENCHMARKS.md unless ``--no-record``. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
from typing import Any

COMMANDS = ("overhead", "scaling", "memory", "gpu")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-record", action="store_true", help="do not write the section into BENCHMARKS.md")
    p.add_argument("--benchmarks-file", default="BENCHMARKS.md", help="where to record (default ./BENCHMARKS.md)")
    p.add_argument("--cache-dir", help="tiny weights and inputs (default $SONIC_HOME/bench)")


def _command_line(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> list[str]:
    """The argv that reproduces ``args``, every option spelled out (defaults may change), for the record."""
    argv = ["bench", name]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "benchmarks_file", "no_record", "cache_dir"):
            continue
        value = getattr(args, action.dest, None)
        option = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            if value != action.default:
                argv.append(option)
        elif value is not None:
            argv += [option, str(value)]
    return argv


def _runner(name: str, parser: argparse.ArgumentParser):
    def run(args: argparse.Namespace) -> int:
        import importlib

        from sonic_serve.bench.report import finish, load_average

        load = load_average()
        module: Any = importlib.import_module(f"sonic_serve.bench.{name}")
        report = module.run(args)
        finish(report, args, _command_line(parser, args, name), load)
        return int(getattr(report, "exit_code", 0))

    return run


def register(subparsers) -> None:
    """Add ``bench {overhead,scaling,memory,gpu}`` to the ``sonic-serve`` command tree."""
    bench = subparsers.add_parser("bench", help="benchmarks: overhead, scaling (simulated), memory, gpu")
    sub = bench.add_subparsers(dest="bench_command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True

    p = sub.add_parser("overhead", help="one tiny job in one process vs through the Serve pipeline")
    p.add_argument("--seconds", type=float, default=6.0, help="speech length (default 6 s: 3 windows per step)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--min-resolution", type=int, default=128, dest="min_resolution")
    p.add_argument("--diffusion-replicas", type=int, default=1, dest="diffusion_replicas",
                   help="Diffusion replicas of the pipeline (default 1: the same compute as the single process)")
    p.add_argument("--probe-units", type=int, default=40, dest="probe_units",
                   help="window units sent one at a time to measure dispatch latency")
    p.add_argument("--weights", help="weights root (default: tiny random weights in the cache dir)")
    _common(p)
    p.set_defaults(func=_runner("overhead", p))

    p = sub.add_parser("scaling", help="SIMULATION: real manager + dispatcher over simulated Diffusion replicas")
    p.add_argument("--replicas", default="1,2,4,8,16", help="comma-separated replica counts")
    p.add_argument("--clip-seconds", type=float, default=60.0, dest="clip_seconds")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--min-resolution", type=int, default=512, dest="min_resolution")
    p.add_argument("--gpu-tflops", type=float, default=400.0, dest="gpu_tflops",
                   help="effective TFLOP/s of one replica's GPU (default 400)")
    p.add_argument("--time-scale", type=float, default=1.0, dest="time_scale",
                   help="multiply every modelled unit time (0.01: quick; overheads are not scaled)")
    p.add_argument("--repeat", type=int, default=1, help="runs per replica count; the fastest one counts")
    p.add_argument("--stream-jobs", type=int, default=8, dest="stream_jobs",
                   help="jobs in the busy-fraction stream, at the largest replica count (0: skip)")
    p.add_argument("--stream-clip-seconds", type=float, default=20.0, dest="stream_clip_seconds")
    p.add_argument("--stream-gap-s", type=float, default=2.0, dest="stream_gap_s",
                   help="seconds between stream arrivals (before time scaling)")
    p.add_argument("--queue-per-replica", type=int, default=None, dest="queue_per_replica",
                   help="override the manager's diffusion_queue_per_replica (default: the app's)")
    p.add_argument("--checkpoint-every", type=int, default=None, dest="checkpoint_every",
                   help="override the manager's checkpoint_every (latents to S3 every N steps; 0: never)")
    p.add_argument("--router-max-backoff-s", type=float, default=None, dest="router_max_backoff_s",
                   help="Serve router retry backoff cap in the manager's process (default: Ray's)")
    p.add_argument("--replica-queue", type=int, default=None, dest="replica_queue",
                   help="units a Diffusion replica accepts beyond the one it runs, waiting inside it "
                        "(max_ongoing_requests = 1 + this; default: the app's 1)")
    _common(p)
    p.set_defaults(func=_runner("scaling", p))

    p = sub.add_parser("memory", help="peak RSS of single-process generation vs clip length")
    p.add_argument("--minutes", default="1,5,10", help="comma-separated clip lengths in minutes")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--min-resolution", type=int, default=64, dest="min_resolution")
    p.add_argument("--weights", help="weights root (default: tiny random weights in the cache dir)")
    _common(p)
    p.set_defaults(func=_runner("memory", p))

    p = sub.add_parser("gpu", help="full-size Sonic UNet on the GPU: s per video-second, TFLOP/s, optimisations")
    p.add_argument("--steps", type=int, default=3, help="timed window-steps per configuration")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--sampler-steps", type=int, default=25, dest="sampler_steps",
                   help="denoising steps per video, for s per video-second (default 25)")
    p.add_argument("--configs", default="all", help="comma-separated configuration names (default all)")
    p.add_argument("--no-compile", action="store_true", dest="no_compile", help="skip torch.compile")
    p.add_argument("--allow-cpu", action="store_true", dest="allow_cpu",
                   help="run on CPU when there is no CUDA (only with --tiny; figures not representative)")
    p.add_argument("--tiny", action="store_true", help="toy-size UNet and VAE (tests)")
    _common(p)
    p.set_defaults(func=_runner("gpu", p))
