"""``sonic-serve up`` (the whole stack on this machine) and ``sonic-serve submit`` (a job over HTTP)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def _home(value: str | None) -> Path:
    from deployments.local_stack import sonic_home

    return Path(value).expanduser() if value else sonic_home()


def _pick_weights(requested: str | None, home: Path) -> tuple[str, bool]:
    """(weights location, tiny?): the given path or s3:// URI, else ./weights when complete, else tiny random
    weights made once in $SONIC_HOME/weights-tiny."""
    from sonic_core.tiny_weights import make_tiny_weights
    from sonic_core.weights import WeightsLayout, blocking_problems, verify

    if requested:
        if requested.startswith("s3://"):
            return requested, False
        problems = blocking_problems(verify(requested))
        if problems:
            raise SystemExit(f"sonic-serve: error: weights at {requested} are incomplete: {problems[0]}")
        return requested, WeightsLayout(Path(requested)).is_tiny
    if not blocking_problems(verify("weights")):
        return str(Path("weights").resolve()), WeightsLayout(Path("weights")).is_tiny
    tiny = home / "weights-tiny"
    if blocking_problems(verify(tiny)):
        print(f"no real weights found: making tiny random test weights in {tiny}", flush=True)
        make_tiny_weights(tiny)
    return str(tiny), True


def _parse_replicas(items: list[str]) -> dict[str, int]:
    from deployments.app import DEPLOYMENTS

    out = {}
    for item in items or []:
        name, _, count = item.partition("=")
        if name not in DEPLOYMENTS or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"sonic-serve: error: --replicas wants NAME=N with NAME in {', '.join(DEPLOYMENTS)}")
        out[name] = int(count)
    return out


def cmd_up(args: argparse.Namespace) -> int:
    import logging

    from deployments.local_stack import LocalStack
    from deployments.s3server import free_port, port_free
    from deployments.storage import S3Settings

    home = _home(args.home)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["SONIC_HOME"] = str(home)
    weights, tiny = _pick_weights(args.weights, home)
    if not port_free(args.port, args.host):
        raise SystemExit(f"sonic-serve: error: port {args.port} on {args.host} is in use (use --port)")
    s3_port = args.s3_port if port_free(args.s3_port) else free_port()
    settings = S3Settings.from_env(args.s3_endpoint) if args.s3_endpoint else None
    logging.getLogger("ray").setLevel(logging.WARNING)
    stack = LocalStack(home=home, weights=weights, http_host=args.host, http_port=args.port,
                       num_cpus=args.num_cpus, s3_settings=settings, s3_port=s3_port, dtype=args.dtype,
                       replicas=_parse_replicas(args.replicas), log_to_driver=args.verbose_ray)

    def stop_on_signal(signum, frame):  # SIGTERM behaves like Ctrl-C
        raise KeyboardInterrupt

    def take_signals() -> None:
        # Ray installs its own handlers in ray.init(), so ours go in (again) afterwards; SIGINT is set
        # explicitly because a shell may start a background job with it ignored.
        signal.signal(signal.SIGINT, stop_on_signal)
        signal.signal(signal.SIGTERM, stop_on_signal)

    take_signals()
    started = time.monotonic()
    print(f"starting Sonic Serve (home {home}); this takes a minute...", flush=True)
    try:
        stack.start()
        take_signals()
        s3 = stack.settings
        print(f"""
