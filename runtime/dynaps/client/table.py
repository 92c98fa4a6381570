"""The user's view of one table: :class:`Table` (``pull/push/set/localize``).

A :class:`Table` checks the caller's arguments (:mod:`dynaps.client.arguments`) and takes
the one-key shortcuts (a key our node owns, read or updated inline); the rest of a pull,
push or set goes to :class:`~dynaps.client.key_paths.KeyPaths` (keys owned here served in
place, the others requested through :class:`~dynaps.client.requests.Requests`).  A
localize goes to :mod:`dynaps.client.localize`, replicated hot keys to
:mod:`dynaps.client.hot_keys`, sampling to :mod:`dynaps.client.sampling`.
"""

from __future__ import annotations

import time
from typing import Any, Literal, SupportsIndex, overload

import numpy as np
import numpy.typing as npt

from dynaps.client import hot_keys, sampling
from dynaps.client.arguments import Arguments
from dynaps.client.handles import Array, Handle, Keys
from dynaps.client.holdings import Holdings
from dynaps.client.key_paths import KeyPaths
from dynaps.client.localize import Localizer
from dynaps.client.requests import Requests
from dynaps.client.value_cache import ClockCache
from dynaps.contract import Allocation, TableCache
from dynaps.errors import UsageError
from dynaps.store import updaters, usage
from dynaps.store.table_store import TableStore
from dynaps.wire.protocol import MsgType

_monotonic = time.monotonic  # a module global: the one-key push tests it on every call


