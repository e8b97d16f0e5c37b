"""The Diffusion router's load book: requests routed together spread, sends and completions move the counts."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

from deployments.routing import LEAST_LOADED_ROUTER, ROUTED_TTL_S, LeastLoadedRouter, LoadBook


def _request() -> SimpleNamespace:
    return SimpleNamespace(future=Future())


def _route(book: LoadBook, replicas=("a", "b"), reported=lambda replica: 0) -> tuple[SimpleNamespace, str]:
    request = _request()
    best = book.rank(replicas, reported)[0]
    book.choose(request, best)
    return request, best


def test_requests_routed_together_spread_before_any_is_sent():
    book = LoadBook()
    chosen = [_route(book)[1] for _ in range(4)]
    assert sorted(chosen[:2]) == ["a", "b"] and sorted(chosen) == ["a", "a", "b", "b"]
    assert book.routed == 4


def test_a_request_counts_where_it_was_given_then_in_flight_until_completed():
    book = LoadBook()
    request, _ = _route(book, replicas=["a"])
    request.future.set_result("b")                     # another routing task gave it replica b
    assert (book.load("a"), book.load("b")) == (0, 1)
    book.sent("b")
    assert (book.load("b"), book.routed) == (1, 0)     # counted once: now in flight
    book.completed("b")
    book.completed("b")                                # a spare completion never goes below zero
    assert book.load("b") == 0


def test_cancelled_and_stale_requests_stop_counting():
    now = [0.0]
    book = LoadBook(clock=lambda: now[0])
    cancelled, _ = _route(book, replicas=["a"])
    cancelled.future.cancel()
    _route(book, replicas=["b"])
    assert book.rank(["a", "b"], lambda replica: 0)[0] == "a" and book.routed == 1
    now[0] = ROUTED_TTL_S + 1                          # routed, never sent: the caller went away
    assert book.rank(["a", "b"], lambda replica: 0) and book.routed == 0


def test_the_book_ranks_first_and_the_reported_queue_breaks_ties():
    book = LoadBook()
    reported = {"a": 3, "b": 0}
    assert book.rank(["a", "b"], reported.get) == ["b", "a"]
    book.sent("b")
    assert book.rank(["a", "b"], reported.get) == ["a", "b"]


def test_the_configured_router_path_names_the_class():
    module, _, name = LEAST_LOADED_ROUTER.partition(":")
    assert module == LeastLoadedRouter.__module__ and name == LeastLoadedRouter.__name__
