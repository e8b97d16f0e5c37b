"""``sonic-serve weights push DIR s3://bucket/prefix`` and ``sonic-serve weights pull s3://bucket/prefix DIR``.

The S3 endpoint and credentials come from SONIC_S3_ENDPOINT, SONIC_S3_ACCESS_KEY, SONIC_S3_SECRET_KEY and
SONIC_S3_SECURE. Both directions are incremental: objects whose size and ETag match are not sent again.
"""

from __future__ import annotations

import argparse
import functools
import sys


def _s3_errors(command):
    """S3 refusals and unreachable endpoints as one line and exit code 2, not a traceback."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        import urllib3
        from minio.error import S3Error

        try:
            return command(args)
        except S3Error as exc:
            print(f"sonic-serve: error: S3 refused {exc.code}: {exc.message} ({exc.resource})", file=sys.stderr)
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            print(f"sonic-serve: error: S3 endpoint unreachable ({type(exc).__name__}: {exc}); check "
                  "SONIC_S3_ENDPOINT", file=sys.stderr)
        return 2

    return run


def _progress(verb: str):
    def report(name: str, size: int) -> None:
        print(f"  {verb} {name} ({size / 1e6:.1f} MB)", flush=True)

    return report


@_s3_errors
def cmd_push(args: argparse.Namespace) -> int:
    from deployments.storage import S3Settings
    from deployments.weights_store import push

    settings = S3Settings.from_env(args.endpoint)
    uploaded, skipped = push(args.dir, args.uri, settings, progress=None if args.quiet else _progress("up"))
    print(f"pushed {args.dir} to {args.uri}: {uploaded} uploaded, {skipped} unchanged "
          f"(endpoint {settings.endpoint})")
    return 0


@_s3_errors
def cmd_pull(args: argparse.Namespace) -> int:
    from deployments.storage import S3Settings
    from deployments.weights_store import pull
    from sonic_core.weights import blocking_problems, verify

    settings = S3Settings.from_env(args.endpoint)
    target, fetched = pull(args.uri, args.dir, settings, progress=None if args.quiet else _progress("down"))
    problems = blocking_problems(verify(target))
    print(f"pulled {args.uri} to {target}: {fetched} downloaded"
          + (f"; WARNING: {len(problems)} problem(s), first: {problems[0]}" if problems else ""))
    return 0


def register(subparsers) -> None:
    """Add ``push`` and ``pull`` to the ``sonic-serve weights`` subcommands."""
    p = subparsers.add_parser("push", help="upload a weights directory to s3://bucket/prefix")
    p.add_argument("dir")
    p.add_argument("uri", help="s3://bucket/prefix")
    p.add_argument("--endpoint", help="S3 endpoint (default $SONIC_S3_ENDPOINT)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_push)
    p = subparsers.add_parser("pull", help="download s3://bucket/prefix into a weights directory")
    p.add_argument("uri", help="s3://bucket/prefix")
    p.add_argument("dir")
    p.add_argument("--endpoint", help="S3 endpoint (default $SONIC_S3_ENDPOINT)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_pull)
