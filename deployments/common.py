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


class OncePerKey:
    """Concurrent callers for the same key share one run of an async loader (a job's conditioning is fetched
    into a replica once, however many of its windows arrive together)."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future] = {}

    async def run(self, key: str, load: Callable[[], Any]) -> bool:
        """Await ``load()`` unless a call for ``key`` is under way (then await that one); True when this call
        ran the loader. A failed load fails every waiter; the next call tries again."""
        pending = self._running.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return False
        future = self._running[key] = asyncio.get_running_loop().create_future()
        try:
            await load()
            future.set_result(None)
        except BaseException as exc:
            future.set_exception(exc)
            with contextlib.suppress(BaseException):
                future.exception()  # mark retrieved
            raise
        finally:
            self._running.pop(key, None)
        return True


class LatestOnly:
    """Runs ``action(value)`` in the background for the newest value, one run at a time: values submitted
    while a run is under way replace each other, so a slow writer (a record or checkpoint to S3) never
    queues up stale work or holds up the caller. A failed run is raised by the next ``submit`` or ``flush``."""

    def __init__(self, action: Callable[[Any], Any]):
        self._action = action
        self._value: Any = None
        self._waiting = False
        self._task: asyncio.Task | None = None

    def submit(self, value: Any) -> None:
        self._raise_failure()
        self._value, self._waiting = value, True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        """Wait until the newest value was handled; raise the failure of a run if one failed."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            failure, self._task = self._task.exception(), None
            if failure is not None:
                raise failure

    async def _drain(self) -> None:
        while self._waiting:
            value, self._value, self._waiting = self._value, None, False
            await self._action(value)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


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
