"""Replicated hot keys (``table.replicate(keys, sync_ms=...)``): NuPS-style replication.

Keys that several workers use all the time (a knowledge graph's hub entities, a corpus's
frequent words) lose under relocation: every worker localizes them ahead, each takes them
from the others, and the accesses that find them gone go remote.  NuPS (Renz-Wieland et
al., SIGMOD'22) replicates such keys instead and relocates only the rest.  Here a table's
declared hot keys get a replica in the training process:

* reads of hot keys are served from the replica (no lock, no message);
* pushes to hot keys are summed into a local buffer; the buffer is flushed to the keys'
  owners as one ordinary push (the wire, authentication and exactly-once records are
  those of any push), at most every ``sync_ms`` milliseconds while the worker calls the
  table, and always before ``ps.clock()``, ``ps.barrier()``, ``ps.wait_all()`` and
  ``ps.close()`` complete and before a draining node's worker stops;
* after each flush the replica is refreshed with one asynchronous pull of every hot key;
  the next flush waits for that pull, so the replica is never more than about two sync
  intervals behind its owners while the worker keeps calling; after a clock or a barrier
  the next read of a hot key first refreshes the replica synchronously (so the clock
  guarantees of bsp/ssp hold for hot keys too: docs/consistency.md), and the next timed
  sync comes an interval after that refresh;
* ``localize`` leaves hot keys where they are (they are never relocated by this worker);
* ``set`` on hot keys first flushes the buffer and waits for it, then sets as usual and
  writes the new rows into the replica.

Summing pushes before the owner applies them is exact for additive updaters (``add``,
``sgd``); for ``adagrad``/``adam`` the owner takes one step with the summed gradient
instead of one per push (as NuPS and every batching PS do).

Memory: an int32 slot per key of the table, and two rows per hot key (replica and buffer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.client.handles import Array, Handle, Keys
from dynaps.errors import UsageError
from dynaps.store import updaters, usage
from dynaps.wire.protocol import MsgType

NOT_HOT = -1  # a key's slot when it is not replicated
MAX_SYNC_MS = 60_000.0  # longer would let acknowledged pushes sit unapplied for minutes
MIN_SYNC_MS = 0.1


@dataclass(frozen=True)
class Paths:
    """How a table serves keys that are not replicated (the table's ordinary paths)."""

    pull: Callable[[Keys, bool], Array | Handle]  # (checked keys, wait)
    update: Callable[[MsgType, Keys, Array, bool], Handle | None]  # (kind, keys, rows, wait)
    localize: Callable[[Keys, bool], Handle | None]
    room: Callable[[], None]  # wait for room for a request before a flush empties the buffer
    done: Callable[[MsgType, Array | None], Handle]  # an operation completed in place
    wait: Callable[[Handle], Array | None]
    counters: Any  # the table's usage row (dynaps.store.usage): replica reads count as cached


def hot_key_set(keys: Any, num_keys: int, table: str) -> Keys:
    """Validate the keys an app declares hot: integers in range, at most ``num_keys``."""
    array = np.asarray(keys)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise UsageError(
            f"hot keys of table {table!r} must be a one-dimensional array of integers, "
            f"got shape {array.shape} and dtype {array.dtype}"
        )
    unique = np.unique(array.astype(np.int64))
    if len(unique) and (unique[0] < 0 or unique[-1] >= num_keys):
        bad = unique[(unique < 0) | (unique >= num_keys)]
        raise UsageError(
            f"{len(bad)} hot keys are outside table {table!r}, whose keys are [0, {num_keys}), "
            f"e.g. {int(bad[0])}"
        )
    return unique


def sync_seconds(sync_ms: Any, table: str) -> float:
    """Validate ``sync_ms`` (a number in [MIN_SYNC_MS, MAX_SYNC_MS]) and return seconds."""
    try:
        value = float(sync_ms)
    except (TypeError, ValueError):
        value = float("nan")
    if not MIN_SYNC_MS <= value <= MAX_SYNC_MS:
        raise UsageError(
            f"sync_ms for the hot keys of table {table!r} must be a number of milliseconds in "
            f"[{MIN_SYNC_MS}, {MAX_SYNC_MS:.0f}], got {sync_ms!r}"
        )
    return value / 1000.0


class HotKeys:
    """One table's replicated hot keys in this training process (see the module docstring)."""

    def __init__(
        self, paths: Paths, keys: Keys, num_keys: int, dim: int, dtype: np.dtype[Any], sync: float
    ) -> None:
        self._paths = paths
        self.keys = keys  # sorted, unique
        self.slot = np.full(num_keys, NOT_HOT, dtype=np.int32)
        self.slot[keys] = np.arange(len(keys), dtype=np.int32)
        self.values: Array = np.zeros((len(keys), dim), dtype=dtype)  # the replica
        self.pending: Array = np.zeros((len(keys), dim), dtype=dtype)  # summed pushes not flushed
        self.touched = np.zeros(len(keys), dtype=np.bool_)  # which slots ``pending`` holds
        self.any_pending = False
        self.sync = sync  # seconds between flushes
        self.last_sync = time.monotonic()
        self.refreshing: Handle | None = None  # the refresh pull in flight
        self.generation = 0  # of the clock: a refresh begun in an older one is not installed
        self.stale = True  # refresh before the next read (set at clocks and barriers)
        self.stats = {"hot_reads": 0, "hot_pushes": 0, "flushes": 0, "refreshes": 0}

    # -------------------------------------------------------------- the table's operations

    def pull(self, keys: Keys, wait: bool) -> Array | Handle:
        slots = self.slot[keys]
        hot = slots != NOT_HOT
        if not hot.any():
            self._tick()
            return self._paths.pull(keys, wait)
        if self.stale:
            self.refresh(wait=True)
        else:
            self._tick()
        read = int(hot.sum())
        self.stats["hot_reads"] += read
        counters = self._paths.counters
        counters[usage.PULLED_CACHED] += read
        if read == len(keys):
            counters[usage.PULLS] += 1
            out = self.values.take(slots, axis=0)
            return out if wait else self._paths.done(MsgType.PULL, out)
        cold = np.flatnonzero(~hot)
        hot_at = np.flatnonzero(hot)
        hot_rows = self.values.take(slots[hot_at], axis=0)  # read now: the replica may change
        part = self._paths.pull(keys[cold], wait)
        if isinstance(part, np.ndarray):
            return _merged(len(keys), cold, part, hot_at, hot_rows)
        assert isinstance(part, Handle)
        if part.done():
            cold_rows = self._paths.wait(part)
            assert cold_rows is not None
            return self._paths.done(MsgType.PULL, _merged(len(keys), cold, cold_rows, hot_at, hot_rows))

        part.then(lambda values: _merged(len(keys), cold, values, hot_at, hot_rows))
        return part

    def push(self, kind: MsgType, keys: Keys, rows: Array, wait: bool) -> Handle | None:
        slots = self.slot[keys]
        hot = slots != NOT_HOT
        if not hot.any():
            handle = self._paths.update(kind, keys, rows, wait)
            self._tick()
            return handle
        if kind is MsgType.SET:
            # buffered pushes were made before this set: they reach the owner first
            self.flush(wait=True)
            handle = self._paths.update(kind, keys, rows, wait)
            self.values[slots[hot]] = rows[hot]
            return handle
        # summed in place (rows of one key may repeat): numpy's row-wise add.at took 140 us
        # for a KGE minibatch's 256 relation rows, the flattened form 30
        at = slots[hot].astype(np.int64)
        updaters.scatter_add(self.pending, at, rows[hot])
        self.touched[at] = True
        self.any_pending = True
        self.stats["hot_pushes"] += int(hot.sum())
        handle = None
        if not hot.all():
            cold = np.flatnonzero(~hot)
            handle = self._paths.update(kind, keys[cold], rows[cold], False)
        if wait:  # a synchronous push returns once the owners applied it: flush now
            self.flush(wait=True)
            if handle is not None:
                self._paths.wait(handle)
            return None
        self._tick()
        return handle if handle is not None else self._paths.done(kind, None)

    def localize(self, keys: Keys, wait: bool) -> Handle | None:
        cold = keys[self.slot[keys] == NOT_HOT]
        return self._paths.localize(cold, wait)

    def local_mask(self, keys: Keys) -> npt.NDArray[np.bool_]:
        """Which keys this process reads in place (its replica)."""
        mask: npt.NDArray[np.bool_] = self.slot[keys] != NOT_HOT
        return mask

    # -------------------------------------------------------------- synchronisation

    def flush(self, wait: bool = False) -> bool:
        """Send the summed pushes to the keys' owners (one ordinary push); False if none."""
        if not self.any_pending:
            return False
        self._paths.room()  # may wait or raise: the buffer is still whole then
        at = np.flatnonzero(self.touched)
        rows = self.pending[at]  # a copy (fancy indexing): the buffer is reused at once
        self.pending[at] = 0
        self.touched[at] = False
        self.any_pending = False
        self.stats["flushes"] += 1
        self._paths.update(MsgType.PUSH, self.keys[at], rows, wait)
        return True

    def refresh(self, wait: bool) -> None:
        """Pull every hot key from its owner into the replica."""
        self.stats["refreshes"] += 1
        generation = self.generation
        if wait:
            values = self._paths.pull(self.keys, True)
            assert isinstance(values, np.ndarray)
            self._install(generation, values)
            # the replica is as fresh as a timed sync leaves it: the next one is an interval
            # away (else the first push after a barrier's refresh pulled everything again)
            self.last_sync = time.monotonic()
            return
        handle = self._paths.pull(self.keys, False)
        if isinstance(handle, np.ndarray):
            self._install(generation, handle)
            return
        if handle.done():
            rows = self._paths.wait(handle)
            assert rows is not None
            self._install(generation, rows)
            return

        def done(values: Array) -> Array:
            self._install(generation, values)
            if self.refreshing is handle:
                self.refreshing = None
            return values

        handle.then(done)
        self.refreshing = handle

    def new_clock(self) -> None:
        """A clock or a barrier passed: the replica must be refreshed before it is read."""
        self.generation += 1
        self.stale = True
        self.refreshing = None

    def _install(self, generation: int, values: Array) -> None:
        if generation == self.generation:
            self.values[:] = values
            self.stale = False

    def _tick(self) -> None:
        """Every ``sync`` seconds: flush, and refresh the replica (after the last refresh landed)."""
        now = time.monotonic()
        if now - self.last_sync < self.sync:
            return
        self.last_sync = now
        self.flush()
        previous = self.refreshing
        if previous is not None:
            self._paths.wait(previous)  # bounds the replica's age to about two intervals
        self.refresh(wait=False)


def _merged(
    n: int, cold: npt.NDArray[np.intp], cold_rows: Array, hot: npt.NDArray[np.intp], hot_rows: Array
) -> Array:
    out = np.empty((n, hot_rows.shape[1]), dtype=hot_rows.dtype)
    out[cold] = cold_rows
    out[hot] = hot_rows
    return out
