"""Admission and start order of jobs: per-tenant quotas, a global queue bound, and fair start order.

The JobManager (one replica) owns one :class:`Admission`. The ingress asks :meth:`Admission.admit` before it
stores anything; a refusal becomes 429 (the tenant's own limits) or 503 (the whole queue is full), both with
``Retry-After``. An admitted request holds a *ticket* (a reserved queue slot) until the job is submitted or
the ticket expires. Queued jobs start round-robin across tenants, each tenant with at most ``max_running``
jobs running, and all tenants together with at most the manager's ``max_active_jobs``.

Pure Python (no Ray, no asyncio): unit-tested on its own.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

TICKET_TTL_S = 120.0
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Limits:
    max_running: int = 4              # a tenant's jobs running at once (more wait, they are not refused)
    max_queued: int = 200             # a tenant's jobs waiting to start
    submits_per_minute: int = 120     # a tenant's accepted submissions per rolling minute

    def merged(self, overrides: dict[str, int] | None) -> Limits:
        known = {k: int(v) for k, v in (overrides or {}).items() if k in self.__dataclass_fields__}
        return Limits(**{**self.__dict__, **known})


@dataclass(frozen=True)
class Decision:
    ok: bool
    ticket: str | None = None
    status: int = 202
    type: str = ""
    detail: str = ""
    retry_after_s: int = 0

    def to_dict(self) -> dict:
        if self.ok:
            return {"ok": True, "ticket": self.ticket}
        return {"ok": False, "status": self.status, "type": self.type, "detail": self.detail,
                "retry_after_s": self.retry_after_s}


@dataclass
class _Tenant:
    queued: deque[str] = field(default_factory=deque)      # job ids waiting to start, oldest first
    running: set[str] = field(default_factory=set)
    tickets: dict[str, float] = field(default_factory=dict)  # ticket -> expiry (monotonic)
    submits: deque[float] = field(default_factory=deque)     # times of recent admissions


class Admission:
    def __init__(self, defaults: Limits, max_queued_total: int, max_running_total: int,
                 limits_for: Callable[[str], dict[str, int] | None] | None = None,
                 clock: Callable[[], float] = time.monotonic, typical_job_s: float = 30.0):
        self.defaults = defaults
        self.max_queued_total = max_queued_total
        self.max_running_total = max_running_total
        self.limits_for = limits_for or (lambda tenant: None)
        self.clock = clock
        self.typical_job_s = typical_job_s
        self.tenants: OrderedDict[str, _Tenant] = OrderedDict()   # round-robin order of starts

    # -- counting ------------------------------------------------------------------------------------

    def limits(self, tenant: str) -> Limits:
        return self.defaults.merged(self.limits_for(tenant))

    def _tenant(self, tenant: str) -> _Tenant:
        state = self.tenants.get(tenant)
        if state is None:
            state = self.tenants[tenant] = _Tenant()
        return state

    def _expire(self, state: _Tenant, now: float) -> None:
        for ticket in [t for t, expiry in state.tickets.items() if expiry <= now]:
            del state.tickets[ticket]
        while state.submits and state.submits[0] <= now - RATE_WINDOW_S:
            state.submits.popleft()

    def queued_total(self) -> int:
        now = self.clock()
        total = 0
        for state in self.tenants.values():
            self._expire(state, now)
            total += len(state.queued) + len(state.tickets)
        return total

    def running_total(self) -> int:
        return sum(len(s.running) for s in self.tenants.values())

    def counts(self, tenant: str) -> dict[str, int]:
        state = self._tenant(tenant)
        self._expire(state, self.clock())
        return {"queued": len(state.queued), "reserved": len(state.tickets), "running": len(state.running)}

    # -- admission -----------------------------------------------------------------------------------

    def admit(self, tenant: str) -> Decision:
        """May ``tenant`` submit one more job now? On yes, a ticket reserves its queue slot."""
        now = self.clock()
        state = self._tenant(tenant)
        self._expire(state, now)
        limits = self.limits(tenant)
        if len(state.submits) >= limits.submits_per_minute:
            wait = state.submits[0] + RATE_WINDOW_S - now
            return Decision(False, status=429, type="rate_limited", retry_after_s=max(1, math.ceil(wait)),
                            detail=f"at most {limits.submits_per_minute} submissions per minute per tenant")
        waiting = len(state.queued) + len(state.tickets)
        free_running = max(0, limits.max_running - len(state.running))
        if waiting >= limits.max_queued + free_running:
            kind = "queue_limit" if limits.max_queued else "concurrency_limit"
            return Decision(False, status=429, type=kind, retry_after_s=self._retry_after(),
                            detail=f"this tenant already has {len(state.running)} running and {waiting} waiting "
                                   f"jobs (limits: {limits.max_running} running, {limits.max_queued} queued)")
        if self.queued_total() >= self.max_queued_total:
            return Decision(False, status=503, type="queue_full", retry_after_s=self._retry_after(),
                            detail=f"the service queue is full ({self.max_queued_total} jobs waiting)")
        ticket = secrets.token_hex(8)
        state.tickets[ticket] = now + TICKET_TTL_S
        state.submits.append(now)
        return Decision(True, ticket=ticket)

    def _retry_after(self) -> int:
        return max(1, math.ceil(self.typical_job_s))

    def observe_job_seconds(self, seconds: float) -> None:
        """Keep a running estimate of job length for Retry-After."""
        self.typical_job_s = 0.8 * self.typical_job_s + 0.2 * max(1.0, seconds)

    # -- queue ---------------------------------------------------------------------------------------

    def enqueue(self, tenant: str, job_id: str, ticket: str | None = None) -> None:
        state = self._tenant(tenant)
        if ticket is not None:
            state.tickets.pop(ticket, None)
        if job_id not in state.queued and job_id not in state.running:
            state.queued.append(job_id)

    def next_to_start(self) -> tuple[str, str] | None:
        """The next (tenant, job id) allowed to start (round-robin over tenants), marked running; or None."""
        if self.running_total() >= self.max_running_total:
            return None
        for tenant in list(self.tenants):
            state = self.tenants[tenant]
            if state.queued and len(state.running) < self.limits(tenant).max_running:
                job_id = state.queued.popleft()
                state.running.add(job_id)
                self.tenants.move_to_end(tenant)   # this tenant had its turn
                return tenant, job_id
        return None

    def remove(self, tenant: str, job_id: str) -> None:
        """The job ended (or was cancelled while queued)."""
        state = self.tenants.get(tenant)
        if state is None:
            return
        state.running.discard(job_id)
        if job_id in state.queued:
            state.queued.remove(job_id)
        if not (state.queued or state.running or state.tickets or state.submits):
            del self.tenants[tenant]

    def is_queued(self, tenant: str, job_id: str) -> bool:
        state = self.tenants.get(tenant)
        return state is not None and job_id in state.queued