class Table:
    """A handle on a declared table: ``num_keys`` rows of ``dim`` values of ``dtype``."""

    def __init__(self, requests: Requests, index: int, store: TableStore, holdings: Holdings) -> None:
        self._requests = requests
        self._localizer = Localizer(requests, index, store, holdings)
        self._index = index
        self._store = store
        self._node = requests.node
        self._lock = requests.lock  # shared with the node: taken around every access to the store
        # byte 0 of the control block: not 0 once our node drains or no longer counts
        self._control = requests.own.block.state
        # under write-back, a local update waits for a look at our node's stamp (KeyPaths)
        self._watch_node = requests.own.watched
        # this table's counters, shared with our node (dynaps.store.usage): one word each
        self._usage = requests.usage.rows[index]
        self._write_through = requests.write_through
        self._static = requests.config.allocation == Allocation.STATIC
        self._sampling: sampling.SamplingStrategy | None = None  # set_sampler's choice
        self._cache: ClockCache | None = None
        if store.spec.cache == TableCache.CLOCK:
            stateless = store.updater if store.updater.num_states == 0 else None
            self._cache = ClockCache(store.spec.num_keys, store.spec.dim, store.layout.dtype, stateless)
        self._paths = KeyPaths(requests, index, store, self._cache)
        self._hot: hot_keys.HotKeys | None = None  # replicate()'s replica of hot keys
        self.name = store.name
        self.num_keys = store.spec.num_keys
        self.dim = store.spec.dim
        self.dtype: np.dtype[Any] = store.layout.dtype
        self.updater_spec = store.spec.updater  # what a push does on the owner (apps check it)
        self._row_shape = (self.dim,)  # what pull_one's ``out`` and push_one's row must be
        self._arguments = Arguments(self.name, self.num_keys, self.dim, self.dtype)
        # the owners array (the store keeps it for its life) read without a numpy scalar
        self._owner_of = store.loc.data

    def __repr__(self) -> str:
        return f"<Table {self.name!r} num_keys={self.num_keys} dim={self.dim} dtype={self.dtype}>"

    # -------------------------------------------------------------- argument checks

    def _keys(self, keys: Any) -> Keys:
        if self._control[0]:  # our node is draining, or was declared lost
            self._requests.stopped()
        return self._arguments.keys(keys)

    # -------------------------------------------------------------- operations

    @overload
    def pull(self, keys: Any, *, wait: Literal[True] = ...) -> Array: ...
    @overload
    def pull(self, keys: Any, *, wait: Literal[False]) -> Handle: ...
    @overload
    def pull(self, keys: Any, *, wait: bool) -> Array | Handle: ...

    def pull(self, keys: Any, *, wait: bool = True) -> Array | Handle:
        """The values of ``keys`` as an (n, dim) array; with ``wait=False`` a Handle."""
        keys = self._keys(keys)
        if self._hot is not None:
            return self._hot.pull(keys, wait)
        return self._paths.pull(keys, wait)

    @overload
    def push(self, keys: Any, updates: Any, *, wait: Literal[True] = ...) -> None: ...
    @overload
    def push(self, keys: Any, updates: Any, *, wait: Literal[False]) -> Handle: ...
    @overload
    def push(self, keys: Any, updates: Any, *, wait: bool) -> Handle | None: ...

    def push(self, keys: Any, updates: Any, *, wait: bool = True) -> Handle | None:
        """Apply ``updates`` (n, dim) to ``keys`` with the table's updater (default: add)."""
        return self._update(MsgType.PUSH, keys, updates, wait)

    @overload
    def set(self, keys: Any, values: Any, *, wait: Literal[True] = ...) -> None: ...
    @overload
    def set(self, keys: Any, values: Any, *, wait: Literal[False]) -> Handle: ...
    @overload
    def set(self, keys: Any, values: Any, *, wait: bool) -> Handle | None: ...

    def set(self, keys: Any, values: Any, *, wait: bool = True) -> Handle | None:
        """Assign ``values`` (n, dim) to ``keys``; if a key repeats, one of its rows wins."""
        return self._update(MsgType.SET, keys, values, wait)

    # One key per call (Lapse's granularity): a call's fixed cost is all its cost, so a key
    # given as a Python int, owned here, skips the one-key array, the argument conversions
    # and the (1, dim) row. Anything else (a key elsewhere or on its way here, hot keys,
    # write-through, a draining or lost node, one that has not run lately under write-back,
    # another dtype or shape) takes the general path.

    def pull_one(self, key: SupportsIndex, out: Array | None = None) -> Array:
        """The value of one ``key``, a ``(dim,)`` row: ``pull([key])[0]``, synchronous.

        With ``out`` (a writeable ``(dim,)`` array) the row is written there and ``out`` is
        returned: a loop can pull into rows of one preallocated array.
        """
        if (
            type(key) is int
            and 0 <= key < self.num_keys
            and (
                out is None
                or (type(out) is np.ndarray and out.dtype is self.dtype and out.shape == self._row_shape)
            )
            and not self._control[0]
            and self._hot is None
        ):
            store, lock = self._store, self._lock
            lock.acquire()
            try:
                here = self._owner_of[key] == self._node
                if here:
                    if out is None:
                        row: Array = store.values[key].copy()
                    else:
                        row = out
                        try:
                            out[...] = store.values[key]  # of out's shape and dtype: a plain copy
                        except ValueError:  # ``out`` is read-only: the general path says so
                            here = False
            finally:
                lock.release()
            if here:
                counters = self._usage
                counters[usage.PULLS] += 1
                counters[usage.PULLED_LOCAL] += 1
                return row
        keys = self._arguments.one_key(key)
        if out is not None:
            self._arguments.out(out)
        pulled: Array = self.pull(keys)[0]
        if out is None:
            return pulled
        np.copyto(out, pulled, casting="same_kind")
        return out

    def push_one(self, key: SupportsIndex, update: Any) -> None:
        """Apply ``update``, one ``(dim,)`` row, to one ``key`` with the table's updater:
        ``push([key], [update])``, synchronous."""
        if (
            type(key) is int
            and 0 <= key < self.num_keys
            and type(update) is np.ndarray
            and update.dtype is self.dtype
            and update.shape == self._row_shape
            and not self._control[0]
            and self._hot is None
            and not self._write_through
            and (not self._watch_node or _monotonic() <= self._paths.node_ran_until)
        ):
            store, lock = self._store, self._lock
            lock.acquire()
            try:
                here = self._owner_of[key] == self._node
                if here:
                    updaters.apply_one(store.updater, store.values, store.states, key, update)
                    if store.dirty is not None:
                        store.dirty[key] = 1  # replication: our node writes it back
            finally:
                lock.release()
            if here:
                counters = self._usage
                counters[usage.PUSHES] += 1
                counters[usage.PUSHED_LOCAL] += 1
                return
        self._update(MsgType.PUSH, self._arguments.one_key(key), update, True)

    def _update(self, kind: MsgType, keys: Any, rows: Any, wait: bool) -> Handle | None:
        what = "updates" if kind is MsgType.PUSH else "values"
        keys = self._keys(keys)
        rows = self._arguments.rows(rows, len(keys), what)
        if self._hot is not None:
            return self._hot.push(kind, keys, rows, wait)
        return self._paths.update(kind, keys, rows, wait)

    @overload
    def localize(self, keys: Any, *, wait: Literal[True] = ...) -> None: ...
    @overload
    def localize(self, keys: Any, *, wait: Literal[False]) -> Handle: ...
    @overload
    def localize(self, keys: Any, *, wait: bool) -> Handle | None: ...

    def localize(self, keys: Any, *, wait: bool = True) -> Handle | None:
        """Move ownership of ``keys`` to this node; later accesses to them are local.

        With ``allocation: static`` keys never move and this returns at once.
        """
        keys = self._keys(keys)
        if self._hot is not None:
            return self._hot.localize(keys, wait)  # hot keys stay where they are
        return self._localizer.localize(keys, wait)

    # -------------------------------------------------------------- sampling (see dynaps.client.sampling)

    def set_sampler(self, sampler: Any = None, strategy: str = "naive", **options: Any) -> None:
        """Choose what ``prepare_sample`` draws (a ``dynaps.Distribution`` or
        ``fn(rng, n) -> keys``; default uniform) and how: naive, preloc, pool or onlylocal."""
        self._sampling = sampling.make_strategy(self, sampler, strategy, **options)

    def prepare_sample(self, n: int) -> Any:
        """Announce ``n`` draws from the sampler; returns a handle for ``pull_sample``."""
        if self._sampling is None:
            self._sampling = sampling.make_strategy(self)  # uniform, naive
        return self._sampling.prepare(n)

    def pull_sample(self, handle: Any, k: int) -> tuple[Keys, Array]:
        """The next ``k`` draws of ``handle`` and their values: ``(keys, (k, dim) array)``."""
        if self._sampling is None:
            raise UsageError(f"pull_sample on table {self.name!r} needs a handle from prepare_sample")
        return self._sampling.pull(handle, k)

    def finish_sample(self, handle: Any) -> None:
        """Release ``handle``; under the pool strategy its unused draws go back to the pool."""
        if self._sampling is not None:
            self._sampling.finish(handle)

    @property
    def cached(self) -> bool:
        """Whether repeated pulls of remote keys within a clock are served from a copy."""
        return self._cache is not None

    def clear_cache(self) -> None:
        """Forget the rows cached in this clock (``ps.clock()`` and ``ps.barrier()`` call it)."""
        if self._cache is not None:
            self._cache.clear()

    # -------------------------------------------------------------- hot keys (see dynaps.client.hot_keys)

    def replicate(self, keys: Any, *, sync_ms: float = 20.0) -> None:
        """Replicate ``keys`` in this process (NuPS): read locally, pushes summed and sent to
        their owners at most every ``sync_ms`` ms and at every clock, barrier and wait_all;
        never relocated.  An empty ``keys`` stops replicating (after a flush)."""
        sync = hot_keys.sync_seconds(sync_ms, self.name)
        chosen = hot_keys.hot_key_set(keys, self.num_keys, self.name)
        if self._cache is not None:
            raise UsageError(
                f"table {self.name!r} has cache: clock; replicated hot keys replace it (drop one of them)"
            )
        self.flush_hot(wait=True)
        if not len(chosen):
            self._hot = None
            return
        requests = self._requests
        paths = hot_keys.Paths(
            pull=self._paths.pull,
            update=self._paths.update,
            localize=self._localizer.localize,
            room=requests.make_room,
            done=lambda kind, out: requests.done_handle(kind, self.name, out),
            wait=requests.wait,
            counters=self._usage,
        )
        self._hot = hot_keys.HotKeys(paths, chosen, self.num_keys, self.dim, self.dtype, sync)
        self._hot.refresh(wait=True)

    @property
    def hot_stats(self) -> dict[str, int]:
        """Counters of the replicated hot keys (empty when none are replicated)."""
        return {} if self._hot is None else dict(self._hot.stats, hot_keys=len(self._hot.keys))

    def flush_hot(self, wait: bool = False) -> bool:
        """Send the pushes to hot keys buffered here to their owners (``wait``: until applied);
        False when there were none."""
        return self._hot is not None and self._hot.flush(wait)

    def hot_new_clock(self) -> None:
        """A clock or barrier passed: refresh the hot keys' replica before it is read again."""
        if self._hot is not None:
            self._hot.new_clock()

    @property
    def static_allocation(self) -> bool:
        """True when keys never move to workers (``allocation: static``)."""
        return self._static

    def local_mask(self, keys: Any) -> npt.NDArray[np.bool_]:
        """Which of ``keys`` this node owns now (a hint: keys may move right after)."""
        keys = self._keys(keys)
        mask: npt.NDArray[np.bool_] = self._store.loc[keys] == self._node
        if self._hot is not None:
            mask |= self._hot.local_mask(keys)  # read from this process's replica
        return mask
