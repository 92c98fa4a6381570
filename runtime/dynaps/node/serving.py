"""Serving pulls, pushes and sets at the node they reach (Lapse's protocol).

Every node (server or worker) answers requests for the keys it owns and forwards the
rest.  The rules, per key:

* owned here (``loc == me``): apply the operation and reply to the requester;
* on its way here (``loc == INCOMING``): queue the request; queued requests are replayed
  in arrival order when the key arrives;
* otherwise: a home forwards to the owner in its directory, any other node forwards to
  the key's home.

Keys move between nodes by relocation (:mod:`dynaps.node.relocation`).  Because every
pair of endpoints is connected by a FIFO channel and every decision is taken by the node
that holds the key, synchronous operations are sequentially consistent per key while
keys move.

:class:`Serving` is one of the node's parts (see :mod:`dynaps.node.context`); the node
hands it the requests once it has checked them (epoch, frozen shards, retries already
applied: :class:`~dynaps.node.server.NodeServer`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.node.applied import AppliedRequests
from dynaps.node.context import NodeContext
from dynaps.node.migration import Migrations
from dynaps.node.replication import Replication
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.wire import messages, routing
from dynaps.wire.codec import encode_reply
from dynaps.wire.protocol import MAX_HOPS, Message, MsgType, is_client
from dynaps.wire.routing import positions_of, subset
from dynaps.wire.transport import Transport

log = logging.getLogger(__name__)

Index = npt.NDArray[np.intp]


class Serving:
    """Handles the pulls, pushes and sets that reach one node."""

    def __init__(
        self,
        node: NodeContext,
        transport: Transport,
        queue: Callable[[Message], None],
        migrations: Migrations,
        replication: Replication | None,
        applied: AppliedRequests,
    ) -> None:
        self.node = node
        # What serving a key owned here reads, held here (the node never replaces them):
        # a request costs as few lookups as it did when this code was the node's own.
        self.me = node.me
        self.stores = node.stores
        self.lock = node.lock
        self.stats = node.stats
        self.table_stats = node.table_stats
        self.transport = transport  # replies go straight to the requester
        self.send = node.send  # forwarded requests go through the node (it holds them for a dead one)
        self.queue = queue  # holds a request for keys on their way here (relocation)
        self.migrations = migrations  # notes keys that changed while their shard is copied
        self.replication = replication
        self.applied = applied  # exactly once without replication: what was applied, per requester

    def on_pull(self, msg: Message) -> None:
        """Answer the keys owned here; queue or forward the rest."""
        store = self.stores[msg.table]
        keys = msg.keys
        assert keys is not None
        lock = self.lock
        counted = self.table_stats[msg.table]
        counted["pulls"] += 1
        if msg.count == 1:  # the common case, without array reductions
            lock.acquire()
            try:
                owned = store.loc[keys[0]] == self.me
                if owned:
                    row = store.values[keys]
            finally:
                lock.release()
            if owned:
                counted["keys_pulled"] += 1
                reply(self.transport, self.me, msg, MsgType.PULL_REPLY, 1, msg.positions, row)
                return
        lock.acquire()
        try:
            own = store.loc[keys]
            mine = own == self.me
            values: Any
            if mine.all():
                values = store.values.take(keys, axis=0)
                rest = None
            else:
                idx = np.flatnonzero(mine)
                values = store.values.take(keys[idx], axis=0) if len(idx) else None
                rest = np.flatnonzero(~mine)
        finally:
            lock.release()
        if rest is None:
            counted["keys_pulled"] += len(keys)
            reply(self.transport, self.me, msg, MsgType.PULL_REPLY, len(keys), msg.positions, values)
            return
        if values is not None:
            counted["keys_pulled"] += len(values)
            reply(
                self.transport, self.me, msg, MsgType.PULL_REPLY, len(values), positions_of(msg, idx), values
            )
        self._route(msg, store, rest, own[rest])

    def on_push(self, msg: Message) -> None:
        """Apply a push or set to the keys owned here and acknowledge them; queue or forward the rest."""
        store = self.stores[msg.table]
        keys, updates = msg.keys, msg.values
        assert keys is not None
        assert updates is not None
        assignment = msg.type is MsgType.SET
        replication = self.replication
        rest = None
        lock = self.lock
        lock.acquire()
        try:
            own = store.loc[keys]
            mine = own == self.me
            if not mine.all():
                idx = np.flatnonzero(mine)
                rest = np.flatnonzero(~mine)
                keys, updates = keys[idx], updates[idx]
            if len(keys):
                if assignment:
                    store.values[keys] = updates
                else:
                    store.updater.apply(store.values, store.states, keys, updates)
                if self.migrations.tracking:
                    self.migrations.touch(msg.table, keys)
        finally:
            lock.release()
        counted = self.table_stats[msg.table]
        counted["pushes"] += 1
        counted["keys_updated"] += len(keys)
        if len(keys):
            # positions whenever the request had them or this is a part of it: the client
            # tracks what is done (to retry the rest) and learns who owns the keys
            positions = positions_of(msg, idx) if rest is not None else msg.positions
            if replication is None:
                self.applied.after_update(msg, keys, positions)
            if replication is None or replication.after_update(msg, msg.table, keys, positions):
                reply(self.transport, self.me, msg, MsgType.ACK, len(keys), positions, None)
        if rest is not None:
            self._route(msg, store, rest, own[rest])

    def _route(self, msg: Message, store: TableStore, idx: Index, own: npt.NDArray[np.int16]) -> None:
        """Queue or forward the keys ``msg.keys[idx]`` that this node does not own."""
        incoming = own == INCOMING
        if incoming.any():
            self.queue(subset(msg, idx[incoming], msg.sender, msg.hops))
            self.stats["keys_queued"] += int(incoming.sum())
            idx = idx[~incoming]
            if not len(idx):
                return
        assert msg.keys is not None
        keys = msg.keys[idx]
        dests = self.node.shard_map.home_of(keys, store.spec.num_keys)
        if store.owner is not None:
            homed = dests == self.me
            if homed.any():
                dests = dests.copy()
                dests[homed] = store.owner[keys[homed]]
        if msg.hops + 1 > MAX_HOPS:
            self._error(msg, f"request for table {store.name!r} was forwarded {MAX_HOPS} times")
            return
        for dest, piece in routing.split(msg, dests, idx, self.me, msg.hops + 1):
            if dest == self.me:  # directory says we own it but loc disagrees: never expected
                log.error("node %d: directory inconsistency for %d keys", self.me, len(keys))
                self.stats["anomalies"] += 1
                continue
            self.table_stats[msg.table]["keys_forwarded"] += piece.count
            self.send(dest, piece)

    def _error(self, msg: Message, text: str) -> None:
        self.stats["errors"] += 1
        log.error("node %d: %s", self.me, text)
        if is_client(msg.requester):
            refusal = messages.error(self.me, msg.requester, msg.req_id, msg.table, text)
            self.send(msg.requester, refusal)


def reply(
    transport: Transport,
    me: int,
    msg: Message,
    kind: MsgType,
    count: int,
    positions: npt.NDArray[np.int32] | None,
    values: Any,
) -> None:
    """Send ``msg``'s requester a reply (PULL_REPLY or ACK) for ``count`` of its keys."""
    frames = encode_reply(kind, me, msg.requester, msg.req_id, msg.table, count, msg.hops, positions, values)
    transport.send(msg.requester, frames)
