"""``sonic-serve``: generate videos, manage weights, run the local stack."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("sonic_serve")

DEFAULT_WEIGHTS = Path("weights")
DEMO_TINY_WEIGHTS = Path.home() / ".sonic-serve" / "weights-tiny"


class UserError(Exception):
    """A problem with the user's input or setup: printed as one line, no traceback."""


def resolve_weights(path: str | None, allow_tiny: bool = True) -> Path:
    """The weights root: the given path, ./weights if complete, else (when allowed) tiny test weights."""
    from sonic_core.tiny_weights import make_tiny_weights
    from sonic_core.weights import REAL_WEIGHTS_HELP, blocking_problems, verify

    if path:
        problems = blocking_problems(verify(path))
        if problems:
            raise UserError(f"weights at {path} are incomplete: {problems[0]} ({len(problems)} problem(s); "
                            f"run `sonic-serve weights verify {path}`)")
        return Path(path)
    if not blocking_problems(verify(DEFAULT_WEIGHTS)):
        return DEFAULT_WEIGHTS
    if not allow_tiny:
        raise UserError(f"no weights found. {REAL_WEIGHTS_HELP}")
    if blocking_problems(verify(DEMO_TINY_WEIGHTS)):
        log.warning("no real weights in ./weights: making tiny random test weights in %s", DEMO_TINY_WEIGHTS)
        make_tiny_weights(DEMO_TINY_WEIGHTS)
    return DEMO_TINY_WEIGHTS


def _progress_bars():
    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step" if stage == "denoise" else "chunk")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def cmd_generate(args: argparse.Namespace) -> int:
    from sonic_core.engine import PRESETS, GenerationSettings, resolve_device, resolve_dtype
    from sonic_core.face import parse_face_bbox
    from stages.local import JobInputs, LocalPipeline
    from stages.media.audio_in import load_audio
    from stages.media.image_in import load_image

    settings = GenerationSettings(**PRESETS[args.preset])
    for name in ("steps", "min_resolution", "dynamic_scale", "motion_scale", "seed", "temporal_smoothing"):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, value)
    if args.interpolate is not None:
        settings.interpolate = args.interpolate
    if settings.steps < 1:
        raise UserError("--steps must be at least 1")
    if settings.min_resolution < 64 or settings.min_resolution % 64:
        raise UserError("--min-resolution must be a positive multiple of 64 (e.g. 512)")
    face = parse_face_bbox(args.face_bbox) if args.face_bbox else None
    # validate the inputs before the (slow) model load
    audio = load_audio(args.audio, duration_s=args.duration)
    image = load_image(args.image)
    weights = resolve_weights(args.weights)
    pipeline = LocalPipeline(weights, resolve_device(args.device), resolve_dtype(args.dtype))
    inputs = JobInputs(image=image, audio=audio, face_bbox=face, framing=args.framing,
                       expand_ratio=args.expand_ratio, duration_s=args.duration, crf=args.crf,
                       keep_resolution=args.keep_resolution, lip_sync=args.lip_sync)
    result = pipeline.generate(inputs, settings, args.output, raw_frames=args.raw_frames,
                               progress=_progress_bars())
    info = result.info
    print(f"wrote {result.video} ({info['frames']} frames, {info['width']}x{info['height']}, "
          f"{info['duration_s']:.2f} s); poster {result.poster}; metadata {result.metadata}")
    if info.get("lip_sync_offset_s") is not None:
        print(f"lip-sync: estimated offset {info['lip_sync_offset_s']:+.3f} s, "
              f"applied {info['lip_sync_applied_s']:+.3f} s")
    if info.get("notice"):
        print(f"NOTE: {info['notice']}")
    return 0


def cmd_weights_make_tiny(args: argparse.Namespace) -> int:
    from sonic_core.tiny_weights import make_tiny_weights

    root = make_tiny_weights(args.dir, seed=args.seed)
    print(f"wrote tiny random weights (seed {args.seed}) to {root}: for tests and demos only")
    return 0


