"""Model weights in S3: push a local weights directory, pull it back, and sync it once per node into a cache.

A weights location is either a local path or ``s3://bucket/prefix``. Stage wrappers call
:func:`ensure_local_weights` before building a stage, so the stages themselves only ever see local paths.
The sync is incremental (objects compared by ETag and size against a manifest kept beside the files), atomic
per file, and serialised by a file lock, so replicas starting together on one node download once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from deployments.storage import S3Settings, Storage, parse_s3_uri

log = logging.getLogger(__name__)

MANIFEST = ".sonic-sync.json"
ENV_CACHE = "SONIC_WEIGHTS_CACHE"

Progress = Callable[[str, int], None]


def default_cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    home = Path(os.environ.get("SONIC_HOME") or Path.home() / ".sonic-serve").expanduser()
    return home / "cache" / "weights"


def is_s3_uri(location: str | os.PathLike) -> bool:
    return str(location).startswith("s3://")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _local_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def pull(uri: str, target: str | Path, settings: S3Settings | None = None,
         progress: Progress | None = None) -> tuple[Path, int]:
    """Mirror ``s3://bucket/prefix`` into ``target``: download new or changed objects, delete files that a
    previous pull brought and that are gone remotely. Returns (target, objects downloaded)."""
    bucket, prefix = parse_s3_uri(uri)
    storage = Storage(settings or S3Settings.from_env(), bucket)
    target = Path(target).expanduser()
    with _locked(target.parent / f".{target.name}.lock"):
        target.mkdir(parents=True, exist_ok=True)
        manifest_path = target / MANIFEST
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        base = f"{prefix}/" if prefix else ""
        remote = {o.key[len(base):]: o for o in storage.list(base)}
        remote = {rel: o for rel, o in remote.items() if rel and not rel.endswith("/")}
        if not remote:
            raise FileNotFoundError(f"no objects under {uri}")
        fetched = 0
        for rel, obj in remote.items():
            local = target / rel
            known = manifest.get(rel)
            if (known and known.get("etag") == obj.etag and known.get("size") == obj.size
                    and local.is_file() and local.stat().st_size == obj.size):
                continue
            storage.get_file(obj.key, local)
            manifest[rel] = {"etag": obj.etag, "size": obj.size}
            fetched += 1
            if progress:
                progress(rel, obj.size)
        for rel in [r for r in manifest if r not in remote]:
            (target / rel).unlink(missing_ok=True)
            del manifest[rel]
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, manifest_path)
    log.info("weights %s -> %s: %d of %d objects downloaded", uri, target, fetched, len(remote))
    return target, fetched


def push(source: str | Path, uri: str, settings: S3Settings | None = None,
         progress: Progress | None = None) -> tuple[int, int]:
    """Upload every file under ``source`` to ``s3://bucket/prefix``, skipping objects already there with the
    same size and content hash (ETag). Returns (uploaded, skipped)."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a directory")
    bucket, prefix = parse_s3_uri(uri)
    storage = Storage(settings or S3Settings.from_env(), bucket)
    storage.ensure_bucket()
    base = f"{prefix}/" if prefix else ""
    remote = {o.key: o for o in storage.list(base)}
    uploaded = skipped = 0
    for rel, path in _local_files(source).items():
        key = base + rel
        size = path.stat().st_size
        have = remote.get(key)
        if have and have.size == size and ("-" in have.etag or have.etag == _md5(path)):
            skipped += 1
            continue
        storage.put_file(key, path)
        uploaded += 1
        if progress:
            progress(rel, size)
    log.info("weights %s -> %s: %d uploaded, %d unchanged", source, uri, uploaded, skipped)
    return uploaded, skipped


def ensure_local_weights(uri_or_path: str | os.PathLike, cache_dir: str | Path | None = None,
                         settings: S3Settings | None = None) -> Path:
    """A local weights root for ``uri_or_path``: a local path is returned as is; ``s3://bucket/prefix`` is
    synced (once per node, incrementally) into ``cache_dir/bucket/prefix`` and that directory returned."""
    if not is_s3_uri(uri_or_path):
        return Path(uri_or_path).expanduser()
    bucket, prefix = parse_s3_uri(str(uri_or_path))
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target, _ = pull(str(uri_or_path), root / bucket / (prefix or "_root"), settings)
    return target
