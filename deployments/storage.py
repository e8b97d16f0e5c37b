"""S3 storage through the ``minio`` SDK: settings from the environment, key layout, retries.

Any S3 server works (MinIO, SeaweedFS, Ceph RGW, AWS). One bucket holds everything, under fixed prefixes::

    uploads/{tenant}/{upload_id}/{image|audio}           presigned-PUT uploads (POST /v1/uploads)
    uploads/{tenant}/{upload_id}/upload.json             the upload's record (expires_at, file names)
    inputs/{tenant}/{job_id}/image.{ext}, audio.{ext}   a job's portrait and speech
    outputs/{tenant}/{job_id}/video.mp4, poster.jpg, metadata.json
    jobs/{tenant}/{job_id}.json                          job records (the source of truth for job state)
    active/{tenant}/{job_id}                             marker of an unfinished job (resumed after a restart)
    checkpoints/{tenant}/{job_id}/...                    denoising checkpoints of unfinished jobs
    idempotency/{tenant}/{sha256 of key}.json            Idempotency-Key -> job id and request hash
    batches/{tenant}/{batch_id}.json                     batch records (POST /v1/batches)
    webhooks/pending/{event_id}.json                     webhook deliveries not yet acknowledged
    webhooks/delivered/{tenant}/{event_id}.json          delivered webhooks (with attempts)
    tenants/{tenant}.json                                tenant records
    apikeys/{sha256 of key}.json                         API keys, hashed at rest
    models/{name}/...                                    model weights (``sonic-serve weights push``)

Tensors never go through S3: they travel between stages in the Ray object store. Retention is left to S3
lifecycle rules (:meth:`Storage.apply_retention`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.error import S3Error

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_ENDPOINT = "SONIC_S3_ENDPOINT"
ENV_ACCESS_KEY = "SONIC_S3_ACCESS_KEY"
ENV_SECRET_KEY = "SONIC_S3_SECRET_KEY"
ENV_SECURE = "SONIC_S3_SECURE"
ENV_REGION = "SONIC_S3_REGION"
ENV_BUCKET = "SONIC_S3_BUCKET"
DEFAULT_ENDPOINT = "127.0.0.1:9000"
DEFAULT_BUCKET = "sonic"
DEFAULT_REGION = "us-east-1"

# S3 error codes worth another try; anything else (NoSuchKey, AccessDenied, ...) is final.
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                    "OperationAborted", "XMinioServerNotInitialized"}
_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"}


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class S3Settings:
    endpoint: str = DEFAULT_ENDPOINT      # host:port, no scheme
    access_key: str | None = None
    secret_key: str | None = None
    secure: bool = False
    region: str | None = None

    @classmethod
    def from_env(cls, endpoint: str | None = None, env: dict | None = None) -> S3Settings:
        """Read ``SONIC_S3_*``. An endpoint given as a URL sets ``secure`` from its scheme unless
        ``SONIC_S3_SECURE`` says otherwise."""
        env = os.environ if env is None else env
        raw = endpoint or env.get(ENV_ENDPOINT) or DEFAULT_ENDPOINT
        host, secure = parse_endpoint(raw)
        if env.get(ENV_SECURE) not in (None, ""):
            secure = _truthy(env.get(ENV_SECURE))
        return cls(endpoint=host, access_key=env.get(ENV_ACCESS_KEY) or None,
                   secret_key=env.get(ENV_SECRET_KEY) or None, secure=secure, region=env.get(ENV_REGION) or None)

    def as_env(self) -> dict[str, str]:
        env = {ENV_ENDPOINT: self.endpoint, ENV_SECURE: "1" if self.secure else "0"}
        if self.access_key:
            env[ENV_ACCESS_KEY] = self.access_key
        if self.secret_key:
            env[ENV_SECRET_KEY] = self.secret_key
        if self.region:
            env[ENV_REGION] = self.region
        return env

    def client(self, retries: bool = True) -> Minio:
        retry = (urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]) if retries
                 else urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0))
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=300), maxsize=32, retries=retry)
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=self.secure,
                     region=self.region, http_client=http)


def parse_endpoint(raw: str) -> tuple[str, bool]:
    """``http://host:9000`` / ``https://host`` / ``host:9000`` -> (``host:port``, secure)."""
    raw = raw.strip()
    if "://" in raw:
        parsed = urlparse(raw)
        if parsed.path not in ("", "/"):
            raise ValueError(f"S3 endpoint must not have a path: {raw!r}")
        return parsed.netloc, parsed.scheme == "https"
    return raw.rstrip("/"), False


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``) with no leading or trailing slash."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"expected s3://bucket/prefix, got {uri!r}")
    return parsed.netloc, parsed.path.strip("/")


