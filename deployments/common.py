"""Helpers shared by the deployments: replica names, running blocking work off the event loop, error
unwrapping and the default deployment options (serve_config.yaml overrides every one of them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def replica_name() -> str:
    """``Deployment#id`` of the calling replica, or ``local-<pid>`` outside Serve."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.to_full_id_str()
    except Exception:  # noqa: BLE001 - not inside a replica
        return f"local-{socket.gethostname()}-{os.getpid()}"


def replica_max_ongoing(default: int) -> int:
    """This replica's max_ongoing_requests as configured (falls back to ``default``)."""
    try:
        from ray import serve

        return int(serve.get_replica_context()._deployment_config.max_ongoing_requests)
    except Exception:  # noqa: BLE001
        return default


async def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run compute or blocking I/O in a worker thread so the replica keeps answering (health checks,
    other requests, cache lookups)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def root_cause(exc: BaseException) -> BaseException:
    """The user-level exception inside Ray's wrappers (RayTaskError(cause), possibly nested)."""
    seen = 0
    while seen < 10:
        seen += 1
        cause = getattr(exc, "cause", None)
        if cause is None or cause is exc or not isinstance(cause, BaseException):
            break
        exc = cause
    return exc


def is_lost_worker(exc: BaseException) -> bool:
    """A failure of the replica or the transport, not of the work: safe to retry a pure unit."""
    import ray.exceptions as rex

    lost = (rex.RayActorError, rex.ObjectLostError, rex.OwnerDiedError, rex.WorkerCrashedError,
            rex.NodeDiedError)
    extra = tuple(t for t in (getattr(rex, "ActorUnavailableError", None), getattr(rex, "ActorDiedError", None))
                  if t is not None)
    try:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        extra += (BackPressureError, DeploymentUnavailableError)
    except ImportError:
        pass
    return isinstance(exc, lost + extra)


def error_info(exc: BaseException) -> dict[str, Any]:
    """A JSON-able description of a job failure for the record (fields of MediaError / ParamError kept)."""
    cause = root_cause(exc)
    info: dict[str, Any] = {"type": type(cause).__name__, "message": str(cause).splitlines()[0][:2000]
                            if str(cause) else type(cause).__name__}
    to_dict = getattr(cause, "to_dict", None)
    if callable(to_dict):
        with contextlib.suppress(Exception):
            info.update(to_dict())
    return info
