"""Rebuilding a lost server's shards at their new home.

When a server dies, the coordinator gives each of its shards a new home (its backup
under ``replication: 1``, else the least loaded server) in a new epoch and tells the new
home to RECOVER them.  The new home:

1. holds the requests for those shards (:mod:`dynaps.node.gate`);
2. asks the live nodes the coordinator named as the shards' possible holders (RECOVER's
   ``holders``: the workers whose programs said they would localize keys of them, and the
   servers the shards migrated away from; :mod:`dynaps.coordinator.holders` argues why
   nobody else can hold or expect one of their keys), or every live node when the
   coordinator does not know (it adopted the job after a restart), which of the shards'
   keys it holds or expects (OWNERS_QUERY); each answers with two OWNERS messages per
   table (held, expected);
3. rebuilds the directory: a key someone holds stays there; a key someone expects is
   theirs once it arrives (if its sender died, the home re-sends its own copy after a
   grace period, applied only if the key is still expected); a key nobody holds is
   the home's own, with the value from the source the coordinator named: its replica
   (kept by this server as the backup), the last checkpoint, or the initial value;
4. sends the shards to their new backup (and REPLICA_SYNCED after them), releases the
   held requests and reports RECOVERED with the number of keys nobody held (the keys
   whose updates since the source's copy are lost, when the source is not a synced replica).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.node.context import NodeContext
from dynaps.node.migration import shard_keys
from dynaps.node.replication import Replication
from dynaps.store.checkpoint_files import load_keys, resolve
from dynaps.store.table_store import INCOMING, NOT_MOVING, SENDER_UNKNOWN, TableStore
from dynaps.wire import control, messages, routing
from dynaps.wire.protocol import COORDINATOR, NO_ENDPOINT, RECOVERY, Message, MsgType

log = logging.getLogger(__name__)

HELD = messages.OWNERS_HELD
EXPECTED = messages.OWNERS_EXPECTED
RESEND_AFTER = 1.0  # seconds before re-sending keys whose sender may have died
_SOURCES = {  # for the log: where the keys nobody held came from
    control.RecoverySource.REPLICA: "this node's replica",
    control.RecoverySource.CHECKPOINT: "the last checkpoint",
    control.RecoverySource.INITIAL: "their initial values",
}

Keys = npt.NDArray[np.int64]
RecordsFor = Callable[[Keys], dict[str, Any] | None]  # AppliedRequests.records_for


@dataclass
class Rebuild:
    id: int
    shards: npt.NDArray[np.int64]
    source: control.RecoverySource
    waiting_for: set[int]
    held: list[dict[int, Keys]] = field(default_factory=list)  # per table: node -> keys held
    expected: list[dict[int, Keys]] = field(default_factory=list)


class Recoveries:
    """A home's shard rebuilds in progress, and the re-sends they scheduled."""

    def __init__(
        self,
        node: NodeContext,
        checkpoint_root: str,
        replication: Replication | None,
        records_for: RecordsFor,
    ) -> None:
        self.node = node
        self.checkpoint_root = checkpoint_root  # where checkpoints live (to rebuild from one)
        self.replication = replication  # a rebuilt shard is sent to its backup
        self.records_for = records_for  # re-sent copies carry the records of their keys
        self.running: dict[int, Rebuild] = {}
        self.resend: list[tuple[float, int, Keys]] = []  # (when, table, keys) to re-send if still moving
        self.expected: set[int] = set()  # shards taken over from a dead home, held until rebuilt

    def expect(self, shards: npt.NDArray[np.int64], num_shards: int) -> None:
        """A new epoch makes us the home of a dead server's shards: hold them from now on.

        The coordinator's RECOVER follows; requests must not be routed by our stale
        directory entries for those shards meanwhile.
        """
        fresh = [int(s) for s in shards if int(s) not in self.expected]
        if fresh:
            self.expected.update(fresh)
            self.node.gate.block(np.asarray(fresh, dtype=np.int64), num_shards)

    def rebuilding(self) -> set[int]:
        """Shards taken over from a dead home and not yet rebuilt."""
        shards = set(self.expected)
        for rebuild in self.running.values():
            shards.update(int(s) for s in rebuild.shards)
        return shards

    def start(
        self,
        recovery_id: int,
        shards: list[int],
        source: control.RecoverySource,
        members: set[int],
        holders: list[int] | None,
    ) -> None:
        """RECOVER: rebuild ``shards``, asking ``holders`` (None: every one of ``members``)."""
        node = self.node
        nodes = members if holders is None else (members & set(holders)) | {node.me}
        chosen = np.asarray(shards, dtype=np.int64)
        unexpected = [s for s in shards if s not in self.expected]
        if unexpected:
            node.gate.block(np.asarray(unexpected, dtype=np.int64), node.shard_map.num_shards)
        self.expected.difference_update(shards)
        tables = len(node.stores)
        rebuild = Rebuild(
            recovery_id, chosen, source, set(nodes), [{} for _ in range(tables)], [{} for _ in range(tables)]
        )
        self.running[recovery_id] = rebuild
        log.warning("node %d: rebuilding %d shards of a lost server (%s)", node.me, len(chosen), source)
        query = control.OwnersQuery(id=recovery_id, shards=list(shards))
        node.stats["owners_asked"] += len(nodes - {node.me})  # targeted: the holders only
        for member in sorted(nodes):
            if member == node.me:
                self.report_owners(node.me, recovery_id, chosen)
            else:
                node.send_frames(member, messages.control(MsgType.OWNERS_QUERY, node.me, query))

    def report_owners(self, requester: int, recovery_id: int, shards: npt.NDArray[np.int64]) -> None:
        """Answer an OWNERS_QUERY: which keys of ``shards`` this node holds and expects."""
        node = self.node
        if requester != node.me:
            node.stats["owners_queries"] += 1  # a recovery elsewhere asked this node
        for table, store in enumerate(node.stores):
            keys = shard_keys(store, shards, node.shard_map)
            node.lock.acquire()
            try:
                loc = store.loc[keys]
                held = keys[loc == node.me]
                expected = keys[loc == INCOMING]
            finally:
                node.lock.release()
            for kind, chosen in ((HELD, held), (EXPECTED, expected)):
                msg = messages.owners(node.me, recovery_id, table, chosen, kind)
                if requester == node.me:
                    self.on_owners(msg)  # a node does not message itself
                else:
                    node.send(requester, msg)

    def on_owners(self, msg: Message) -> None:
        rebuild = self.running.get(msg.req_id)
        if rebuild is None or msg.keys is None:
            return
        target = rebuild.held if msg.aux == HELD else rebuild.expected
        target[msg.table][msg.sender] = msg.keys
        complete = all(
            msg.sender in rebuild.held[t] and msg.sender in rebuild.expected[t]
            for t in range(len(rebuild.held))
        )
        if complete:
            rebuild.waiting_for.discard(msg.sender)
        if not rebuild.waiting_for:
            self._finish(rebuild)

    def forget_node(self, node: int) -> None:
        """A node died during a rebuild: do not wait for its answer."""
        for rebuild in list(self.running.values()):
            rebuild.waiting_for.discard(node)
            for table in range(len(rebuild.held)):
                rebuild.held[table].pop(node, None)
                rebuild.expected[table].pop(node, None)
            if not rebuild.waiting_for:
                self._finish(rebuild)

    def _finish(self, rebuild: Rebuild) -> None:
        node = self.node
        del self.running[rebuild.id]
        checkpoint = None
        if rebuild.source is control.RecoverySource.CHECKPOINT:
            checkpoint = resolve(self.checkpoint_root, "latest")
        rebuilt = 0
        for table, store in enumerate(node.stores):
            rebuilt += self._rebuild_table(table, store, rebuild, checkpoint)
        node.gate.unblock(rebuild.shards)
        if self.replication is not None:  # a backup again, which the coordinator learns
            homed = rebuild.shards[node.shard_map.homes[rebuild.shards] == node.me]
            self.replication.sync_shards(homed, node.shard_map)
            self.replication.report_synced(homed)
        node.release_gate()
        recovered = control.Recovered(id=rebuild.id, keys=rebuilt)
        node.send_frames(COORDINATOR, messages.control(MsgType.RECOVERED, node.me, recovered))
        log.warning(
            "node %d: %d shards rebuilt; %d keys nobody held taken from %s",
            node.me,
            len(rebuild.shards),
            rebuilt,
            _SOURCES[rebuild.source],
        )

    def _rebuild_table(self, table: int, store: TableStore, rebuild: Rebuild, checkpoint: object) -> int:
        """Rebuild ``table``'s keys of the shards; returns how many nobody else held."""
        node = self.node
        assert store.owner is not None
        assert store.moving_from is not None
        keys = shard_keys(store, rebuild.shards, node.shard_map)
        mine = np.zeros(store.spec.num_keys, dtype=np.bool_)
        mine[keys] = True
        node.lock.acquire()
        try:
            store.owner[keys] = node.me
            store.moving_from[keys] = NOT_MOVING
            for holder, held in rebuild.held[table].items():
                store.owner[held] = holder
                mine[held] = False
            waiting = []
            for receiver, expected in rebuild.expected[table].items():
                free = expected[mine[expected]]  # nobody holds them: they are on their way to ``receiver``
                store.owner[free] = receiver
                store.moving_from[free] = SENDER_UNKNOWN  # perhaps sent by the dead server
                mine[free] = False
                waiting.append(free)
            orphans = np.flatnonzero(mine)
            if rebuild.source is control.RecoverySource.CHECKPOINT and checkpoint is not None:
                wanted = np.zeros(store.spec.num_keys, dtype=np.bool_)
                wanted[orphans] = True
                load_keys(store, checkpoint, wanted)  # type: ignore[arg-type]
            elif rebuild.source is control.RecoverySource.INITIAL:
                store.reset_rows(orphans)
            store.loc[orphans] = node.me
        finally:
            node.lock.release()
        node.table_stats[table]["keys_rebuilt"] += len(orphans)
        if waiting:
            self.resend.append((time.monotonic() + RESEND_AFTER, table, np.concatenate(waiting)))
        return len(orphans)

    def tick(self, now: float) -> None:
        """Re-send keys that are still expected somewhere once their grace period ended."""
        due = [item for item in self.resend if item[0] <= now]
        if not due:
            return
        self.resend = [item for item in self.resend if item[0] > now]
        node = self.node
        for _, table, keys in due:
            store = node.stores[table]
            assert store.moving_from is not None
            assert store.owner is not None
            node.lock.acquire()
            try:
                still = keys[store.moving_from[keys] == SENDER_UNKNOWN]
                targets = store.owner[still]
                values = store.values.take(still, axis=0)
                states = tuple(state.take(still, axis=0) for state in store.states)
            finally:
                node.lock.release()
            resend_copies(node, table, still, targets, values, states, self.records_for)


def resend_copies(
    node: NodeContext,
    table: int,
    keys: Keys,
    targets: npt.NDArray[np.int16],
    values: npt.NDArray[np.generic],
    states: tuple[npt.NDArray[np.generic], ...],
    records_for: RecordsFor,
) -> None:
    """Send a home's own copies of ``keys`` to the nodes that expect them (``targets``),
    as RECOVERY transfers: applied only where a key is still expected.  Each carries the
    home's records of its keys (those of the rows written back to it, too), like any
    TRANSFER: a request sent again that reaches the new owner is not applied twice."""
    copies = messages.transfer(
        node.me, NO_ENDPOINT, 0, table, keys.astype(np.int64, copy=False), values, states, flags=RECOVERY
    )
    for target, part in routing.split_rows(copies, targets):
        assert part.keys is not None
        part.records = records_for(part.keys)
        node.send(target, part)
