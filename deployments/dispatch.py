"""Fair dispatch of many jobs' units of work onto one shared deployment, and waiting on ObjectRefs.

Serve's router queues requests first come, first served. A job that dispatches forty windows at once would
then make a later one-window job wait behind all forty, at every step. :class:`FairDispatcher` keeps each
job's pending units in its own queue and releases them round-robin across jobs, one unit per job per turn,
while keeping just enough units in flight to fill the deployment's running replicas (plus a small queue per
replica, so the autoscaler still sees the demand and scales up). A newly arrived job's first unit therefore
waits for at most one unit of each other active job, whatever their sizes.

Pure asyncio: no Ray import, so it is unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class FairDispatcher:
    def __init__(self, capacity: Callable[[], int]):
        self._capacity = capacity
        # per job: (unit, the caller's future, the caller's contextvars, so logs and spans stay the job's own)
        self._queues: dict[str, deque[tuple[Callable[[], Awaitable[Any]], asyncio.Future,
                                            contextvars.Context]]] = {}
        self._turns: deque[str] = deque()     # jobs with pending units, in round-robin order
        self._in_flight = 0
        self._in_flight_by_job: dict[str, int] = {}
        self.dispatched: list[str] = []       # job id per dispatched unit, in order (bounded; for tests/metrics)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def pending(self, job_id: str | None = None) -> int:
        if job_id is not None:
            return len(self._queues.get(job_id, ()))
        return sum(len(q) for q in self._queues.values())

    async def submit(self, job_id: str, unit: Callable[[], Awaitable[T]]) -> T:
        """Queue ``unit`` (a coroutine factory) for ``job_id``; return its result once it ran."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        queue = self._queues.get(job_id)
        if queue is None:
            queue = self._queues[job_id] = deque()
            self._turns.append(job_id)
        queue.append((unit, future, contextvars.copy_context()))
        self._pump()
        return await future

    def cancel_job(self, job_id: str, reason: BaseException | None = None) -> int:
        """Drop the job's units that have not started; their callers get ``reason`` (or CancelledError)."""
        queue = self._queues.pop(job_id, None)
        with contextlib.suppress(ValueError):
            self._turns.remove(job_id)
        for _, future, _ in queue or ():
            if not future.done():
                if reason is None:
                    future.cancel()
                else:
                    future.set_exception(reason)
        return len(queue or ())

    def _pump(self) -> None:
        capacity = max(1, int(self._capacity()))
        while self._in_flight < capacity and self._turns:
            job_id = self._turns.popleft()
            queue = self._queues[job_id]
            unit, future, context = queue.popleft()
            if queue:
                self._turns.append(job_id)    # back of the line: one unit per job per turn
            else:
                del self._queues[job_id]
            if future.done():                 # the caller went away
                continue
            self._in_flight += 1
            self._in_flight_by_job[job_id] = self._in_flight_by_job.get(job_id, 0) + 1
            self.dispatched.append(job_id)
            if len(self.dispatched) > 10_000:
                del self.dispatched[:5_000]
            asyncio.get_running_loop().create_task(self._run(job_id, unit, future), context=context)

    async def _run(self, job_id: str, unit: Callable[[], Awaitable[Any]], future: asyncio.Future) -> None:
        try:
            result = await unit()
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)
        finally:
            self._in_flight -= 1
            left = self._in_flight_by_job.get(job_id, 1) - 1
            if left:
                self._in_flight_by_job[job_id] = left
            else:
                self._in_flight_by_job.pop(job_id, None)
            self._pump()

    def poke(self) -> None:
        """Capacity may have grown (more replicas): dispatch what now fits."""
        self._pump()


class RefWatcher:
    """Await completion of Ray ObjectRefs *without* fetching them into this process: one thread loops on
    ``ray.wait(fetch_local=False)`` and resolves asyncio futures. Used for results that only pass through
    (decoded frames go from a Diffusion replica straight to a PostProcess replica)."""

    def __init__(self, wait: Callable[..., tuple[list, list]] | None = None, poll_s: float = 0.05):
        if wait is None:
            import ray

            wait = ray.wait
        self._wait = wait
        self._poll_s = poll_s
        self._pending: dict[Any, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ref-watcher", daemon=True)
        self._stopped = False
        self._thread.start()

    async def wait(self, ref) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            self._pending.setdefault(ref, []).append((loop, future))
        self._wake.set()
        await future

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopped:
            with self._lock:
                refs = list(self._pending)
            if not refs:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                ready, _ = self._wait(refs, num_returns=len(refs), timeout=self._poll_s, fetch_local=False)
            except Exception:  # noqa: BLE001 - keep watching; the awaiting side sees errors on fetch
                log.exception("ray.wait failed")
                ready = []
            for ref in ready:
                with self._lock:
                    waiters = self._pending.pop(ref, [])
                for loop, future in waiters:
                    loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
