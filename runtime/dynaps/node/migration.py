"""Moving shards between servers while the job runs (the nodes' side of live rebalancing).

For a migration of shards S from home A to home B:

1. **pre-copy** (A): the directory entries of S's keys and A's rows of them (values with
   updater state) go to B in chunks, one chunk per turn of A's loop, while A keeps
   serving; keys changed after their chunk went (an update, a write-back, a transfer)
   are marked dirty.  Rows travel for every key, also for keys a worker holds: A's row
   of such a key is its write-back copy (under replication), which B must have to take
   the key back when that worker dies, and which B's replica sync sends down the chain;
2. **freeze** (A): requests that touch S are held; what changed is sent (the delta,
   flagged FINAL), with the applied-request records of S's keys, so a retry that reaches
   B is answered there, not applied again; under replication A also sends a marker down
   S's backup chains after the last rows it replicated (:meth:`Replication.flushed`);
3. **ready** (B): B has staged everything and tells the coordinator, which **commits** a
   new shard-map epoch that homes S on B once the backups have passed A's marker on (so
   every update acknowledged before the freeze is on the backups that stay: rows from A
   arriving after the commit would be stale there and dropped);
4. at the new epoch A gives up the keys it owned in S (they are B's now) and forwards
   the held requests to B; B takes ownership of them and serves.

A *hand-over* is the same freeze without a move: a backup that drains leaves the chains
of shards whose other backups are synced.  The home holds the shards' requests and sends
its marker (:meth:`Migrations._hand_over`); the coordinator commits the chains without
the leaver once every synced backup passed the marker on, so no row the leaver was
passing on arrives after its successor's predecessor changed; the home then serves the
held requests itself.

No request for S is lost (held, then forwarded), none is applied twice (A freezes before
the delta, B serves only after the commit, and a retry finds the records at B), and only
S's requests wait, briefly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dynaps.errors import ProtocolError
from dynaps.node.applied import AppliedRequests
from dynaps.node.context import NodeContext
from dynaps.store.shardmap import ShardMap, shard_of
from dynaps.store.table_store import NOT_MOVING, TableStore
from dynaps.wire import control, messages
from dynaps.wire.control import MigrateOut
from dynaps.wire.protocol import COORDINATOR, FINAL, Message, MsgType

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20  # per turn of the node's loop: keeps request latency low during a copy
# keys whose records travel in one part at the freeze: bounds the JSON as a replica sync's
# SYNC_KEYS does (a receiver drops a body over MAX_BODY_BYTES, and the move would never end)
RECORD_KEYS = 65536

Keys = npt.NDArray[np.int64]


def shard_keys(store: TableStore, shards: npt.NDArray[np.int64], shard_map: ShardMap) -> Keys:
    """The keys of ``store``'s table that fall into ``shards``."""
    all_keys = np.arange(store.spec.num_keys, dtype=np.int64)
    mask = np.isin(shard_of(all_keys, store.spec.num_keys, shard_map.num_shards, shard_map.partition), shards)
    return all_keys[mask]


@dataclass
class Outgoing:
    id: int
    target: int
    shards: npt.NDArray[np.int64]
    keys: list[Keys]  # per table
    cursor: list[int]
    dirty: list[npt.NDArray[np.bool_]]  # per table, over all keys
    frozen: bool = False
    leaving: int = 0  # a hand-over: the backup that leaves the chains (nothing is copied)


@dataclass
class Incoming:
    id: int
    source: int


# the shards of a migration were frozen here (its id, the shards): the backups are told
OnFrozen = Callable[[int, npt.NDArray[np.int64]], None]


