"""Admission: per-tenant quotas, the global queue bound, tickets and fair start order (pure Python)."""

from __future__ import annotations

from deployments.admission import RATE_WINDOW_S, TICKET_TTL_S, Admission, Limits


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(limits: Limits = Limits(max_running=1, max_queued=2, submits_per_minute=100), total_queue: int = 100,
         total_running: int = 10, overrides=None) -> tuple[Admission, Clock]:
    clock = Clock()
    return Admission(limits, total_queue, total_running, limits_for=overrides, clock=clock), clock


def submit(admission: Admission, tenant: str, job_id: str) -> None:
    decision = admission.admit(tenant)
    assert decision.ok, decision
    admission.enqueue(tenant, job_id, decision.ticket)


def test_tenant_queue_limit_is_429_and_frees_when_a_job_ends():
    admission, _ = make()
    submit(admission, "a", "j1")
    assert admission.next_to_start() == ("a", "j1")
    submit(admission, "a", "j2")
    submit(admission, "a", "j3")
    refused = admission.admit("a")
    assert (refused.ok, refused.status, refused.type) == (False, 429, "queue_limit")
    assert refused.retry_after_s >= 1 and "2 waiting" in refused.detail
    assert admission.admit("b").ok, "another tenant is not affected"
    admission.remove("a", "j1")
    assert admission.next_to_start() == ("a", "j2")
    assert admission.admit("a").ok


def test_zero_queue_means_a_concurrency_limit():
    admission, _ = make(Limits(max_running=2, max_queued=0, submits_per_minute=100))
    submit(admission, "a", "j1")
    submit(admission, "a", "j2")
    refused = admission.admit("a")
    assert (refused.status, refused.type) == (429, "concurrency_limit")


def test_rate_limit_with_retry_after_from_the_oldest_submission():
    admission, clock = make(Limits(max_running=10, max_queued=100, submits_per_minute=3))
    for i in range(3):
        submit(admission, "a", f"j{i}")
        clock.t += 10
    refused = admission.admit("a")
    assert (refused.status, refused.type) == (429, "rate_limited")
    assert refused.retry_after_s == RATE_WINDOW_S - 30
    clock.t += RATE_WINDOW_S - 30 + 0.1
    assert admission.admit("a").ok


def test_global_queue_bound_is_503():
    admission, _ = make(Limits(max_running=1, max_queued=10, submits_per_minute=100), total_queue=3)
    submit(admission, "a", "j1")
    submit(admission, "b", "j2")
    assert admission.admit("c").ok        # a ticket counts as queued
    refused = admission.admit("d")
    assert (refused.ok, refused.status, refused.type) == (False, 503, "queue_full")


def test_unused_tickets_expire():
    admission, clock = make(Limits(max_running=1, max_queued=1, submits_per_minute=100))
    assert admission.admit("a").ok
    assert admission.admit("a").ok        # one queued + one free running slot
    assert not admission.admit("a").ok
    clock.t += TICKET_TTL_S + 1
    assert admission.admit("a").ok


def test_start_order_is_round_robin_and_respects_running_limits():
    admission, _ = make(Limits(max_running=2, max_queued=10, submits_per_minute=100), total_running=3)
    for i in range(4):
        submit(admission, "big", f"b{i}")
    submit(admission, "small", "s0")
    started = [admission.next_to_start() for _ in range(4)]
    assert started == [("big", "b0"), ("small", "s0"), ("big", "b1"), None]   # 3 running at most
    admission.remove("small", "s0")
    assert admission.next_to_start() is None, "big already runs its 2"
    admission.remove("big", "b0")
    assert admission.next_to_start() == ("big", "b2")


def test_per_tenant_overrides():
    admission, _ = make(overrides=lambda tenant: {"max_queued": 0, "max_running": 1} if tenant == "trial" else None)
    submit(admission, "trial", "t1")
    assert admission.admit("trial").type == "concurrency_limit"
    assert admission.limits("paid") == admission.defaults