def cmd_weights_verify(args: argparse.Namespace) -> int:
    from sonic_core.weights import WeightsLayout, blocking_problems, verify

    problems = verify(args.dir)
    for line in problems:
        print(line)
    if blocking_problems(problems):
        print(f"{args.dir}: {len(blocking_problems(problems))} problem(s)", file=sys.stderr)
        return 1
    kind = "tiny random test weights" if WeightsLayout(Path(args.dir)).is_tiny else "weights"
    print(f"{args.dir}: complete {kind}")
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    from sonic_serve.download import download_weights

    download_weights(args.dir, token=args.token)
    return cmd_weights_verify(args)


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate a talking-head video in this process")
    p.add_argument("--image", required=True, help="portrait (PNG, JPEG or WebP)")
    p.add_argument("--audio", required=True, help="speech (WAV, MP3, M4A/AAC, OGG/Opus, FLAC)")
    p.add_argument("-o", "--output", required=True, help="output .mp4 (poster .jpg and metadata .json beside it)")
    p.add_argument("--weights", help="weights root (default ./weights, else tiny test weights)")
    p.add_argument("--preset", choices=["fast", "quality"], default="quality")
    p.add_argument("--min-resolution", type=int, dest="min_resolution")
    p.add_argument("--expand-ratio", type=float, default=0.5, dest="expand_ratio")
    p.add_argument("--steps", type=int)
    p.add_argument("--dynamic-scale", type=float, dest="dynamic_scale")
    p.add_argument("--motion-scale", type=float, dest="motion_scale")
    p.add_argument("--temporal-smoothing", type=float, dest="temporal_smoothing")
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--face-bbox", dest="face_bbox", help="x,y,w,h in pixels: skip face detection")
    p.add_argument("--framing", choices=["crop", "full", "vertical"], default="full")
    p.add_argument("--keep-resolution", action="store_true", dest="keep_resolution")
    p.add_argument("--duration", type=float, help="seconds: trim or pad the audio (default: its length)")
    p.add_argument("--crf", type=int, default=18)
    p.add_argument("--lip-sync", action="store_true", dest="lip_sync",
                   help="estimate the audio/video offset (±0.1 s) and correct it at mux time (±0.05 s)")
    p.add_argument("--interpolate", dest="interpolate", action="store_true", default=None)
    p.add_argument("--no-interpolate", dest="interpolate", action="store_false")
    p.add_argument("--raw-frames", dest="raw_frames", help="also save float32 frames (N,H,W,3) in [0,1] as .npy")
    p.set_defaults(func=cmd_generate)


def add_weights(sub) -> None:
    w = sub.add_parser("weights", help="make, verify, download, push or pull model weights")
    wsub = w.add_subparsers(dest="weights_command", required=True)
    p = wsub.add_parser("make-tiny", help="deterministic tiny random weights in the official layout")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_weights_make_tiny)
    p = wsub.add_parser("verify", help="name every missing or malformed weights file")
    p.add_argument("dir")
    p.set_defaults(func=cmd_weights_verify)
    p = wsub.add_parser("download", help="download the official weights (needs internet)")
    p.add_argument("dir")
    p.add_argument("--token", help="Hugging Face token, if needed")
    p.set_defaults(func=cmd_weights_download)
    _register_optional("sonic_serve.weights_s3", wsub)


def _register_optional(module: str, sub) -> None:
    """Subcommands that live in their own modules (S3, serving, ops)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    mod.register(sub)


def quiet_libraries() -> None:
    """Model libraries print load progress and dtype advice on every load; keep the CLI output readable."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sonic-serve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate(sub)
    add_weights(sub)
    for module in ("sonic_serve.serve_cli", "sonic_serve.ops", "sonic_serve.bench"):
        _register_optional(module, sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_libraries()
    from sonic_core.face import NoFaceError
    from sonic_core.weights import WeightsError

    user_errors: tuple[type[BaseException], ...] = (UserError, NoFaceError, WeightsError, FileNotFoundError)
    try:
        from stages.media.errors import MediaError
        user_errors += (MediaError,)
    except ImportError:
        pass
    try:
        return args.func(args)
    except user_errors as exc:
        print(f"sonic-serve: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        if args.verbose:
            raise
        print(f"sonic-serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sonic-serve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
