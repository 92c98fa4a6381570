"""Barriers, clocks and data-shard leases: what a worker asks the coordinator for and waits on.

``ps.barrier()`` waits for every worker; ``ps.clock()`` advances this worker's clock and,
under bsp/ssp, waits for the slowest; ``ps.data_shards(n, epoch)`` leases pieces of an
epoch's data one at a time.  :class:`Barriers` owns the state of all three and asks again
for what it waits on when the coordinator restarts (it forgot).

Clocks (docs/consistency.md has the guarantees): a worker is *at clock c* between its
c-th call of ``clock()`` returning and its next call (c = 0 before the first).  ``clock()``
first completes this worker's operations in flight, then reports c + 1; under staleness s
(bsp: s = 0) it returns only once every running worker reported c + 1 - s, that is, has
finished its clocks 0 .. c - s.  The wait is in ``clock()``, never in a pull: reads stay
one round trip, and what a pull at clock c sees follows from the order of messages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

from dynaps.client import asking
from dynaps.client.deadlines import Deadline
from dynaps.client.requests import Requests
from dynaps.contract import ConsistencyModel
from dynaps.contract.base import is_whole_number
from dynaps.errors import UsageError
from dynaps.wire import control, messages
from dynaps.wire.protocol import COORDINATOR, MsgType


class Barriers:
    """This worker's barrier generation, clock and leases (see the module docstring)."""

    def __init__(
        self,
        requests: Requests,
        new_clock: Callable[[], None] = lambda: None,
        flush: Callable[[], object] = lambda: None,
    ) -> None:
        self._requests = requests
        self._new_clock = new_clock  # a new clock or a barrier: per-clock caches are stale
        self._flush = flush  # sends updates buffered in this process (hot keys) before the wait
        self._generation = 0  # of the next barrier
        self._done = -1  # the last barrier generation everyone reached
        self._clock = 0
        self._min_clock = 0  # the slowest worker's clock
        self._leases: dict[int, int | None] = {}  # epoch -> leased shard (None: epoch done)
        self._barrier_waiting: int | None = None
        self._lease_waiting: control.Lease | None = None

    def _deadline(self, timeout: float | None) -> Deadline:
        return self._requests.deadline(timeout)

    # -------------------------------------------------------------- what the worker calls

    def join_at(self, generation: int, clock: int) -> None:
        """Join the barrier and the clock the other workers are at (we joined a running job).

        Starting at the slowest worker's clock, not 0, keeps the others from waiting while
        this worker runs through clocks they finished long ago.
        """
        self._generation = generation
        self._clock = max(self._clock, clock)
        self._min_clock = max(self._min_clock, clock)

    def barrier(self, timeout: float | None = None) -> None:
        requests = self._requests
        if requests.control[0]:
            requests.stopped()
        self._flush()
        requests.wait_all(timeout)
        generation = self._generation
        self._generation += 1
        self._new_clock()
        reached = control.Barrier(generation=generation)
        self._ask(MsgType.BARRIER, reached)
        self._barrier_waiting = generation
        try:
            asking.wait_for_answer(
                self._requests,
                lambda: self._done >= generation,
                self._deadline(timeout),
                lambda: f"barrier {generation}",
                lambda: self._ask(MsgType.BARRIER, reached),
            )
        finally:
            self._barrier_waiting = None

    def clock(self, timeout: float | None = None) -> int:
        requests = self._requests
        if requests.control[0]:
            requests.stopped()
        # Our own updates of this clock first: a worker that learns we finished it must
        # find them applied (asynchronous pushes included).
        self._flush()
        requests.wait_all(timeout)
        self._clock += 1
        self._new_clock()
        consistency = requests.config.consistency
        if consistency.model == ConsistencyModel.ASYNC:
            return self._clock  # no wait, so nobody needs our clock: no message either
        tick = control.Clock(clock=self._clock)
        self._ask(MsgType.CLOCK, tick)
        slack = consistency.staleness if consistency.model == ConsistencyModel.SSP else 0
        asking.wait_for_answer(
            self._requests,
            lambda: self._min_clock >= self._clock - slack,
            self._deadline(timeout),
            lambda: f"clock {self._clock}",
            lambda: self._ask(MsgType.CLOCK, tick),
        )
        return self._clock

    def data_shards(self, num_shards: int, epoch: int = 0, timeout: float | None = None) -> Iterator[int]:
        if not is_whole_number(num_shards) or num_shards < 1:
            raise UsageError(f"data_shards needs a whole number of shards >= 1, got {num_shards!r}")
        if not is_whole_number(epoch) or epoch < 0:
            raise UsageError(f"data_shards needs a whole epoch >= 0, got {epoch!r}")
        num_shards, epoch = int(num_shards), int(epoch)
        requests = self._requests
        finished: int | None = None
        while True:
            if requests.control[0]:
                requests.stopped()
            body = control.Lease(epoch=epoch, num_shards=num_shards, finished=finished)
            self._ask(MsgType.LEASE, body)
            self._lease_waiting = body
            try:
                asking.wait_for_answer(
                    self._requests,
                    lambda: epoch in self._leases,
                    self._deadline(timeout),
                    lambda: f"the lease of a data shard of epoch {epoch}",
                    functools.partial(self._ask, MsgType.LEASE, body),
                )
            finally:
                self._lease_waiting = None
            shard = self._leases.pop(epoch)
            if shard is None:
                return
            yield shard
            finished = shard

    def _ask(self, kind: MsgType, body: control.Barrier | control.Clock | control.Lease) -> None:
        requests = self._requests
        requests.transport.send(COORDINATOR, messages.control(kind, requests.endpoint, body))

    # -------------------------------------------------------------- what the coordinator says

    def barrier_done(self, generation: int) -> None:
        self._done = max(self._done, generation)

    def clock_min(self, clock: int) -> None:
        self._min_clock = max(self._min_clock, clock)

    def leased(self, epoch: int, shard: int | None) -> None:
        self._leases[epoch] = shard

    def repeat(self) -> None:
        """The coordinator restarted: what we wait for is gone, ask again."""
        if self._barrier_waiting is not None:
            self._ask(MsgType.BARRIER, control.Barrier(generation=self._barrier_waiting))
        if self._lease_waiting is not None:
            self._ask(MsgType.LEASE, self._lease_waiting)
        if self._clock:
            self._ask(MsgType.CLOCK, control.Clock(clock=self._clock))