class Migrations:
    """A node's outgoing and incoming migrations."""

    def __init__(
        self, node: NodeContext, applied: AppliedRequests, on_frozen: OnFrozen | None = None
    ) -> None:
        self.node = node
        self.applied = applied  # the node's records: the moved keys' go with the final parts
        self.on_frozen = on_frozen
        self.outgoing: dict[int, Outgoing] = {}
        self.incoming: dict[int, Incoming] = {}
        self.tracking = False  # some pre-copy is running: changes must be noted

    # ---------------------------------------------------------------- source side

    def start(self, order: MigrateOut) -> None:
        node = self.node
        shards = np.asarray(order.shards, dtype=np.int64)
        if order.target == node.me:
            self._hand_over(order, shards)
            return
        keys = [shard_keys(store, shards, node.shard_map) for store in node.stores]
        dirty = [np.zeros(store.spec.num_keys, dtype=np.bool_) for store in node.stores]
        self.outgoing[order.id] = Outgoing(order.id, order.target, shards, keys, [0] * len(keys), dirty)
        self.tracking = True
        log.info("node %d: migrating %d shards to node %d", node.me, len(shards), order.target)

    def _hand_over(self, order: MigrateOut, shards: npt.NDArray[np.int64]) -> None:
        """A backup leaves the chains of shards homed here (it drains): hold their requests
        and send the marker down the chains after the last rows, so the coordinator takes it
        out only once every row it was passing on has reached the backups after it."""
        node = self.node
        if not order.leaving or not (node.shard_map.homes[shards] == node.me).all():
            node.note_malformed(ProtocolError(f"hand-over {order.id} of shards not homed here"))
            return
        empty = [np.zeros(0, dtype=np.int64) for _ in node.stores]
        migration = Outgoing(order.id, node.me, shards, empty, [0] * len(empty), [], True, order.leaving)
        self.outgoing[order.id] = migration
        node.gate.block(shards, node.shard_map.num_shards)
        if self.on_frozen is not None:
            self.on_frozen(migration.id, shards)
        ready = control.MigrateReady(id=order.id)
        node.send_frames(COORDINATOR, messages.control(MsgType.MIGRATE_READY, node.me, ready))
        log.info("node %d: handing %d shards over from backup %d", node.me, len(shards), order.leaving)

    def touch(self, table: int, keys: Keys) -> None:
        """Note that the state of ``keys`` changed (only while a pre-copy runs)."""
        for migration in self.outgoing.values():
            if not migration.frozen:
                migration.dirty[table][keys] = True

    def step(self) -> None:
        """Send the next pre-copy chunk of each outgoing migration, or freeze it."""
        for migration in list(self.outgoing.values()):
            if migration.frozen:
                continue
            for table, keys in enumerate(migration.keys):
                start = migration.cursor[table]
                if start < len(keys):
                    row = self.node.stores[table].layout.row_bytes * (1 + len(self.node.stores[table].states))
                    end = min(len(keys), start + max(1, CHUNK_BYTES // max(1, row)))
                    self._send_part(migration, table, keys[start:end], final=False)
                    migration.cursor[table] = end
                    break
            else:
                self._freeze(migration)
        self.tracking = any(not m.frozen for m in self.outgoing.values())

    def _freeze(self, migration: Outgoing) -> None:
        """Hold the shards' requests, then send what changed since its chunk went, with the
        records of the shards' keys (nothing changes them here any more), FINAL last."""
        node = self.node
        migration.frozen = True
        node.gate.block(migration.shards, node.shard_map.num_shards)
        parts: list[tuple[int, Keys, dict[str, object] | None]] = []
        for table, keys in enumerate(migration.keys):
            dirty = migration.dirty[table]
            for first in range(0, len(keys), RECORD_KEYS):
                chunk = keys[first : first + RECORD_KEYS]
                changed, records = chunk[dirty[chunk]], self.applied.records_for(chunk)
                if len(changed) or records is not None:
                    parts.append((table, changed, records))
        if not parts:
            parts.append((len(migration.keys) - 1, np.zeros(0, dtype=np.int64), None))
        for index, (table, changed, records) in enumerate(parts):
            self._send_part(migration, table, changed, final=index == len(parts) - 1, records=records)
        migration.dirty = []
        if self.on_frozen is not None:
            self.on_frozen(migration.id, migration.shards)

    def refreeze(self) -> None:
        """A new epoch that does not commit our frozen migrations: send their marker again
        (their chains may have changed: a backup lost or replaced)."""
        if self.on_frozen is None:
            return
        for migration in self.outgoing.values():
            if migration.frozen:
                self.on_frozen(migration.id, migration.shards)

    def _send_part(
        self,
        migration: Outgoing,
        table: int,
        keys: Keys,
        final: bool,
        records: dict[str, object] | None = None,
    ) -> None:
        node = self.node
        store = node.stores[table]
        assert store.owner is not None
        assert store.moving_from is not None
        node.lock.acquire()
        try:
            msg = messages.shard_copy(
                node.me,
                migration.id,
                table,
                keys,
                store.owner[keys],
                store.moving_from[keys],
                store.values.take(keys, axis=0),
                tuple(state.take(keys, axis=0) for state in store.states),
                final=final,
                records=records,
            )
        finally:
            node.lock.release()
        node.table_stats[table]["keys_migrated_out"] += len(keys)
        node.send(migration.target, msg)

    def abort(self, migration_id: int) -> None:
        """The other side of a migration died: serve the shards here again, or drop the copy."""
        outgoing = self.outgoing.pop(migration_id, None)
        if outgoing is not None:
            if outgoing.frozen:
                self.node.gate.unblock(outgoing.shards)
                self.node.release_gate()
            self.tracking = any(not m.frozen for m in self.outgoing.values())
        self.incoming.pop(migration_id, None)

    def abort_all(self) -> None:
        """A restarted coordinator knows nothing of the moves in flight: end them all (it
        plans again); a frozen home serves its shards again."""
        for migration_id in [*self.outgoing, *self.incoming]:
            self.abort(migration_id)

    # ---------------------------------------------------------------- target side

    def on_copy(self, msg: Message) -> None:
        """Stage a part of an incoming shard copy (nothing is served from it before the commit)."""
        node = self.node
        store = node.stores[msg.table]
        keys, values = msg.keys, msg.values
        assert keys is not None
        assert values is not None
        assert msg.dir_owner is not None
        assert msg.dir_moving is not None
        if store.owner is None or store.moving_from is None:
            # dropped like any other bad message: the loop must go on serving
            node.note_malformed(ProtocolError(f"SHARD_COPY sent to node {node.me}, which homes no keys"))
            return
        self.incoming.setdefault(msg.req_id, Incoming(msg.req_id, msg.sender))
        node.lock.acquire()
        try:
            store.owner[keys] = msg.dir_owner
            store.moving_from[keys] = msg.dir_moving
            # a key this node holds itself (released to it when it homed the shard before)
            # keeps its live row: the old home's is its older copy
            copied = store.loc[keys] != node.me
            if not copied.all():
                keys, values = keys[copied], values[copied]
            store.values[keys] = values
            for state, rows in zip(store.states, msg.states, strict=True):
                state[keys] = rows if copied.all() else rows[copied]
        finally:
            node.lock.release()
        # the records of the updates in these rows, for retries that now reach this node
        self.applied.adopt_records(msg.records)
        node.table_stats[msg.table]["keys_migrated_in"] += len(keys)
        if msg.flags & FINAL:
            ready = control.MigrateReady(id=msg.req_id)
            node.send_frames(COORDINATOR, messages.control(MsgType.MIGRATE_READY, node.me, ready))

    # ---------------------------------------------------------------- commit

    def commit(self, new_map: ShardMap) -> None:
        """A new epoch: finish migrations that it commits, on either side."""
        node = self.node
        me = node.me
        departed = [m for m in self.outgoing.values() if m.frozen and (new_map.homes[m.shards] != me).all()]
        handed = [
            m
            for m in self.outgoing.values()
            if m.leaving
            and new_map.backups is not None
            and not (new_map.backups[m.shards] == m.leaving).any()
        ]
        for migration in handed:
            del self.outgoing[migration.id]
        for migration in departed:
            del self.outgoing[migration.id]
            for table, keys in enumerate(migration.keys):
                store = node.stores[table]
                assert store.moving_from is not None
                node.lock.acquire()
                try:
                    # The values of the keys this home held went with the shard: the new
                    # home owns them now.  Keys that arrived since (a release in flight) stay.
                    given = keys[(store.loc[keys] == me) & (store.moving_from[keys] == NOT_MOVING)]
                    store.loc[given] = migration.target
                finally:
                    node.lock.release()
        for migration_id, incoming in list(self.incoming.items()):
            moved = np.flatnonzero((node.shard_map.homes == incoming.source) & (new_map.homes == me))
            if not len(moved):
                continue  # committed by a later epoch
            del self.incoming[migration_id]
            for store in node.stores:
                assert store.owner is not None
                keys = shard_keys(store, moved, new_map)
                node.lock.acquire()
                try:
                    # what the old home held itself is ours now; what others hold stays theirs
                    assert store.moving_from is not None
                    taken = keys[
                        (store.owner[keys] == incoming.source) & (store.moving_from[keys] == NOT_MOVING)
                    ]
                    store.owner[taken] = me
                    store.loc[taken] = me
                finally:
                    node.lock.release()
        for migration in departed + handed:
            node.gate.unblock(migration.shards)