Sonic Serve is up ({time.monotonic() - started:.0f}s)
  API        {stack.url}   (GET /healthz, POST /v1/jobs, GET /v1/jobs/{{id}}, GET /v1/jobs/{{id}}/result)
  API key    {home / 'api-key'}   (tenant "local")
  S3         http://{s3.endpoint}   bucket {stack.bucket}{'' if args.s3_endpoint else f', data in {home / "s3"}'}
  dashboard  {stack.dashboard_url}
  weights    {weights}""", flush=True)
        if tiny:
            print("  NOTE: these are TINY RANDOM test weights: videos are noise, not a real model. Get real weights "
                  "with `sonic-serve weights download DIR` and pass --weights DIR.", flush=True)
        print("\nTry: sonic-serve submit --image portrait.png --audio speech.wav -o out.mp4\nCtrl-C to stop.",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        stack.stop()
    print("stopped", flush=True)
    return 0


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key:
        return args.api_key
    if os.environ.get("SONIC_API_KEY"):
        return os.environ["SONIC_API_KEY"]
    path = _home(None) / "api-key"
    if not path.is_file():
        raise SystemExit(f"sonic-serve: error: no API key: pass --api-key, set SONIC_API_KEY, or run "
                         f"`sonic-serve up` (it writes {path})")
    return path.read_text().strip()


_PARAMS = ("preset", "steps", "min_resolution", "dynamic_scale", "motion_scale", "seed", "noise_strength",
           "temporal_smoothing", "face_bbox", "framing", "expand_ratio", "duration_s", "crf", "keep_resolution",
           "lip_sync", "interpolate", "guidance_image", "guidance_audio")


def cmd_submit(args: argparse.Namespace) -> int:
    import logging

    import httpx
    from tqdm import tqdm

    logging.getLogger("httpx").setLevel(logging.WARNING)

    url = args.url or os.environ.get("SONIC_URL") or DEFAULT_URL
    headers = {"Authorization": f"Bearer {_api_key(args)}"}
    params = {name: str(getattr(args, name)).lower() if isinstance(getattr(args, name), bool)
              else str(getattr(args, name)) for name in _PARAMS if getattr(args, name, None) is not None}
    image, audio = Path(args.image), Path(args.audio)
    for path in (image, audio):
        if not path.is_file():
            raise SystemExit(f"sonic-serve: error: no file {path}")
    # /result answers 302 to a presigned S3 URL; httpx drops the API key when the redirect leaves the host
    with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(60, connect=10),
                      follow_redirects=True) as client:
        try:
            with image.open("rb") as img, audio.open("rb") as snd:
                response = client.post("/v1/jobs", data=params,
                                       files={"image": (image.name, img), "audio": (audio.name, snd)})
        except httpx.ConnectError:
            raise SystemExit(f"sonic-serve: error: nothing answers at {url}; start it with `sonic-serve up`") from None
        if response.status_code != 202:
            raise SystemExit(f"sonic-serve: error: submit refused ({response.status_code}): {response.text}")
        job = response.json()
        print(f"job {job['id']} submitted", flush=True)
        bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}] {postfix}")
        try:
            while True:
                record = client.get(f"/v1/jobs/{job['id']}").json()
                progress = record.get("progress") or {}
                bar.update(100 * progress.get("fraction", 0.0) - bar.n)
                stage = record.get("stage", "")
                if stage in ("denoise", "decode") and progress.get("total"):
                    stage = f"{stage} {progress['done']}/{progress['total']}"
                bar.set_postfix_str(stage, refresh=True)
                if record["state"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(args.poll)
        finally:
            bar.close()
        if record["state"] != "succeeded":
            error = record.get("error") or {}
            print(f"sonic-serve: job {job['id']} {record['state']}: {error.get('message', error)}", file=sys.stderr)
            return 1
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        with client.stream("GET", f"/v1/jobs/{job['id']}/result") as result, output.open("wb") as out:
            if result.status_code != 200:
                raise SystemExit(f"sonic-serve: error: download failed ({result.status_code})")
            for chunk in result.iter_bytes():
                out.write(chunk)
    info = record.get("output") or {}
    print(f"wrote {output} ({info.get('frames')} frames, {info.get('width')}x{info.get('height')}, "
          f"{info.get('duration_s', 0):.2f} s)")
    for warning in record.get("warnings") or []:
        print(f"warning: {warning}")
    if info.get("notice"):
        print(f"NOTE: {info['notice']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("up", help="run everything on this machine: Ray, an S3 server and the API")
    p.add_argument("--home", help="state directory (default $SONIC_HOME or ~/.sonic-serve)")
    p.add_argument("--weights", help="weights dir or s3://bucket/prefix (default ./weights, else tiny test weights)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--s3-port", type=int, default=9000, dest="s3_port",
                   help="embedded S3 server port (another free one if taken)")
    p.add_argument("--s3-endpoint", dest="s3_endpoint",
                   help="use this S3 server instead (credentials from SONIC_S3_ACCESS_KEY/SECRET_KEY)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=os.environ.get("SONIC_DTYPE", "fp16"),
                   help="on GPU (CPU replicas always compute in fp32)")
    p.add_argument("--num-cpus", type=int, dest="num_cpus", help="CPUs for Ray (default: all)")
    p.add_argument("--replicas", action="append", metavar="NAME=N",
                   help="pin a deployment's replica count, e.g. --replicas Diffusion=2 (repeatable)")
    p.add_argument("--verbose-ray", action="store_true", dest="verbose_ray", help="show the replicas' logs")
    p.set_defaults(func=cmd_up)

    p = subparsers.add_parser("submit", help="send a job to a running Sonic Serve and download the MP4")
    p.add_argument("--image", required=True)
    p.add_argument("--audio", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--url", help=f"API base URL (default $SONIC_URL or {DEFAULT_URL})")
    p.add_argument("--api-key", dest="api_key", help="default $SONIC_API_KEY or $SONIC_HOME/api-key")
    p.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--preset", choices=["fast", "quality"])
    p.add_argument("--steps", type=int)
    p.add_argument("--min-resolution", type=int, dest="min_resolution")
    p.add_argument("--dynamic-scale", type=float, dest="dynamic_scale")
    p.add_argument("--motion-scale", type=float, dest="motion_scale")
    p.add_argument("--seed", type=int)
    p.add_argument("--noise-strength", type=float, dest="noise_strength")
    p.add_argument("--temporal-smoothing", type=float, dest="temporal_smoothing")
    p.add_argument("--guidance-image", type=float, dest="guidance_image")
    p.add_argument("--guidance-audio", type=float, dest="guidance_audio")
    p.add_argument("--face-bbox", dest="face_bbox", help="x,y,w,h in pixels")
    p.add_argument("--framing", choices=["crop", "full", "vertical"])
    p.add_argument("--expand-ratio", type=float, dest="expand_ratio")
    p.add_argument("--duration", type=float, dest="duration_s")
    p.add_argument("--crf", type=int)
    p.add_argument("--keep-resolution", action="store_true", default=None, dest="keep_resolution")
    p.add_argument("--lip-sync", action="store_true", default=None, dest="lip_sync",
                   help="estimate the audio/video offset and correct it (up to 50 ms) at mux time")
    p.add_argument("--interpolate", dest="interpolate", action="store_true", default=None)
    p.add_argument("--no-interpolate", dest="interpolate", action="store_false")
    p.set_defaults(func=cmd_submit)