def is_missing(exc: BaseException) -> bool:
    return isinstance(exc, S3Error) and exc.code in _MISSING_CODES


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


# Called with (operation, exception) on every failed S3 attempt, transient or not (metrics hook in here).
S3_ERROR_LISTENERS: list[Callable[[str, BaseException], None]] = []
# How long transient failures are retried before an operation gives up: long enough to ride out an S3
# restart (the reliability tests take S3 away for 10 s).
RETRY_DEADLINE_S = float(os.environ.get("SONIC_S3_RETRY_DEADLINE_S", "60"))


def _notify(what: str, exc: BaseException) -> None:
    op = what.split(" ", 1)[0]
    for listener in S3_ERROR_LISTENERS:
        try:
            listener(op, exc)
        except Exception:  # noqa: BLE001 - a metrics hook must never break storage
            log.debug("S3 error listener failed", exc_info=True)


def with_retries(fn: Callable[[], T], what: str, attempts: int | None = None, base_delay: float = 0.2,
                 deadline_s: float | None = None, max_delay: float = 5.0) -> T:
    """Call ``fn``; on a transient S3 or network error wait (exponential backoff with jitter, capped at
    ``max_delay``) and retry, until ``attempts`` tries (if given) or ``deadline_s`` seconds have passed."""
    deadline = time.monotonic() + (RETRY_DEADLINE_S if deadline_s is None else deadline_s)
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not is_missing(exc):    # "no such key" is an answer, not an error
                _notify(what, exc)
            out_of_tries = attempts is not None and attempt >= attempts
            if out_of_tries or not _transient(exc) or time.monotonic() >= deadline:
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            delay = max(0.0, min(delay, deadline - time.monotonic()))
            log.warning("S3 %s failed (%s: %s); retry %d in %.2fs", what, type(exc).__name__, exc, attempt, delay)
            time.sleep(delay)


