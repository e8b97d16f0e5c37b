"""Least-loaded routing for the Diffusion deployment.

Serve's default router (power of two choices over cached queue lengths) decides each request on its own. When
the job manager sends a step's windows together, their routing runs concurrently, each sees the same cached
lengths, and two windows of a lone job can land on one replica (which computes them one after the other)
while the other replica idles.

:class:`LeastLoadedRouter` keeps its own book: per replica, the requests it sent and has not seen complete,
plus those it has routed there and not yet sent. Each request goes to the replica with the fewest, so requests
routed together spread. Ties go to the replica with the shorter reported queue (work from other routers),
then to a random one. :class:`LoadBook` is that book, pure Python, unit-tested without Ray.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

LEAST_LOADED_ROUTER = "deployments.routing:LeastLoadedRouter"    # as request_router_config names it
ROUTED_TTL_S = 30.0    # routing to sending takes milliseconds: a request routed longer ago was dropped


class LoadBook:
    """Per replica: requests sent and not yet completed, plus requests routed to it and not yet sent.

    A request is anything with a ``future`` (Serve's PendingRequest: the future is replaced on a retry and
    resolves to the replica the request was given). While it is unresolved, a request counts on the replica
    it was last chosen for; once resolved, on the replica it was given, until a send there takes it over; once
    cancelled, nowhere."""

    def __init__(self, replica_key: Callable[[Any], Hashable] = lambda replica: replica,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._replica_key = replica_key
        self._clock = clock
        self._in_flight: Counter[Hashable] = Counter()
        self._routed: dict[int, tuple[Any, Hashable, float]] = {}    # id(request) -> request, choice, since

    def load(self, replica: Hashable) -> int:
        return self._in_flight[replica] + sum(1 for request, choice, _ in self._routed.values()
                                              if self._counted_on(request, choice) == replica)

    def rank(self, replicas: Iterable[Hashable], reported: Callable[[Hashable], int]) -> list[Hashable]:
        """Replicas from least to most loaded: by this book, then by ``reported`` queue length, then at random."""
        self._forget_stale()
        shuffled = list(replicas)
        random.shuffle(shuffled)
        return sorted(shuffled, key=lambda replica: (self.load(replica), reported(replica)))

    def choose(self, request: Any, replica: Hashable) -> None:
        """``request`` was chosen for ``replica`` (replacing an earlier choice for it)."""
        self._routed[id(request)] = (request, replica, self._clock())

    def sent(self, replica: Hashable) -> None:
        """A request went to ``replica``: it is in flight there, and one request given that replica is sent."""
        self._in_flight[replica] += 1
        for key, (request, choice, _) in self._routed.items():
            if request.future.done() and self._counted_on(request, choice) == replica:
                del self._routed[key]
                break

    def completed(self, replica: Hashable) -> None:
        if self._in_flight[replica] > 0:
            self._in_flight[replica] -= 1

    @property
    def routed(self) -> int:
        """Requests chosen or given a replica and not yet sent."""
        return len(self._routed)

    def _counted_on(self, request: Any, choice: Hashable) -> Hashable | None:
        future = request.future
        if not future.done():
            return choice
        if future.cancelled() or future.exception() is not None:
            return None
        return self._replica_key(future.result())

    def _forget_stale(self) -> None:
        now = self._clock()
        for key in [key for key, (request, choice, since) in self._routed.items()
                    if self._counted_on(request, choice) is None or now - since > ROUTED_TTL_S]:
            del self._routed[key]


class LeastLoadedRouter(FIFOMixin, RequestRouter):
    """Serve request router over a :class:`LoadBook` (configured in ``request_router_config``). Requests are
    fulfilled in FIFO order: concurrent calls from one replica request share an internal request id."""

    def initialize_state(self, **kwargs: Any) -> None:
        self.book = LoadBook(replica_key=lambda replica: replica.replica_id)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        by_id = {replica.replica_id: replica for replica in candidate_replicas}
        ranked = self.book.rank(by_id, lambda rid: self.replica_queue_len_cache.get(rid) or 0)
        if pending_request is not None and ranked:
            self.book.choose(pending_request, ranked[0])
        # the first rank is tried first; the others only when it turns out full
        return [[by_id[rid]] for rid in ranked]

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        self.book.sent(replica_id)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.book.completed(replica_id)
