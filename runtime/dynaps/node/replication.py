"""Replication (``faultTolerance.replication: k``): no acknowledged update dies with k nodes.

* **Server-held keys**: each shard has a chain of ``k`` backup servers after its home
  (``ShardMap.backups``).  A home that applies an update to a key it holds sends the new
  rows to the first backup (REPLICATE); each backup stores them and passes them on to the
  next one, and the last acknowledges the requester.  So an acknowledged update exists on
  the home and all ``k`` backups, and each server sends the rows once whatever ``k`` is
  (chain replication, van Renesse and Schneider, OSDI 2004; the cost is ``k`` hops of
  latency before the acknowledgement).  When a home dies, its first live synced backup
  becomes the home (:mod:`dynaps.node.recovery`) and already has the values.
* **Worker-held keys** (localized) are written back to their home, which replicates them
  (:mod:`dynaps.node.writeback`, a part this one owns: the home's rows go down its chain).
* **Exactly once**: :mod:`dynaps.node.applied` (with or without replication).

A backup stores replicas in its own value arrays: the rows of keys it neither homes nor
holds are otherwise unused.  Every backup gets a shard's rows on one FIFO path, from its
predecessor in the chain; rows from a server that is not (any more) its predecessor are
stale and are not kept.  Whenever a shard's chain changes (a new home, a new backup), the
home sends the whole shard down the chain (a replica sync) before anything else.  At every
epoch (and after rebuilding a lost server's shards) a home then sends REPLICA_SYNCED for
the shards down the chain, after the rows on the same paths; each backup passes it on to
the coordinator and to its successor once it has applied (and passed on) everything sent
before it (REPLICATE rows of a newer epoch wait for that epoch), and only then does the
coordinator count on that replica.  A home that freezes shards for a migration sends the
same report, marked with the migration, after its last rows: the coordinator commits the
move once every synced backup has passed it on (:meth:`flushed`).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from dynaps.node.applied import AppliedRequests, Keys, Positions
from dynaps.node.context import NodeContext
from dynaps.node.migration import shard_keys
from dynaps.node.writeback import Acknowledge, Changed, WriteBack
from dynaps.store.shardmap import NO_BACKUP, ShardMap
from dynaps.wire import control, messages, routing
from dynaps.wire.protocol import COORDINATOR, NO_ENDPOINT, Message, MsgType, is_client, node_of
from dynaps.wire.routing import positions_of

log = logging.getLogger(__name__)

SYNC_KEYS = 65536  # keys per replica-sync message


class Replication:
    def __init__(
        self,
        node: NodeContext,
        flush_interval_ms: int,
        acknowledge: Acknowledge,
        applied: AppliedRequests,
        changed: Changed,
    ) -> None:
        self.node = node
        self.acknowledge = acknowledge
        self.applied = applied  # the node's record of applied updates (a backup adds to it)
        # the write-back of keys held here for other homes, and its receipt at the home
        self.writeback = WriteBack(node, flush_interval_ms, acknowledge, applied, changed, self.replicate)
        # at a backup: reports (and who sent them) of an epoch not seen yet
        self.synced_reports: list[tuple[control.ReplicaSynced, int]] = []
        # at a backup: shard -> (epoch, home) of the last report it passed on for the shard
        self.synced_at: dict[int, tuple[int, int]] = {}

    # ---------------------------------------------------------------- after an update

    def after_update(self, msg: Message, table: int, keys: Keys, positions: Positions | None) -> bool:
        """An update of held ``keys`` was applied here; returns whether to acknowledge it now.

        A home lets the backup acknowledge; a worker writing through lets its home do it.
        """
        node, writeback = self.node, self.writeback
        self.applied.after_update(msg, keys, positions)
        store = node.stores[table]
        if store.owner is not None:  # a server: replicate what it homes
            homed = node.homed(table)[keys]
            if homed.all():
                return not self.replicate(table, keys, positions, msg.requester, msg.req_id)
            if writeback.write_through and not homed.any():  # held here for other homes
                writeback.write_back(table, keys, positions, msg.requester, msg.req_id)
                return False
            if writeback.write_through:
                writeback.write_back(table, keys[~homed], None, NO_ENDPOINT, 0)
            else:
                writeback.mark_dirty(msg, table, keys[~homed])  # held here but homed elsewhere
            if homed.any():
                log.debug("node %d: update mixing homed and other keys acknowledged by the home", node.me)
                self.replicate(table, keys[homed], None, NO_ENDPOINT, 0)
            return True
        if writeback.write_through:
            writeback.write_back(table, keys, positions, msg.requester, msg.req_id)
            return False
        writeback.mark_dirty(msg, table, keys)
        return True

    def after_retry(self, msg: Message, keys: Keys, positions: Positions | None) -> bool:
        """A retried update of ``keys`` was applied here before; returns whether to
        acknowledge it now.

        A home sends the current rows of the keys it holds down their chains again, for the
        tail to acknowledge: the first rows may have died with a lost backup, or reached
        the next one after the chain changed (stale, not kept), so only a new pass makes the
        acknowledgement mean that every backup holds the update.  A worker writing through
        writes the keys it holds through again, for their homes to acknowledge: its first
        write-back may have died with a home.
        """
        node, writeback = self.node, self.writeback
        store = node.stores[msg.table]
        if store.owner is None and not writeback.write_through:
            return True
        node.lock.acquire()
        try:
            held = store.loc[keys] == node.me
            if store.owner is not None:
                held &= node.homed(msg.table)[keys]
        finally:
            node.lock.release()
        if store.owner is None:  # keys it no longer holds were written back before they left
            if held.all():
                writeback.write_back(msg.table, keys, positions, msg.requester, msg.req_id)
                return False
            if held.any():
                writeback.write_back(msg.table, keys[held], None, NO_ENDPOINT, 0)
            return True
        if held.all():
            return not self.replicate(msg.table, keys, positions, msg.requester, msg.req_id)
        if held.any():
            self.replicate(msg.table, keys[held], None, NO_ENDPOINT, 0)
        return True

    def replicate(
        self,
        table: int,
        keys: Keys,
        positions: Positions | None,
        requester: int,
        req_id: int,
        with_records: bool = False,
    ) -> bool:
        """Send the current rows of ``keys`` down their chains; True if a backup will acknowledge.

        ``with_records`` (a replica sync): the applied-request records of the keys go with
        them, so that a backup whose rows now include an update also knows it applied it.
        """
        node = self.node
        store = node.stores[table]
        shard_map = node.shard_map
        if shard_map.backups is None or not len(keys):
            return False
        backups = shard_map.backups[shard_map.shard_of(keys, store.spec.num_keys), 0]
        if (backups == NO_BACKUP).any():
            return False  # a single server: nothing to replicate to
        node.lock.acquire()
        try:
            values, states = store.rows(keys)
        finally:
            node.lock.release()
        rows = messages.rows(
            MsgType.REPLICATE, node.me, requester, req_id, table, keys, values, states, positions=positions
        )
        for backup, part in routing.split_rows(rows, backups):
            if with_records:
                assert part.keys is not None
                part.records = self.applied.records_for(part.keys)
            node.send(backup, part)
        node.stats["keys_replicated"] += len(keys)
        return requester != NO_ENDPOINT

    def on_replicate(self, msg: Message) -> None:
        """At a backup: keep the rows, pass them on to the next backup, or acknowledge the
        requester at the end of the chain.

        Rows from a server that is no longer our predecessor in their shard's chain (in the
        map here, which is never older than the sender's: newer rows wait for their epoch)
        are stale: the chain changed (a migration moved the shard, a backup left), and the
        home, whose copy includes them, sends its own rows down the new chain, perhaps
        first.  They are acknowledged (the coordinator counts this backup only once the
        home's sync reaches it), neither kept nor passed on, nor remembered as applied.
        Rows from a lost sender never get here (dropped on arrival, unacknowledged): its
        requesters send the requests again, and the home passes the rows down the new
        chain before the acknowledgement (:meth:`after_retry`).
        """
        node = self.node
        store = node.stores[msg.table]
        keys = msg.keys
        assert keys is not None
        assert msg.values is not None
        chains = node.shard_map.chains()[node.shard_map.shard_of(keys, store.spec.num_keys)]
        width = chains.shape[1]
        at = chains[:, 1:] == node.me
        slot = np.where(at.any(axis=1), at.argmax(axis=1) + 1, 0)  # 0: not a backup of the shard
        rows = np.arange(len(keys))
        fresh_mask = (slot > 0) & (chains[rows, slot - 1] == node_of(msg.sender))
        following = np.where(slot + 1 < width, chains[rows, np.minimum(slot + 1, width - 1)], NO_BACKUP)
        following[~fresh_mask] = NO_BACKUP
        fresh = None if fresh_mask.all() else np.flatnonzero(fresh_mask)
        node.lock.acquire()
        try:
            if fresh is None:
                store.values[keys] = msg.values
                for state, values in zip(store.states, msg.states, strict=True):
                    state[keys] = values
            else:
                store.values[keys[fresh]] = msg.values[fresh]
                for state, values in zip(store.states, msg.states, strict=True):
                    state[keys[fresh]] = values[fresh]
        finally:
            node.lock.release()
        node.stats["keys_backed_up"] += len(keys) if fresh is None else len(fresh)
        if fresh is not None:
            node.stats["replica_rows_stale"] += len(keys) - len(fresh)
        if fresh is None and msg.records:
            self.applied.adopt_records(msg.records)  # a sync: its rows include these requests
        client = is_client(msg.requester)
        # a node is acknowledged too: its keys given back reached the home's backups (F9)
        acks = msg.requester != NO_ENDPOINT
        if client:
            if fresh is None:
                self.applied.remember(msg.requester, msg.req_id, msg.positions, keys)
            elif len(fresh):
                self.applied.remember(msg.requester, msg.req_id, positions_of(msg, fresh), keys[fresh])
        if (following == NO_BACKUP).all():  # the end of every chain (the case of replication: 1)
            if acks:
                self.acknowledge(msg, len(keys), msg.positions)
            return
        if fresh is None and (following == following[0]).all():
            msg.sender = node.me  # all of it goes on to one backup, unchanged
            node.send(int(following[0]), msg)
            node.stats["keys_passed_on"] += len(keys)
            return
        for successor, part in routing.split(msg, following, None, node.me, msg.hops):
            if successor != NO_BACKUP:
                node.send(successor, part)
                node.stats["keys_passed_on"] += part.count
            elif acks:
                self.acknowledge(part, part.count, part.positions)

    # ---------------------------------------------------------------- new homes, new backups

    def sync(self, old: ShardMap | None, new: ShardMap, recovering: set[int]) -> None:
        """Send the whole of each shard whose chain changed (a new backup, or a new home:
        us) down the chain, then tell the backups which of our shards they hold.  Shards
        still ``recovering`` are synced once rebuilt (:mod:`dynaps.node.recovery`)."""
        node = self.node
        if new.backups is None:
            return
        mine = (new.homes == node.me) & (new.backups[:, 0] != NO_BACKUP)
        if recovering:
            mine[list(recovering)] = False
        changed = mine.copy()
        if old is not None and old.backups is not None:
            width = max(old.backups.shape[1], new.backups.shape[1])  # wider while a backup drains
            chain_changed = (old.backup_slots(width) != new.backup_slots(width)).any(axis=1)
            changed &= (old.homes != node.me) | chain_changed
        shards = np.flatnonzero(changed)
        if len(shards):
            self.sync_shards(shards, new)
        self.report_synced(np.flatnonzero(mine))

    def sync_shards(self, shards: npt.NDArray[np.int64], shard_map: ShardMap) -> None:
        node = self.node
        for table, store in enumerate(node.stores):
            keys = shard_keys(store, shards, shard_map)
            for first in range(0, len(keys), SYNC_KEYS):
                chunk = keys[first : first + SYNC_KEYS]
                self.replicate(table, chunk, None, NO_ENDPOINT, 0, with_records=True)
        log.info("node %d: replica sync of %d shards", node.me, len(shards))

    def synced_from_start(self, shard_map: ShardMap) -> None:
        """The job's first map, no checkpoint restored: homes and backups start with the same
        initial values, so this node holds the shards it backs up (as the coordinator counts
        them, :meth:`ShardHomes.initial`), with no report."""
        if shard_map.backups is None:
            return
        for shard in np.flatnonzero((shard_map.backups == self.node.me).any(axis=1)):
            self.synced_at[int(shard)] = (shard_map.epoch, int(shard_map.homes[shard]))

    def synced_replicas(self) -> list[control.ReplicaSynced]:
        """The shards this backup holds synced replicas of at its current epoch, by home: the
        reports of this epoch it passed on (for a restarted coordinator, which never heard them).

        Within an epoch a shard's chain does not change, and rows reach a backup on one FIFO
        path from its predecessor: once the report of the epoch is applied here, so is every
        row the home sent before it, and every later one comes in order. An older epoch's
        report says nothing of this one's chain, so it is left out. More than
        :data:`~dynaps.wire.control.REJOIN_REPLICA_SHARDS` shards: none (the REJOIN must fit a
        body; the coordinator then reports their homes' loss as before, conservatively)."""
        epoch = self.node.shard_map.epoch
        by_home: dict[int, list[int]] = {}
        for shard, (at, home) in sorted(self.synced_at.items()):
            if at == epoch:
                by_home.setdefault(home, []).append(shard)
        if sum(len(shards) for shards in by_home.values()) > control.REJOIN_REPLICA_SHARDS:
            log.warning("node %d: more synced replicas than a REJOIN names: none named", self.node.me)
            return []
        return [
            control.ReplicaSynced(epoch=epoch, home=home, shards=shards) for home, shards in by_home.items()
        ]

    def report_synced(self, shards: npt.NDArray[np.int64]) -> None:
        """Tell the chains of ``shards`` (homed here) that they have been sent all their keys."""
        shard_map = self.node.shard_map
        if shard_map.backups is None or not len(shards):
            return
        self._send_reports(shard_map.epoch, self.node.me, shards, shard_map.backups[shards, 0])

    def flushed(self, migration: int, shards: npt.NDArray[np.int64]) -> None:
        """``shards`` (homed here) are frozen for ``migration``: tell their chains, after
        every row sent before, so the coordinator commits the move only once the backups
        hold them (:mod:`dynaps.node.migration`)."""
        shard_map = self.node.shard_map
        if shard_map.backups is None or not len(shards):
            return
        self._send_reports(shard_map.epoch, self.node.me, shards, shard_map.backups[shards, 0], migration)

    def _send_reports(
        self,
        epoch: int,
        home: int,
        shards: npt.NDArray[np.int64],
        dests: npt.NDArray[np.int16],
        migration: int = 0,
    ) -> None:
        node = self.node
        for dest in np.unique(dests):
            if dest in (NO_BACKUP, node.me):
                continue
            chosen = [int(s) for s in shards[dests == dest]]
            report = control.ReplicaSynced(epoch=epoch, home=home, shards=chosen, migration=migration)
            node.send_frames(int(dest), messages.control(MsgType.REPLICA_SYNCED, node.me, report))

    def on_synced(self, report: control.ReplicaSynced, sender: int) -> None:
        """At a backup: pass the report on once every row sent before it is applied."""
        self.synced_reports.append((report, sender))
        self.pass_synced()

    def pass_synced(self) -> None:
        """Pass on the reports of epochs this node has reached (called at each new epoch,
        after the messages that waited for it were handled): to the coordinator, for the
        shards whose rows reach us from ``sender``, and to the next backup of each."""
        node = self.node
        shard_map = node.shard_map
        epoch = shard_map.epoch
        due = [(r, sender) for r, sender in self.synced_reports if r.epoch <= epoch]
        if not due:
            return
        self.synced_reports = [(r, sender) for r, sender in self.synced_reports if r.epoch > epoch]
        chains = shard_map.chains()
        width = chains.shape[1]
        for report, sender in due:
            shards = np.asarray([s for s in report.shards if 0 <= s < shard_map.num_shards], dtype=np.int64)
            at = chains[shards, 1:] == node.me
            slot = np.where(at.any(axis=1), at.argmax(axis=1) + 1, 0)
            # rows from another predecessor than the report's sender were not kept here
            ours = (slot > 0) & (chains[shards, slot - 1] == sender) & (chains[shards, 0] == report.home)
            shards, slot = shards[ours], slot[ours]
            if not len(shards):
                node.stats["replica_reports_stale"] += 1
                continue
            held = report.model_copy(update={"shards": [int(s) for s in shards]})
            node.send_frames(COORDINATOR, messages.control(MsgType.REPLICA_SYNCED, node.me, held))
            for shard in held.shards:
                self.synced_at[shard] = (report.epoch, report.home)
            following = np.where(slot + 1 < width, chains[shards, np.minimum(slot + 1, width - 1)], NO_BACKUP)
            self._send_reports(report.epoch, report.home, shards, following, report.migration)
