"""Write-back (under ``faultTolerance.replication``): the copies of keys held away from home.

* **Worker-held keys** (localized): the worker writes their current rows back to their
  home every ``flushIntervalMs`` (WRITEBACK), with the records of the requests applied
  to them; the home keeps the rows of keys the sender holds (and the records) and
  replicates them.  When a worker dies, its homes take its keys back with the last rows
  written back: the loss is bounded by the flush interval, and a request sent again is
  answered from the records, not applied on top of rows that include it.  Keys that
  arrive at a holder are written back at once, before the arrival is confirmed.
  ``flushIntervalMs: 0`` writes through: an update of a localized key is acknowledged
  only once its home and backup have it (for a key on its way to a new owner: once the
  new owner's write-back is in, :meth:`WriteBack.on_writeback`).
* A server that holds keys homed elsewhere writes their updates back the same way
  (:meth:`dynaps.node.replication.Replication.after_update`).

The home passes the rows it keeps down its shard's chain (:mod:`dynaps.node.replication`,
which owns this part and gives it its ``replicate``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from dynaps.node.applied import AppliedRequests, Keys, Positions
from dynaps.node.context import NodeContext
from dynaps.node.migration import shard_keys
from dynaps.store.shardmap import ShardMap
from dynaps.wire import messages, routing
from dynaps.wire.protocol import NO_ENDPOINT, Message, MsgType, is_client, node_of
from dynaps.wire.routing import positions_of, subset

# ACK ``count`` keys of a message to its requester, with their positions in the request
Acknowledge = Callable[[Message, int, Positions | None], None]
Records = dict[str, Any] | None  # applied-request records (AppliedRequests.records_for)
# the rows of ``keys`` of a table changed here (a migration's pre-copy must send them again)
Changed = Callable[[int, Keys], None]
# send the home's rows of ``keys`` of a table down their chains for (requester, req_id), at
# ``positions``; True if a backup will acknowledge (:meth:`Replication.replicate`)
Replicate = Callable[[int, Keys, Positions | None, int, int], bool]


class WriteBack:
    """The node's part in write-back: as a holder of keys homed elsewhere, and as their home."""

    def __init__(
        self,
        node: NodeContext,
        flush_interval_ms: int,
        acknowledge: Acknowledge,
        applied: AppliedRequests,
        changed: Changed,
        replicate: Replicate,
    ) -> None:
        self.node = node
        self.acknowledge = acknowledge
        self.changed = changed  # a write-back stored rows of homed keys
        self.applied = applied  # the node's record of applied updates (a write-back adds to it)
        self.replicate = replicate  # a home passes the rows it keeps down their chains
        self.write_through = flush_interval_ms == 0
        self.flush_interval = flush_interval_ms / 1000
        # keys held here whose rows changed since the last write-back (shared with the
        # training process on a worker, which marks its local updates)
        self.dirty = [
            store.dirty if store.dirty is not None else np.zeros(store.spec.num_keys, np.uint8)
            for store in node.stores
        ]
        self.last_flush = 0.0
        # clients' requests applied to keys marked dirty since the last flush: the flush sends
        # their records (the earlier ones went with earlier flushes)
        self.unflushed: set[tuple[int, int]] = set()
        # at a home: rows a client wrote through for keys on their way to a new owner, acknowledged
        # once they arrive (:meth:`on_writeback`)
        self.deferred: list[Message] = []

    def mark_dirty(self, msg: Message, table: int, keys: Keys) -> None:
        """Write back ``keys``, updated by ``msg``, at the next flush (with its record)."""
        self.dirty[table][keys] = 1
        if is_client(msg.requester):
            self.unflushed.add((msg.requester, msg.req_id))

    def write_back(
        self,
        table: int,
        keys: Keys,
        positions: Positions | None,
        requester: int,
        req_id: int,
        records: Records = None,
        *,
        records_of: Collection[tuple[int, int]] = (),
    ) -> None:
        """Send the current rows of held ``keys`` to their homes.

        ``records`` go with them (the applied-request records of the updates the rows
        include, for the homes to adopt), or this node's records of the requests
        ``records_of`` about the keys each home gets.
        """
        node = self.node
        store = node.stores[table]
        node.lock.acquire()
        try:
            values, states = store.rows(keys)
        finally:
            node.lock.release()
        if positions is None and is_client(requester):
            # a home remembers the positions it acknowledges (None would claim the whole
            # request, and a part of it may go to another home)
            positions = np.arange(len(keys), dtype=np.int32)
        homes = node.shard_map.home_of(keys, store.spec.num_keys)
        rows = messages.rows(
            MsgType.WRITEBACK, node.me, requester, req_id, table, keys, values, states, positions=positions
        )
        for home, part in routing.split_rows(rows, homes):
            assert part.keys is not None
            part.records = self.applied.records_for(part.keys, records_of) if records_of else records
            if home == node.me:
                self.on_writeback(part)
            else:
                node.send(home, part)
        node.stats["keys_written_back"] += len(keys)

    def flush(self, now: float) -> None:
        """Write back held keys that changed since the last flush (every flush interval)."""
        if self.write_through or now - self.last_flush < self.flush_interval:
            return
        self.last_flush = now
        node = self.node
        unflushed, self.unflushed = self.unflushed, set()
        for table, store in enumerate(node.stores):
            dirty = self.dirty[table]
            # A worker's training process marks keys in this shared array while it is read:
            # numpy refuses to count nonzeros that change under it, so count a copy. Clearing
            # before the rows are read (under the lock, in write_back) keeps every update: one
            # marked after the copy is either in what is read or marked again for next time.
            keys = np.flatnonzero(dirty.copy())
            if not len(keys):
                continue
            dirty[keys] = 0
            held = keys[store.loc[keys] == node.me].astype(np.int64)
            if len(held):
                # with the records of the requests applied to them since the last flush: a
                # request sent again after this node died is then answered by the home, not
                # applied again (the records of keys that arrived went with their write-back)
                self.write_back(table, held, None, NO_ENDPOINT, 0, records_of=unflushed)

    def rehome(self, old: ShardMap, new: ShardMap) -> None:
        """Held keys whose shard got a new home: write them back to it (at the next flush,
        or now when writing through).  The old home's copy went to the new home with the
        shard, but a write-back that reached the old home after its final delta (while the
        shard was frozen, or before this node heard of the commit) did not: the new home
        keeps rows only from a key's holder, so it drops them when the old home forwards
        them."""
        moved = np.flatnonzero(old.homes != new.homes)
        if not len(moved):
            return
        node = self.node
        for table, store in enumerate(node.stores):
            keys = shard_keys(store, moved, new)
            held = keys[(store.loc[keys] == node.me) & ~node.homed(table)[keys]]
            if not len(held):
                continue
            if self.write_through:
                self.write_back(table, held, None, NO_ENDPOINT, 0)
            else:
                self.dirty[table][held] = 1

    def on_writeback(self, msg: Message) -> None:
        """At the home: keep the rows of keys the sender holds (with the records of the
        updates they include), and replicate them; the chain's tail acknowledges a client's
        update written through.

        Rows of keys on their way from the sender to a new owner are not kept: the new
        owner writes them back when they arrive, and they may arrive here before these
        (another path), which must not replace them.  The new owner's rows include the
        update, and they come before its arrival notice (TRANSFER_DONE) on one path, so the
        update is acknowledged then (:meth:`arrived`), not before.
        """
        node = self.node
        store = node.stores[msg.table]
        assert msg.keys is not None
        assert msg.values is not None
        assert store.owner is not None
        assert store.moving_from is not None
        records = msg.records
        homed = node.homed(msg.table)[msg.keys]
        if not homed.all():  # the shard moved: its new home takes it
            elsewhere = np.flatnonzero(~homed)
            homes = node.shard_map.home_of(msg.keys[elsewhere], store.spec.num_keys)
            # from the holder still: the new home keeps the rows of keys the sender holds
            for home, piece in routing.split(msg, homes, elsewhere, msg.sender, msg.hops + 1):
                piece.records = records  # each home keeps the part about the rows it keeps
                node.send(home, piece)
            msg = subset(msg, np.flatnonzero(homed), msg.sender, msg.hops)
        keys, values = msg.keys, msg.values
        assert keys is not None
        assert values is not None
        sender = node_of(msg.sender)  # a client writes through for its node
        node.lock.acquire()
        try:
            current = store.owner[keys] == sender
            store.values[keys[current]] = values[current]
            for state, rows in zip(store.states, msg.states, strict=True):
                state[keys[current]] = rows[current]
            self.changed(msg.table, keys[current])
            leaving = store.moving_from[keys] == sender
        finally:
            node.lock.release()
        kept = keys if current.all() else keys[current]
        if records and len(kept):
            self.applied.adopt_records(records, only=kept)
        if not is_client(msg.requester):
            self.replicate(msg.table, keys, None, NO_ENDPOINT, 0)
            return
        if len(kept):
            self.applied.remember(msg.requester, msg.req_id, positions_of(msg, np.flatnonzero(current)), kept)
        if leaving.any():
            self.deferred.append(subset(msg, np.flatnonzero(leaving), msg.sender, msg.hops))
            if leaving.all():
                return
            msg = subset(msg, np.flatnonzero(~leaving), msg.sender, msg.hops)
        self._acknowledge_rows(msg)

    def _acknowledge_rows(self, msg: Message) -> None:
        """Send the home's rows of a client's written-through keys down their chains, for
        the tail to acknowledge (or acknowledge them here, without backups)."""
        assert msg.keys is not None
        if not self.replicate(msg.table, msg.keys, msg.positions, msg.requester, msg.req_id):
            self.acknowledge(msg, len(msg.keys), msg.positions)

    def arrived(self, table: int) -> None:
        """Keys of ``table`` homed here reached their new owner (TRANSFER_DONE): their rows
        written through on the way are in the home's copy now; acknowledge them."""
        if not self.deferred:
            return
        store = self.node.stores[table]
        assert store.moving_from is not None
        waiting, self.deferred = self.deferred, []
        for msg in waiting:
            assert msg.keys is not None
            if msg.table != table:
                self.deferred.append(msg)
                continue
            still = store.moving_from[msg.keys] == node_of(msg.sender)
            if still.all():
                self.deferred.append(msg)
                continue
            due = msg
            if still.any():
                self.deferred.append(subset(msg, np.flatnonzero(still), msg.sender, msg.hops))
                due = subset(msg, np.flatnonzero(~still), msg.sender, msg.hops)
            assert due.keys is not None
            self.applied.remember(due.requester, due.req_id, due.positions, due.keys)
            self._acknowledge_rows(due)

    def forget_deferred(self) -> None:
        """A node was lost: the rows written through on their way may have died with it.
        Their clients send those updates again (as every unanswered one after a loss),
        and the retry is answered from a record or applied."""
        self.deferred.clear()

    def rehome_deferred(self) -> None:
        """A new shard map: rows waiting here for keys whose shard moved go to its new home,
        which has their directory entries (and waits for their arrival notice)."""
        waiting, self.deferred = self.deferred, []
        for msg in waiting:
            assert msg.keys is not None
            if self.node.homed(msg.table)[msg.keys].all():
                self.deferred.append(msg)
            else:
                self.on_writeback(msg)  # sends on the part homed elsewhere, waits for the rest