class Keys:
    """The bucket's key layout, in one place."""

    @staticmethod
    def input(tenant: str, job_id: str, name: str) -> str:
        return f"inputs/{tenant}/{job_id}/{name}"

    @staticmethod
    def output(tenant: str, job_id: str, name: str) -> str:
        return f"outputs/{tenant}/{job_id}/{name}"

    @staticmethod
    def job(tenant: str, job_id: str) -> str:
        return f"jobs/{tenant}/{job_id}.json"

    @staticmethod
    def jobs(tenant: str) -> str:
        return f"jobs/{tenant}/"

    @staticmethod
    def upload(tenant: str, upload_id: str, name: str) -> str:
        return f"uploads/{tenant}/{upload_id}/{name}"

    @staticmethod
    def uploads(tenant: str) -> str:
        return f"uploads/{tenant}/"

    @staticmethod
    def active(tenant: str, job_id: str) -> str:
        return f"active/{tenant}/{job_id}"

    @staticmethod
    def checkpoint(tenant: str, job_id: str, name: str) -> str:
        return f"checkpoints/{tenant}/{job_id}/{name}"

    @staticmethod
    def idempotency(tenant: str, key_hash: str) -> str:
        return f"idempotency/{tenant}/{key_hash}.json"

    @staticmethod
    def batch(tenant: str, batch_id: str) -> str:
        return f"batches/{tenant}/{batch_id}.json"

    @staticmethod
    def batches(tenant: str) -> str:
        return f"batches/{tenant}/"

    @staticmethod
    def webhook_pending(event_id: str) -> str:
        return f"webhooks/pending/{event_id}.json"

    @staticmethod
    def webhook_delivered(tenant: str, event_id: str) -> str:
        return f"webhooks/delivered/{tenant}/{event_id}.json"

    @staticmethod
    def tenant(tenant: str) -> str:
        return f"tenants/{tenant}.json"

    @staticmethod
    def api_key(key_hash: str) -> str:
        return f"apikeys/{key_hash}.json"

    @staticmethod
    def model(name: str) -> str:
        return f"models/{name}/"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class Storage:
    """One bucket on one S3 endpoint. Thread-safe (the minio client is); every call retries transient errors.

    Calls block: from async code, run them with ``asyncio.to_thread``.
    """

    _retention_warned = False   # one warning per process when the backend refuses lifecycle rules

    def __init__(self, settings: S3Settings, bucket: str = DEFAULT_BUCKET, client: Minio | None = None):
        self.settings = settings
        self.bucket = bucket
        self.client = client or settings.client()

    @classmethod
    def from_env(cls, bucket: str | None = None, endpoint: str | None = None) -> Storage:
        return cls(S3Settings.from_env(endpoint), bucket or os.environ.get(ENV_BUCKET) or DEFAULT_BUCKET)

    def for_bucket(self, bucket: str) -> Storage:
        return Storage(self.settings, bucket, self.client)

    def ensure_bucket(self) -> None:
        def make() -> None:
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        with_retries(make, f"make bucket {self.bucket}")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        result = with_retries(lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                                                             content_type=content_type), f"put {key}")
        return ObjectInfo(key, len(data), (result.etag or "").strip('"'))

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return with_retries(get, f"get {key}")

    def put_json(self, key: str, value: dict) -> ObjectInfo:
        return self.put_bytes(key, json.dumps(value, indent=1, sort_keys=True).encode(), "application/json")

    def get_json(self, key: str) -> dict | None:
        """The object parsed as JSON, or None when there is no such key."""
        try:
            return json.loads(self.get_bytes(key))
        except S3Error as exc:
            if is_missing(exc):
                return None
            raise

    def put_file(self, key: str, path: str | Path, content_type: str = "application/octet-stream") -> ObjectInfo:
        path = Path(path)
        result = with_retries(lambda: self.client.fput_object(self.bucket, key, str(path),
                                                              content_type=content_type), f"upload {key}")
        return ObjectInfo(key, path.stat().st_size, (result.etag or "").strip('"'))

    def get_file(self, key: str, path: str | Path) -> Path:
        """Download to ``path`` atomically (a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part-{os.getpid()}")
        try:
            with_retries(lambda: self.client.fget_object(self.bucket, key, str(tmp)), f"download {key}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes in chunks (for HTTP responses)."""
        response = with_retries(lambda: self.client.get_object(self.bucket, key), f"get {key}")
        try:
            yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = with_retries(lambda: self.client.stat_object(self.bucket, key), f"stat {key}")
        except S3Error as exc:
            if is_missing(exc):
                return None
            raise
        return ObjectInfo(key, int(st.size or 0), (st.etag or "").strip('"'))

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursive), sorted by key."""
        def listing() -> list[ObjectInfo]:
            return [ObjectInfo(o.object_name, int(o.size or 0), (o.etag or "").strip('"'))
                    for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
                    if not o.is_dir]

        return sorted(with_retries(listing, f"list {prefix}"), key=lambda o: o.key)

    def delete(self, key: str) -> None:
        with_retries(lambda: self.client.remove_object(self.bucket, key), f"delete {key}")

    def presigned_get(self, key: str, expires_s: int = 3600, filename: str | None = None) -> str:
        """A GET URL; ``filename`` makes browsers save the object under that name."""
        from datetime import timedelta

        extra = {"response-content-disposition": f'attachment; filename="{filename}"'} if filename else None
        return self.client.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_s),
                                                response_headers=extra)

    def presigned_put(self, key: str, expires_s: int = 3600) -> str:
        from datetime import timedelta

        return self.client.presigned_put_object(self.bucket, key, expires=timedelta(seconds=expires_s))

    def presigner(self, public_endpoint: str = "") -> Storage:
        """A Storage whose client only signs URLs handed to clients: on ``public_endpoint`` (``scheme://host:port``
        as clients reach S3; empty: this endpoint) and with the region fixed, so signing makes no network call."""
        settings = self.settings
        if public_endpoint:
            host, secure = parse_endpoint(public_endpoint)
            settings = replace(settings, endpoint=host, secure=secure)
        settings = replace(settings, region=settings.region or DEFAULT_REGION)
        return Storage(settings, self.bucket, settings.client(retries=False))

    def apply_retention(self, days_by_prefix: dict[str, int]) -> bool:
        """Expire objects under each prefix after N days (S3 lifecycle rules; 0 days: no rule). Backends
        without lifecycle support get one warning and keep everything."""
        from minio.commonconfig import ENABLED, Filter
        from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

        rules = [Rule(ENABLED, rule_filter=Filter(prefix=prefix), rule_id="expire-" + prefix.strip("/"),
                      expiration=Expiration(days=days))
                 for prefix, days in sorted(days_by_prefix.items()) if days > 0]
        try:
            if rules:
                with_retries(lambda: self.client.set_bucket_lifecycle(self.bucket, LifecycleConfig(rules)),
                             f"lifecycle {self.bucket}", deadline_s=10)
            else:
                with_retries(lambda: self.client.delete_bucket_lifecycle(self.bucket), f"lifecycle {self.bucket}",
                             deadline_s=10)
            return True
        except Exception as exc:  # noqa: BLE001 - retention is best effort: warn once, keep serving
            if not Storage._retention_warned:
                Storage._retention_warned = True
                log.warning("S3 bucket %s: lifecycle rules not applied (%s: %s); objects are kept until deleted",
                            self.bucket, type(exc).__name__, exc)
            return False

    def ping(self) -> bool:
        try:
            self.client.bucket_exists(self.bucket)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False
