"""JSON logs: one object per line with ``ts, level, logger, message``, the job context (``job_id``, ``tenant``),
the process's ``replica``, the current ``trace_id``/``span_id`` and any ``extra=`` fields. Values under keys
named like credentials (authorization, api_key, secret, token, password, ...) never reach the output.

:func:`job_context` keeps the job in a ``contextvars`` variable, so it follows the code into asyncio tasks
created inside the block and into ``asyncio.to_thread`` workers, and two jobs running concurrently in one
process never mix.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "[REDACTED]"
_CONTEXT: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("sonic_log_context")

# A key is secret when one of its words is in _SECRET_WORDS, or its compact form holds one of _SECRET_PARTS
# ("audio_key", "video_key" and "frames_tokens" stay visible: S3 keys and counts are what we want to log).
_SECRET_WORDS = {"authorization", "auth", "password", "passwd", "pwd", "secret", "token", "cookie", "signature",
                 "credential", "credentials", "apikey", "sessionid"}
_SECRET_PARTS = ("apikey", "accesskey", "secretkey", "privatekey", "clientsecret", "webhooksecret")
_MESSAGE_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    (re.compile(r"(?i)\b(api[_-]?key|access[_-]?key|secret[_-]?key|secret|token|password|passwd|x-amz-signature"
                r"|x-amz-credential|x-amz-security-token)\s*([=:])\s*[^\s&,;\"']+"), r"\1\2" + REDACTED),
    (re.compile(r"(?i)\b(sk|whsec)_[A-Za-z0-9]{8,}"), r"\1_" + REDACTED),
]
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def is_secret_key(key: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower()) if w]
    compact = "".join(words)
    return any(w in _SECRET_WORDS for w in words) or any(p in compact for p in _SECRET_PARTS)


def _redact_text(text: str) -> str:
    for pattern, replacement in _MESSAGE_PATTERNS:
        text = pattern.sub(replacement, text)
    if "://" in text and ("@" in text or "?" in text):
        text = re.sub(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+", lambda m: _redact_url(m.group(0)), text)
    return text


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if is_secret_key(k) else v) for k, v in pairs], safe="[]")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(value: Any) -> Any:
    """``value`` with secrets replaced: values under secret-looking keys (at any depth), credentials in
    URLs and bearer tokens or ``key=value`` secrets inside strings."""
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret_key(str(k)) and v not in (None, "") else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_text(value)
    return value


@contextlib.contextmanager
def job_context(job_id: str | None, tenant: str | None = None, **fields: Any) -> Iterator[None]:
    """Every line logged inside the block (and in tasks/threads started from it) carries these fields."""
    extra = {"job_id": job_id, "tenant": tenant, **fields}
    token = _CONTEXT.set({**_CONTEXT.get({}), **{k: v for k, v in extra.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_CONTEXT.get({}))


class JsonFormatter(logging.Formatter):
    def __init__(self, replica: str | None = None):
        super().__init__()
        self.replica = replica

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(_CONTEXT.get({}))
        if self.replica:
            payload.setdefault("replica", self.replica)
        payload.update(_trace_ids())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(redact(payload), default=str, ensure_ascii=False)


def _trace_ids() -> dict[str, str]:
    try:
        from deployments.telemetry import trace_ids
    except Exception:  # noqa: BLE001 - logging must work without tracing
        return {}
    return trace_ids()


def configure_json_logging(level: str | int = "INFO", replica: str | None = None,
                           stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) as JSON lines, at ``level``. Idempotent: a
    handler installed by an earlier call, and plain console handlers (``logging.basicConfig``), are replaced,
    so every line is logged once. Loggers that do not propagate (Ray's ``ray.serve``) keep their own format."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        plain_console = type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout)
        if getattr(handler, "_sonic_json", False) or plain_console:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(replica))
    handler._sonic_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def _sizes(record: Mapping[str, Any], sizes: Mapping[str, int] | None) -> dict[str, Any]:
    inputs = record.get("inputs") or {}
    known = {**(record.get("input_sizes") or {}), **(sizes or {})}
    return {name: {"key": key, "bytes": known.get(name)} for name, key in inputs.items()}


def log_generation(logger: logging.Logger, record: Mapping[str, Any], sizes: Mapping[str, int] | None = None,
                   level: int = logging.INFO) -> None:
    """One line for a finished generation: inputs (S3 keys and sizes; ``sizes`` or ``record["input_sizes"]``),
    parameters, output (keys, bytes, frames, fps, duration), timings, placement summary, warnings, error."""
    output = record.get("output") or {}
    started, finished = record.get("started_at"), record.get("finished_at")
    placement = record.get("placement") or {}
    windows = placement.get("windows") or []
    fields = {
        "event": "generation",
        "job_id": record.get("id"),
        "tenant": record.get("tenant"),
        "state": record.get("state"),
        "inputs": _sizes(record, sizes),
        "params": record.get("params") or {},
        "output": {k: output.get(k) for k in ("video_key", "poster_key", "metadata_key", "bytes", "frames", "fps",
                                              "width", "height", "duration_s", "tiny_weights") if k in output},
        "timings_s": record.get("timings_s") or {},
        "wall_s": round(finished - started, 3) if isinstance(started, int | float) and isinstance(
            finished, int | float) else None,
        "video": record.get("video"),
        "windows": len(windows),
        "replicas": sorted({w.get("replica") for w in windows if w.get("replica")}),
        "warnings": record.get("warnings") or [],
        "error": record.get("error"),
    }
    logger.log(level, "generation %s %s", record.get("id"), record.get("state"), extra=fields)


__all__ = ["JsonFormatter", "REDACTED", "configure_json_logging", "current_context", "is_secret_key",
           "job_context", "log_generation", "redact"]
