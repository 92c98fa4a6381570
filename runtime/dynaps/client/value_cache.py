"""A training process's per-clock cache of remote rows (``cache: clock`` on a table).

FlexPS calls it repetitive-get avoidance: within one clock a worker often pulls the same
remote keys again (a matrix factorisation's item in many minibatches of a block), and
under the consistency models a pull made at clock ``c`` needs no update by another worker
newer than what a pull earlier in clock ``c`` saw (bsp and ssp bound staleness by whole
clocks; async bounds nothing).  So the first pull of a remote key in a clock fetches it
and later pulls in the same clock read the copy; ``ps.clock()`` and ``ps.barrier()``
empty the cache.

A worker still reads its own writes: its pushes go out to the owner and change the cached
row the same way where the updater keeps no state (``add``, ``sgd``, a stateless custom
one: the updater itself is applied to the copy); an updater with state only the owner has
(adagrad, adam) drops the pushed keys from the cache, so their next pull fetches them.
A pull in flight while the worker pushes the same key may bring a row without that push:
such rows are not cached.  Keys this node owns are always read in place.

Memory: an int32 slot per key of the table and the rows fetched in the clock.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.store.updaters import Updater

Keys = npt.NDArray[np.int64]
Rows = npt.NDArray[Any]

EMPTY = -1  # a key's slot when it is not cached
FIRST_CAPACITY = 1024  # rows


class ClockCache:
    """Rows of remote keys fetched in the current clock (see the module docstring).

    ``updater``: applied to cached rows on a push; None drops pushed keys instead.
    """

    def __init__(self, num_keys: int, dim: int, dtype: np.dtype[Any], updater: Updater | None) -> None:
        self.slot = np.full(num_keys, EMPTY, dtype=np.int32)
        self.rows: Rows = np.empty((FIRST_CAPACITY, dim), dtype=dtype)
        self.keys: Keys = np.empty(FIRST_CAPACITY, dtype=np.int64)  # per used slot: its key
        self.used = 0
        self.updater = updater
        self.generation = 0  # of the clock: a fetch begun in an older one is not cached
        self.fetching = 0  # fetches in flight in this clock
        self.dirty = np.zeros(num_keys, dtype=np.bool_)  # pushed while a fetch was in flight
        self.dirty_keys: list[Keys] = []

    def __len__(self) -> int:
        """How many keys are cached."""
        cached = self.keys[: self.used]
        return len(np.unique(cached[self.slot[cached] != EMPTY]))

    def lookup(self, keys: Keys) -> tuple[npt.NDArray[np.bool_], Rows]:
        """Which of ``keys`` are cached, and their rows (in the order of the hits)."""
        slots = self.slot[keys]
        hit = slots != EMPTY
        return hit, self.rows.take(slots[hit], axis=0)

    def begin_fetch(self) -> int:
        """A pull of keys not cached is sent; returns what :meth:`fetched` needs back."""
        self.fetching += 1
        return self.generation

    def fetched(self, generation: int, keys: Keys, rows: Rows) -> None:
        """A fetch begun by :meth:`begin_fetch` brought ``rows``: cache them, unless the
        clock ended meanwhile or the worker pushed the key since."""
        if generation != self.generation:
            return
        self.fetching -= 1
        if self.dirty_keys:
            fresh = ~self.dirty[keys]
            keys, rows = keys[fresh], rows[fresh]
            if not self.fetching:
                self._forget_dirty()
        self.insert(keys, rows)

    def insert(self, keys: Keys, rows: Rows) -> None:
        """Remember freshly pulled ``rows`` of ``keys`` (they replace any older copy).

        A key repeated in one pull takes a slot per occurrence (the last one is used):
        cheaper than finding the repeats, and the slots are freed at the clock's end.
        """
        count = len(keys)
        if not count:
            return
        self._reserve(self.used + count)
        new = np.arange(self.used, self.used + count, dtype=np.int32)
        self.rows[new] = rows
        self.keys[new] = keys
        self.slot[keys] = new
        self.used += count

    def pushed(self, keys: Keys, updates: Rows) -> None:
        """The worker pushed ``updates`` to ``keys``: the copy changes as the owner's will."""
        self._note_dirty(keys)
        slots = self.slot[keys]
        hit = slots != EMPTY
        if not hit.any():
            return
        if self.updater is None:
            self.slot[keys[hit]] = EMPTY  # fetched again at their next pull
        else:
            self.updater.apply(self.rows, (), slots[hit].astype(np.int64), updates[hit])

    def assigned(self, keys: Keys, rows: Rows) -> None:
        """The worker set ``keys`` to ``rows``: cached rows take the new values."""
        self._note_dirty(keys)
        slots = self.slot[keys]
        hit = slots != EMPTY
        self.rows[slots[hit]] = rows[hit]

    def clear(self) -> None:
        """A new clock (or a barrier): nothing cached is fresh enough any more."""
        self.generation += 1
        self.fetching = 0
        self._forget_dirty()
        if self.used:
            self.slot[self.keys[: self.used]] = EMPTY
            self.used = 0

    def _note_dirty(self, keys: Keys) -> None:
        if self.fetching:
            self.dirty[keys] = True
            self.dirty_keys.append(keys)

    def _forget_dirty(self) -> None:
        for keys in self.dirty_keys:
            self.dirty[keys] = False
        self.dirty_keys = []

    def _reserve(self, needed: int) -> None:
        capacity = len(self.keys)
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        rows = np.empty((capacity, self.rows.shape[1]), dtype=self.rows.dtype)
        rows[: self.used] = self.rows[: self.used]
        keys = np.empty(capacity, dtype=np.int64)
        keys[: self.used] = self.keys[: self.used]
        self.rows, self.keys = rows, keys
