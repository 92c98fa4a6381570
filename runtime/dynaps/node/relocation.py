"""Relocating keys between nodes: localize, release, and the handoffs they cause (Lapse).

Relocation (``localize``) takes requester -> home -> old owner -> new owner: the home
records the new owner and sends HANDOFF to the old owner, which ships the value and the
updater state in a TRANSFER; the new owner acknowledges the requester (LOCALIZED) and
tells the home that the key arrived (TRANSFER_DONE).  A HANDOFF that reaches a node
before the key does is queued like any request, so concurrent localizes of one key form
a chain.  A drain gives keys back to their home with RELEASE, which works the same way.

:class:`Relocations` owns the queues this needs: requests for keys on their way here
(``pending``), and relocations that wait for a key's previous transfer, for a checkpoint
(``paused``) or for the fence after a lost node (``waiting``); a node giving keys back
keeps a record of them until their home confirms them (:mod:`dynaps.node.releases`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.errors import ProtocolError
from dynaps.node.applied import AppliedRequests
from dynaps.node.context import NodeContext
from dynaps.node.migration import Migrations
from dynaps.node.releases import Releases
from dynaps.node.replication import Replication
from dynaps.node.writeback import WriteBack
from dynaps.store.notices import Notices
from dynaps.store.table_store import INCOMING, NOT_MOVING
from dynaps.wire import messages, routing
from dynaps.wire.protocol import (
    NO_ENDPOINT,
    RECOVERY,
    Message,
    MsgType,
    client_of,
    is_client,
    node_of,
)
from dynaps.wire.routing import group_by, subset

log = logging.getLogger(__name__)


class Relocations:
    """The node's part in moving keys: as a home, an old owner, a new owner."""

    def __init__(
        self,
        node: NodeContext,
        dispatch: Callable[[Message], None],
        migrations: Migrations,
        replication: Replication | None,
        writeback: WriteBack | None,
        applied: AppliedRequests,
        fenced: Callable[[], bool],
        notices: Notices | None = None,
    ) -> None:
        self.node = node
        self.dispatch = dispatch  # handles a request again once its keys arrived
        self.migrations = migrations  # notes keys that changed while a shard is copied
        self.replication = replication  # a home replicates keys that arrive
        self.writeback = writeback  # any other holder writes them back
        self.applied = applied  # its records travel with the keys (exactly once)
        self.fenced = fenced  # no key changes owner while a lost node's fence lasts
        # our own training process learns through shared memory that its localizes ended
        self.notices = notices
        self.own_client = client_of(node.me)
        self.pending: list[list[Message]] = [[] for _ in node.stores]  # requests for keys on their way here
        self.waiting: list[list[Message]] = [[] for _ in node.stores]  # localizes of keys still moving
        self.paused = False  # a checkpoint is being taken: no key changes owner
        self.releases = Releases(node)  # keys this node gave back, until their home confirms

    def queue(self, msg: Message) -> None:
        """Hold a request for keys on their way here; it is handled again when they arrive."""
        self.pending[msg.table].append(msg)

    def drop_requests_of(self, nodes: set[int]) -> None:
        """Requests of dead clients need no answer."""
        for queue in self.pending:
            queue[:] = [m for m in queue if node_of(m.requester) not in nodes]

    def queued_now(self) -> int:
        return sum(len(q) for q in self.pending) + sum(len(q) for q in self.waiting)

    def on_localize(self, msg: Message) -> None:
        """At the home: record the requester as the new owner and ask the old owner to hand over."""
        self._redirect(msg, node_of(msg.requester), make_incoming=False)

    def on_release(self, msg: Message) -> None:
        """At the home: a node gives keys back (drain); the home becomes their owner again."""
        self._redirect(msg, self.node.me, make_incoming=True)

    def _redirect(self, msg: Message, target: int, make_incoming: bool) -> None:
        """Make ``target`` the owner of the keys; one transfer per key is in flight at a time.

        Keys whose previous transfer has not arrived yet wait here (``waiting``) until the
        new owner confirms it (TRANSFER_DONE): so every HANDOFF reaches a node that holds
        the key, and a lost node never leaves a chain of nodes waiting for each other.
        """
        node = self.node
        store = node.stores[msg.table]
        keys = msg.keys
        assert keys is not None
        if store.owner is None or store.moving_from is None:
            node.note_malformed(ProtocolError(f"{msg.type.name} sent to node {node.me}, which homes no keys"))
            return
        keys = self._homed_here(msg, keys, store.spec.num_keys)
        if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
            keys = np.unique(keys)  # a client sends them sorted and unique: check, not sort
        if self.paused or self.fenced():
            self.waiting[msg.table].append(messages.with_keys(msg, keys, target=target))
            return
        node.lock.acquire()
        try:
            busy = store.moving_from[keys] != NOT_MOVING
            if busy.any():
                self.waiting[msg.table].append(messages.with_keys(msg, keys[busy], target=target))
                node.stats["keys_waiting"] += int(busy.sum())
                keys = keys[~busy]
            old = store.owner[keys]
            moving = old != target
            if not moving.all():
                settled = int((~moving).sum())  # already owned by the target
                keys, old = keys[moving], old[moving]
            else:
                settled = 0
            store.owner[keys] = target
            store.moving_from[keys] = old
            if make_incoming:
                store.loc[keys] = INCOMING
            if self.migrations.tracking:
                self.migrations.touch(msg.table, keys)
        finally:
            node.lock.release()
        if settled:
            self._localized(msg.requester, msg.req_id, msg.table, settled)
        node.stats["keys_redirected"] += len(keys)
        for owner, part in group_by(old):
            chosen = keys if part is None else keys[part]
            handoff = messages.handoff(node.me, msg.requester, msg.req_id, msg.table, chosen, target)
            if owner == node.me:
                self.on_handoff(handoff)
            else:
                node.send(owner, handoff)

    def on_transfer_done(self, msg: Message) -> None:
        """At the home: the keys reached their new owner; start the transfers that waited."""
        node = self.node
        store = node.stores[msg.table]
        keys = msg.keys
        assert keys is not None
        if store.moving_from is None:
            node.note_malformed(ProtocolError(f"TRANSFER_DONE sent to node {node.me}, which homes no keys"))
            return
        keys = self._homed_here(msg, keys, store.spec.num_keys)
        node.lock.acquire()
        try:
            store.moving_from[keys] = NOT_MOVING
            if self.migrations.tracking:
                self.migrations.touch(msg.table, keys)
        finally:
            node.lock.release()
        if self.writeback is not None:
            self.writeback.arrived(msg.table)
        queued = self.waiting[msg.table]
        if queued:
            self.waiting[msg.table] = []
            for waiting in queued:  # arrival order; keys still moving wait again
                self._redirect(waiting, waiting.aux, waiting.type is MsgType.RELEASE)

    def on_handoff(self, msg: Message) -> None:
        """At the (old) owner: ship owned keys to ``msg.aux``; queue those not yet here."""
        node = self.node
        store = node.stores[msg.table]
        keys = msg.keys
        assert keys is not None
        target = msg.aux
        values: Any = None
        states: tuple[Any, ...] = ()
        lock = node.lock
        lock.acquire()
        try:
            own = store.loc[keys]
            mine = own == node.me
            owned = keys[mine] if not mine.all() else keys
            if len(owned) and target != node.me:
                values = store.values.take(owned, axis=0)
                states = tuple(state.take(owned, axis=0) for state in store.states)
                store.loc[owned] = target
                if self.migrations.tracking:
                    self.migrations.touch(msg.table, owned)
        finally:
            lock.release()
        if len(owned):
            if target == node.me:  # the key is already where it should be
                self._localized(msg.requester, msg.req_id, msg.table, len(owned))
            else:
                node.table_stats[msg.table]["keys_sent"] += len(owned)
                req_id = msg.req_id
                if msg.requester == node.me:
                    # our own RELEASE: the home's LOCALIZED names this transfer (its req_id)
                    req_id = self.releases.sent(msg.table, target, owned)
                transfer = messages.transfer(
                    node.me,
                    msg.requester,
                    req_id,
                    msg.table,
                    owned,
                    values,
                    states,
                    records=self.applied.records_for(owned),
                )
                node.send(target, transfer)
        if len(owned) < len(keys):
            rest = np.flatnonzero(~mine)
            incoming = own[rest] == INCOMING
            if incoming.any():
                self.pending[msg.table].append(subset(msg, rest[incoming], msg.sender, msg.hops))
            gone = int((~incoming).sum())
            if gone and target == node.me:
                # A client's "tell me when it is here": the key came and already moved on,
                # so its localize is complete (and superseded by a later one).
                self._localized(msg.requester, msg.req_id, msg.table, gone)
            elif gone:
                # The home thought we own keys that never came: a protocol bug, not load.
                node.stats["anomalies"] += gone
                log.error("node %d: handoff of %d keys it neither owns nor expects", node.me, gone)

    def on_transfer(self, msg: Message) -> None:
        """At the new owner: take the values and state, then serve what waited for them."""
        node = self.node
        store = node.stores[msg.table]
        keys, values = msg.keys, msg.values
        assert keys is not None
        assert values is not None
        states = msg.states
        node.lock.acquire()
        try:
            confirmed = None
            if msg.flags & RECOVERY:
                # a home re-sends keys whose sender died: only where they are still expected
                here = store.loc[keys]
                expected = here == INCOMING
                confirmed = keys[here == node.me]  # the real transfer came after all
                keys, values = keys[expected], values[expected]
                states = tuple(rows[expected] for rows in states)
            store.values[keys] = values
            for state, rows in zip(store.states, states, strict=True):
                state[keys] = rows
            store.loc[keys] = node.me
            if self.migrations.tracking:
                self.migrations.touch(msg.table, keys)
        finally:
            node.lock.release()
        if confirmed is not None and len(confirmed):
            self._confirm_arrival(msg.table, msg.req_id, confirmed)
        self.applied.adopt_records(msg.records)
        if not len(keys):
            return
        acks = False  # the chain's tails confirm a release to its sender once backed up
        if self.replication is not None:
            acks = self._protect_arrivals(msg.table, keys, msg.records, msg.requester, msg.req_id)
        node.table_stats[msg.table]["keys_received"] += len(keys)
        self._localized(msg.requester, msg.req_id, msg.table, len(keys), acks)
        self._confirm_arrival(msg.table, msg.req_id, keys)
        self._replay(msg.table)

    def _protect_arrivals(
        self,
        table: int,
        keys: npt.NDArray[np.int64],
        records: dict[str, Any] | None,
        requester: int,
        req_id: int,
    ) -> bool:
        """Keys arrived: a home replicates them; any other holder writes them back at once,
        with the records that came with them, before it confirms their arrival on the same
        path.  So the home has every update their last holder made before the move ends,
        whichever of the two dies next (the home acknowledges an update written through
        on the way only then: :meth:`WriteBack.arrived`).

        Keys a node gave back (``requester``: that node) that all come home here: the tail
        of their chains acknowledges them to it, and True is returned.  Their rows are then
        on every backup when the node learns they arrived: a home that dies before its
        replicas have them has lost the node's updates since its last write-back, which
        the node, unconfirmed, reports (:meth:`Releases.lost_destination`)."""
        node = self.node
        assert self.replication is not None
        assert self.writeback is not None
        backed_up = False
        if node.stores[table].owner is not None:
            homed = node.homed(table)[keys]
            releasing = homed.all() and requester not in (NO_ENDPOINT, node.me) and not is_client(requester)
            if releasing:
                backed_up = self.replication.replicate(table, keys, None, requester, req_id)
            else:
                self.replication.replicate(table, keys[homed], None, NO_ENDPOINT, 0)
            keys = keys[~homed]
        if len(keys):
            self.writeback.write_back(table, keys, None, NO_ENDPOINT, 0, records)
        return backed_up

    def _confirm_arrival(self, table: int, req_id: int, keys: npt.NDArray[np.int64]) -> None:
        """Tell the keys' homes that they arrived (TRANSFER_DONE)."""
        node = self.node
        homes = node.shard_map.home_of(keys, node.stores[table].spec.num_keys)
        for home, part in group_by(homes):
            chosen = keys if part is None else keys[part]
            done = messages.transfer_done(node.me, req_id, table, chosen)
            if home == node.me:
                self.on_transfer_done(done)
            else:
                node.send(home, done)

    def _localized(self, requester: int, req_id: int, table: int, count: int, acks: bool = False) -> None:
        node = self.node
        if requester in (NO_ENDPOINT, node.me):
            return
        notices = self.notices
        if requester == self.own_client and notices is not None and notices.post(req_id, table, count):
            node.stats["localized_notices"] += 1
            return
        node.send(requester, messages.localized(node.me, requester, req_id, table, count, acks))

    def _replay(self, table: int) -> None:
        queued = self.pending[table]
        if not queued:
            return
        self.pending[table] = []
        for msg in queued:  # arrival order; parts still waiting are queued again in order
            self.dispatch(msg)

    # ------------------------------------------------------------------ pausing

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        if self.fenced():
            return
        self.retry_waiting()

    def retry_waiting(self) -> None:
        """Start the relocations that waited (each waits again if it must)."""
        for table, queued in enumerate(self.waiting):
            if queued:
                self.waiting[table] = []
                for msg in queued:
                    self._redirect(msg, msg.aux, msg.type is MsgType.RELEASE)

    def quiet(self) -> bool:
        """No transfer of a key homed here is in flight."""
        node = self.node
        for table, store in enumerate(node.stores):
            if store.moving_from is not None and (store.moving_from[node.homed(table)] != NOT_MOVING).any():
                return False
        return True

    def _homed_here(self, msg: Message, keys: npt.NDArray[np.int64], num_keys: int) -> npt.NDArray[np.int64]:
        """The keys of ``msg`` this node homes; the others go on to their homes (a shard
        may have moved since the sender looked)."""
        node = self.node
        homes = node.shard_map.home_of(keys, num_keys)
        here = homes == node.me
        if here.all():
            return keys
        elsewhere = np.flatnonzero(~here)
        for dest, piece in routing.split(msg, homes[elsewhere], elsewhere, node.me, msg.hops + 1):
            node.send(dest, piece)
        mine: npt.NDArray[np.int64] = keys[here]
        return mine
