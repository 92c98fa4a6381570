"""A node's local parameter store: values, updater state and the per-key directory.

Per table and node:

* ``values`` (num_keys x dim) and the updater's state arrays, dense and committed lazily:
  memory is spent on the pages of keys this node has touched, not on the whole table;
* ``loc`` (int16 per key, every node): for a key this node owns it holds the node's own
  id; :data:`INCOMING` while the key is on its way here; otherwise the node's best guess
  of the owner (Lapse's location cache), initially the key's home;
* ``owner`` (int16 per key, servers only): the home's authoritative record of each homed
  key's current owner (Lapse's address book);
* ``moving_from`` (int16 per key, servers only): while a transfer of a homed key is in
  flight, the node it leaves; the home starts at most one transfer per key at a time.

That is 2 bytes of metadata per key on workers and 6 on servers (Lapse: ~160).
On a worker node the arrays live in shared memory so that its training process reads
and updates owned keys directly; ``lock`` guards them.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.contract import InitKind, NamedTable
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import Segment
from dynaps.store.updaters import Updater, make_updater
from dynaps.wire.protocol import TableLayout

INCOMING = -1  # loc value: ownership is being transferred to this node
NOT_MOVING = -1  # moving_from value: no transfer of the key is in flight
SENDER_UNKNOWN = -2  # moving_from value: in flight from a sender that may have died (recovery)
INIT_CHUNK = 1 << 16

Array = npt.NDArray[Any]


@dataclass
class TableStore:
    index: int
    spec: NamedTable
    layout: TableLayout
    values: Array
    states: tuple[Array, ...]
    loc: npt.NDArray[np.int16]
    owner: npt.NDArray[np.int16] | None
    moving_from: npt.NDArray[np.int16] | None
    updater: Updater
    segments: list[Segment] = field(default_factory=list)
    dirty: npt.NDArray[np.uint8] | None = None  # replication: keys changed since their write-back

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def create(
        cls,
        index: int,
        spec: NamedTable,
        shard_map: ShardMap,
        *,
        home: int | None,
        shared: bool,
        track_changes: bool = False,
    ) -> TableStore:
        """A store for a node; ``home`` is the node's id if it is a server (owns a directory)."""
        updater = make_updater(spec.updater)
        layout = layout_of(spec, updater.num_states)
        shapes = [(spec.num_keys, spec.dim)] * (1 + updater.num_states)
        segments: list[Segment] = []
        if shared:
            segments = [Segment.create(f"{spec.name}.{i}", s, layout.dtype) for i, s in enumerate(shapes)]
            segments.append(Segment.create(f"{spec.name}.loc", (spec.num_keys,), np.dtype(np.int16)))
            arrays = [seg.array for seg in segments]
        else:
            arrays = [np.zeros(s, dtype=layout.dtype) for s in shapes]
            arrays.append(np.zeros(spec.num_keys, dtype=np.int16))
        loc = arrays[-1]
        dirty = None
        if track_changes:  # replication: the node writes back what its training process changed
            if shared:
                segments.append(Segment.create(f"{spec.name}.dirty", (spec.num_keys,), np.dtype(np.uint8)))
                dirty = segments[-1].array
            else:
                dirty = np.zeros(spec.num_keys, dtype=np.uint8)
        for first in range(0, spec.num_keys, INIT_CHUNK):
            chunk = np.arange(first, min(first + INIT_CHUNK, spec.num_keys), dtype=np.int64)
            loc[first : first + len(chunk)] = shard_map.home_of(chunk, spec.num_keys)
        owner = loc.copy() if home is not None else None
        moving = np.full(spec.num_keys, NOT_MOVING, dtype=np.int16) if home is not None else None
        store = cls(
            index, spec, layout, arrays[0], tuple(arrays[1:-1]), loc, owner, moving, updater, segments, dirty
        )
        if home is not None:
            store.initialise_home_values(home)
        return store

    @classmethod
    def attach(cls, index: int, spec: NamedTable, fds: list[int]) -> TableStore:
        """The client's view of a worker node's shared store (fds as :meth:`fds` lists them:
        values, states, owners, and the changed-keys marks when the job replicates)."""
        updater = make_updater(spec.updater)
        layout = layout_of(spec, updater.num_states)
        arrays_count = 1 + updater.num_states
        if len(fds) not in (arrays_count + 1, arrays_count + 2):
            expected = f"{arrays_count + 1} or {arrays_count + 2}"
            raise ValueError(f"table {spec.name!r}: {len(fds)} shared segments, not {expected}")
        shape = (spec.num_keys, spec.dim)
        segments = [Segment.from_fd(fd, shape, layout.dtype) for fd in fds[:arrays_count]]
        segments.append(Segment.from_fd(fds[arrays_count], (spec.num_keys,), np.dtype(np.int16)))
        dirty = None
        if len(fds) == arrays_count + 2:
            segments.append(Segment.from_fd(fds[-1], (spec.num_keys,), np.dtype(np.uint8)))
            dirty = segments[-1].array
        arrays = [seg.array for seg in segments]
        return cls(
            index,
            spec,
            layout,
            arrays[0],
            tuple(arrays[1:arrays_count]),
            arrays[arrays_count],
            None,
            None,
            updater,
            segments,
            dirty,
        )

    def fds(self) -> list[int]:
        return [seg.fd for seg in self.segments]

    def initialise_home_values(self, home: int) -> None:
        """Initialise the rows this server is home of, identically however shards are placed.

        Random rows come from a generator seeded by (seed, table, chunk of keys), so the
        same key gets the same start value with 1 server or 8, range or hash partition.
        """
        init = self.spec.init
        if init.kind == InitKind.ZEROS:
            return
        assert self.owner is not None
        dim, dtype = self.spec.dim, self.layout.dtype
        for first in range(0, self.spec.num_keys, INIT_CHUNK):
            end = min(first + INIT_CHUNK, self.spec.num_keys)
            mine = np.flatnonzero(self.owner[first:end] == home)
            if not len(mine):
                continue
            rng = np.random.default_rng([init.seed, self.index, first // INIT_CHUNK])
            if init.kind == InitKind.NORMAL:
                rows = rng.normal(0.0, init.scale, size=(end - first, dim))
            else:
                rows = rng.uniform(-init.scale, init.scale, size=(end - first, dim))
            self.values[first + mine] = rows[mine].astype(dtype, copy=False)

    def rows(self, keys: npt.NDArray[np.int64]) -> tuple[npt.NDArray[Any], tuple[npt.NDArray[Any], ...]]:
        """Copies of the values and updater states of ``keys`` (the caller holds the lock)."""
        return self.values.take(keys, axis=0), tuple(state.take(keys, axis=0) for state in self.states)

    def reset_rows(self, keys: npt.NDArray[np.int64]) -> None:
        """Give ``keys`` their initial values again (and empty updater state)."""
        for state in self.states:
            state[keys] = 0
        init = self.spec.init
        if init.kind == InitKind.ZEROS:
            self.values[keys] = 0
            return
        chunks = keys // INIT_CHUNK
        for chunk in np.unique(chunks):
            first = int(chunk) * INIT_CHUNK
            end = min(first + INIT_CHUNK, self.spec.num_keys)
            rng = np.random.default_rng([init.seed, self.index, int(chunk)])
            shape = (end - first, self.spec.dim)
            if init.kind == InitKind.NORMAL:
                rows = rng.normal(0.0, init.scale, size=shape)
            else:
                rows = rng.uniform(-init.scale, init.scale, size=shape)
            chosen = keys[chunks == chunk]
            self.values[chosen] = rows[chosen - first].astype(self.layout.dtype, copy=False)

    def row_mappings(self) -> list[mmap.mmap]:
        """The shared mappings of the values and updater states (none if not shared)."""
        return [seg.mapping for seg in self.segments[: 1 + len(self.states)]]

    def metadata_bytes(self) -> int:
        """Bytes of per-key bookkeeping this node keeps for the table."""
        extra = [a.nbytes for a in (self.owner, self.moving_from) if a is not None]
        return self.loc.nbytes + sum(extra)

    def close(self) -> None:
        for seg in self.segments:
            seg.close()


def layout_of(spec: NamedTable, num_states: int) -> TableLayout:
    return TableLayout(spec.num_keys, spec.dim, np.dtype(spec.dtype), num_states)
