"""A table's data paths: keys our node owns served in place, the rest requested.

:class:`~dynaps.client.table.Table` checks the caller's arguments and takes the one-key
shortcuts; :class:`KeyPaths` does the rest of a pull, push or set of checked keys.  Keys
our node owns are read or updated in place, under the lock shared with the node (inline:
the local path is the hot path); the others go to
:class:`~dynaps.client.requests.Requests` (one request per owner, replies into a
:class:`~dynaps.client.handles.Handle`), through the per-clock copy of a cached table
(:mod:`dynaps.client.value_cache`).  The replicated hot keys
(:mod:`dynaps.client.hot_keys`) sit above these paths and use them for the keys they do
not hold.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.client.handles import Array, Handle, Keys
from dynaps.client.requests import Requests
from dynaps.client.value_cache import ClockCache
from dynaps.contract import UpdaterKind
from dynaps.store import usage
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.store.updaters import sum_repeats
from dynaps.wire.protocol import MsgType

_monotonic = time.monotonic
# A remote pull or push of this many keys or more sends each distinct key once, when at
# most REPEATS_PAY of them are distinct: finding the repeats costs a sort (0.4 ms for
# 16,000 keys), sending them a row each on both sides (encoding, authentication, copies).
DEDUPLICATE_FROM = 32
REPEATS_PAY = 0.9


class KeyPaths:
    """The pull and update paths of one table in this training process."""

    def __init__(self, requests: Requests, index: int, store: TableStore, cache: ClockCache | None) -> None:
        self._requests = requests
        self._index = index
        self._store = store
        self._cache = cache
        self._node = requests.node
        self._lock = requests.lock  # shared with the node: taken around every access to the store
        # this table's counters, shared with our node (dynaps.store.usage): one word each
        self._usage = requests.usage.rows[index]
        self._write_through = requests.write_through
        # under write-back, local updates are applied only while our node ran recently (it
        # writes them back): until this time, then we look at its stamp again
        self._watch_node = requests.own.watched
        self.node_ran_until = 0.0
        self.name = store.name
        self.dim = store.spec.dim
        self.dtype: np.dtype[Any] = store.layout.dtype
        # built-in updaters sum a push's repeated keys before their step; a custom one may not
        self._sums_repeats = store.spec.updater.kind != UpdaterKind.CUSTOM

    def pull(self, keys: Keys, wait: bool) -> Array | Handle:
        """The values of checked ``keys``: in place where our node owns them, else requested."""
        self._requests.make_room()  # before anything changes (see RequestIds.make_room)
        store, node = self._store, self._node
        n = len(keys)
        lock = self._lock
        lock.acquire()
        try:
            own = store.loc[keys]
            if n == 1:  # one entry per call: no array reductions, ``take`` copies fastest
                dest = own.item(0)
                if dest == node:
                    out = store.values.take(keys, axis=0)
                    dest = -2
            else:
                mine = own == node
                if mine.all():
                    out = store.values.take(keys, axis=0)
                    dest = -2
                elif mine.any():
                    dest = -3  # some here, some elsewhere
                    out = np.empty((n, self.dim), dtype=self.dtype)
                    local = np.flatnonzero(mine)
                    out[local] = store.values.take(keys[local], axis=0)
                else:
                    dest = int(own[0])
                    if not (own == dest).all():
                        dest = -3
                        out = np.empty((n, self.dim), dtype=self.dtype)
        finally:
            lock.release()
        counters = self._usage
        counters[usage.PULLS] += 1
        if dest == -2:
            counters[usage.PULLED_LOCAL] += n
            return out if wait else self._requests.done_handle(MsgType.PULL, self.name, out)
        if self._cache is not None:
            return self._pull_cached(keys, own, wait)
        requests = self._requests
        if dest >= 0 or dest == INCOMING:  # one destination for all keys
            counters[usage.PULLED_REMOTE] += n
            if n >= DEDUPLICATE_FROM:
                asked, inverse = _once_each(keys)
                if inverse is not None:
                    return self._pull_once_each(asked, inverse, own, None, None, wait)
            handle = requests.new_handle(MsgType.PULL, self._index, self.name, keys, None, n)
            requests.send_whole(MsgType.PULL, dest, self._index, handle.req_id, keys)
            return _pulled(requests, handle, wait)
        remote = np.flatnonzero(~mine)
        counters[usage.PULLED_LOCAL] += n - len(remote)
        counters[usage.PULLED_REMOTE] += len(remote)
        if len(remote) >= DEDUPLICATE_FROM:
            asked, inverse = _once_each(keys[remote])
            if inverse is not None:
                return self._pull_once_each(asked, inverse, own[remote], out, remote, wait)
        handle = requests.new_handle(MsgType.PULL, self._index, self.name, keys, out, len(remote))
        handle.mask = mine.copy()  # the local part is here already
        requests.request(MsgType.PULL, self._index, handle, keys, remote, own[remote], None)
        return _pulled(requests, handle, wait)

    def _pull_once_each(
        self,
        asked: Keys,
        inverse: npt.NDArray[np.intp],
        owners: npt.NDArray[np.int16],
        out: Array | None,
        at: npt.NDArray[np.intp] | None,
        wait: bool,
    ) -> Array | Handle:
        """Request each of the remote keys once (``asked``, where ``asked[inverse]`` are the
        keys as pulled) and spread the answer over their repeats: a minibatch's frequent keys
        (w2v's words, KGE's hub entities, MF's rows) would otherwise travel once per repeat.
        ``out`` and ``at``: the rows read here already and where the remote ones go."""
        requests = self._requests
        dests = np.empty(len(asked), dtype=owners.dtype)
        dests[inverse] = owners  # a key's repeats have one owner: whichever write lands is right
        handle = requests.new_handle(MsgType.PULL, self._index, self.name, asked, None, len(asked))

        def spread(values: Array) -> Array:
            if out is None:
                return values.take(inverse, axis=0)
            out[at] = values.take(inverse, axis=0)
            return out

        handle.then(spread)
        return self._ask(handle, asked, dests, wait)

    def _pull_cached(self, keys: Keys, own: npt.NDArray[np.int16], wait: bool) -> Array | Handle:
        """A pull on a cached table with keys elsewhere: the keys cached in this clock are
        read from the copy, the rest are fetched and cached when their values arrive."""
        cache = self._cache
        assert cache is not None
        n = len(keys)
        out = np.empty((n, self.dim), dtype=self.dtype)
        mine = own == self._node
        local = np.flatnonzero(mine)
        self._lock.acquire()
        try:
            out[local] = self._store.values.take(keys[local], axis=0)
        finally:
            self._lock.release()
        away = np.flatnonzero(~mine)
        hit, rows = cache.lookup(keys[away])
        out[away[hit]] = rows
        fetch = away[~hit]
        counters = self._usage
        counters[usage.PULLED_LOCAL] += len(local)
        counters[usage.PULLED_CACHED] += len(away) - len(fetch)
        requests = self._requests
        if not len(fetch):
            return out if wait else requests.done_handle(MsgType.PULL, self.name, out)
        counters[usage.PULLED_REMOTE] += len(fetch)
        # the request asks only for the keys not cached; its answer completes ``out``
        fetched, owners = keys[fetch], own[fetch]
        handle = requests.new_handle(MsgType.PULL, self._index, self.name, fetched, None, len(fetch))
        generation = cache.begin_fetch()

        def done(values: Array) -> Array:
            out[fetch] = values
            cache.fetched(generation, fetched, values)
            return out

        handle.then(done)
        return self._ask(handle, fetched, owners, wait)

    def _ask(self, handle: Handle, keys: Keys, owners: npt.NDArray[np.int16], wait: bool) -> Array | Handle:
        """Send ``handle``'s pull of ``keys`` to their ``owners`` (as cached): one message
        when they share one owner, else a part per owner."""
        requests = self._requests
        dest = int(owners[0])
        if (dest >= 0 or dest == INCOMING) and (owners == dest).all():
            requests.send_whole(MsgType.PULL, dest, self._index, handle.req_id, keys)
        else:
            everything = np.arange(len(keys))
            requests.request(MsgType.PULL, self._index, handle, keys, everything, owners, None)
        return _pulled(requests, handle, wait)

    def update(self, kind: MsgType, keys: Keys, rows: Array, wait: bool) -> Handle | None:
        """A push or set of checked ``keys`` and ``rows``: applied in place where our node owns
        them, else requested (and written through to the homes under replication)."""
        self._requests.make_room()  # before a local part is applied
        if self._watch_node:
            now = _monotonic()
            if now > self.node_ran_until:  # outside the lock: our node needs it to run
                self.node_ran_until = self._requests.node_running_until(now)
        store = self._store
        counters = self._usage
        lock = self._lock
        if len(keys) == 1 and not self._write_through:  # one entry per call: no array reductions
            lock.acquire()
            try:
                here = store.loc.item(keys.item(0)) == self._node
                if here:
                    self._apply_here(kind, keys, rows)
            finally:
                lock.release()
            if here:
                counters[usage.PUSHES] += 1
                counters[usage.PUSHED_LOCAL] += 1
                return None if wait else self._requests.done_handle(kind, self.name, None)
        remote = None
        lock.acquire()
        try:
            own = store.loc[keys]
            mine = own == self._node
            if mine.all():
                local_keys, local_rows = keys, rows
            else:
                local = np.flatnonzero(mine)
                remote = np.flatnonzero(~mine)
                local_keys, local_rows = keys[local], rows[local]
            if len(local_keys):
                self._apply_here(kind, local_keys, local_rows)
        finally:
            lock.release()
        counters[usage.PUSHES] += 1
        counters[usage.PUSHED_LOCAL] += len(local_keys)
        through = self._write_through and len(local_keys)
        if remote is None and not through:
            return None if wait else self._requests.done_handle(kind, self.name, None)
        if (
            remote is not None
            and not through
            and kind is MsgType.PUSH
            and self._sums_repeats
            and len(remote) >= DEDUPLICATE_FROM
        ):
            sent, summed, firsts = sum_repeats(keys[remote], rows[remote])
            if firsts is not None and len(sent) <= REPEATS_PAY * len(remote):
                counters[usage.PUSHED_REMOTE] += len(remote)
                return self._push_once_each(sent, summed, own[remote[firsts]], wait)
        if not wait and rows is not None and not rows.flags.owndata:
            rows = rows.copy()  # the caller may reuse its array while the push is in flight
        pending = (0 if remote is None else len(remote)) + (len(local_keys) if through else 0)
        requests = self._requests
        handle = requests.new_handle(kind, self._index, self.name, keys, None, pending, rows)
        if remote is not None and not through:
            handle.mask = mine.copy()  # the local part is done: a retry must not apply it again
        if through:  # acknowledged once the keys' homes (and backups) have the new rows
            local_at = np.arange(len(keys)) if remote is None else np.flatnonzero(mine)
            requests.write_back(self._index, handle, keys[local_at], local_at.astype(np.int32))
        if remote is not None:
            counters[usage.PUSHED_REMOTE] += len(remote)
            requests.request(kind, self._index, handle, keys, remote, own[remote], rows)
            if self._cache is not None:
                if kind is MsgType.SET:
                    self._cache.assigned(keys[remote], rows[remote])
                else:
                    self._cache.pushed(keys[remote], rows[remote])
        if wait:
            handle.result()
            return None
        return handle

    def _push_once_each(
        self, sent: Keys, summed: Array, dests: npt.NDArray[np.int16], wait: bool
    ) -> Handle | None:
        """Push each remote key once: ``sent`` (distinct), their rows summed (what the owner's
        updater does with repeats before its step), to ``dests`` (their owners as cached)."""
        requests = self._requests
        handle = requests.new_handle(MsgType.PUSH, self._index, self.name, sent, None, len(sent), summed)
        requests.request(MsgType.PUSH, self._index, handle, sent, np.arange(len(sent)), dests, summed)
        if self._cache is not None:
            self._cache.pushed(sent, summed)
        if wait:
            handle.result()
            return None
        return handle

    def _apply_here(self, kind: MsgType, keys: Keys, rows: Array) -> None:
        """Write ``rows`` to ``keys``, which our node owns (the caller holds the lock)."""
        store = self._store
        if kind is MsgType.SET:
            store.values[keys] = rows
        else:
            store.updater.apply(store.values, store.states, keys, rows)
        if store.dirty is not None:
            store.dirty[keys] = 1  # replication: our node writes them back


def _once_each(keys: Keys) -> tuple[Keys, npt.NDArray[np.intp] | None]:
    """The distinct ``keys`` and where each key went (``None`` when too few repeat to pay).

    A plain sort counts the repeats first: most pulls of distinct keys stop there (a 100-key
    remote pull paid 25 us for ``np.unique`` with its inverse, which only repeats need).
    Where repeats pay, ``np.unique`` sorts again; one argsort for both measured slower for
    distinct keys (100-key pull, median 278 against 261 us in five interleaved pairs)."""
    ordered = np.sort(keys)
    distinct = 1 + np.count_nonzero(ordered[1:] != ordered[:-1])
    if distinct > REPEATS_PAY * len(keys):
        return keys, None
    asked, inverse = np.unique(keys, return_inverse=True)
    return asked, inverse


def _pulled(requests: Requests, handle: Handle, wait: bool) -> Array | Handle:
    if not wait:
        return handle
    values = requests.wait(handle)
    assert values is not None  # a pull's handle holds its values
    return values
