"""The data plane of a node: serving, forwarding and relocating keys (Lapse's protocol).

Every node (server or worker) answers requests for the keys it owns and forwards the
rest.  The rules, per key:

* owned here (``loc == me``): apply the operation and reply to the requester;
* on its way here (``loc == INCOMING``): queue the request; queued requests are replayed
  in arrival order when the key arrives;
* otherwise: a home forwards to the owner in its directory, any other node forwards to
  the key's home.

Relocation (``localize``) takes requester -> home -> old owner -> new owner: the home
records the new owner and sends HANDOFF to the old owner, which ships the value and the
updater state in a TRANSFER; the new owner acknowledges the requester (LOCALIZED).
A HANDOFF that reaches a node before the key does is queued like any request, so
concurrent localizes of one key form a chain.  Because every pair of endpoints is
connected by a FIFO channel and every decision is taken by the node that holds the key,
synchronous operations are sequentially consistent per key while keys move.

This class touches no socket: it reads decoded messages and sends through a
:class:`~dynaps.wire.transport.Transport`, so the protocol can be tested in-process.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.errors import ProtocolError
from dynaps.node.gate import ShardGate
from dynaps.node.migration import Migrations
from dynaps.node.recovery import Recoveries
from dynaps.node.replication import Replication
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock, SharedLock
from dynaps.store.table_store import INCOMING, NOT_MOVING, TableStore
from dynaps.wire.protocol import (
    COORDINATOR,
    MAX_HOPS,
    NO_ENDPOINT,
    RECOVERY,
    Message,
    MsgType,
    control_frames,
    decode,
    encode,
    encode_reply,
    is_client,
    node_of,
)
from dynaps.wire.routing import group_by, subset
from dynaps.wire.transport import Transport

log = logging.getLogger(__name__)

Index = npt.NDArray[np.intp]

_UPDATES = frozenset({MsgType.PUSH, MsgType.SET})
# requests a node may route again when their destination died
_REROUTABLE = frozenset(
    {MsgType.PULL, MsgType.PUSH, MsgType.SET, MsgType.LOCALIZE, MsgType.RELEASE, MsgType.TRANSFER_DONE}
)

# data messages that a home holds while their shard is frozen for a migration
_FREEZABLE = frozenset(
    {MsgType.PULL, MsgType.PUSH, MsgType.SET, MsgType.LOCALIZE, MsgType.RELEASE, MsgType.TRANSFER_DONE}
)


class NodeServer:
    """Handles data-plane messages for one node."""

    def __init__(
        self,
        node_id: int,
        transport: Transport,
        stores: Sequence[TableStore],
        shard_map: ShardMap,
        lock: SharedLock | NullLock,
    ) -> None:
        self.me = node_id
        self.transport = transport
        self.stores = list(stores)
        self.layouts = [store.layout for store in stores]
        self.shard_map = shard_map
        self.lock = lock
        self.pending: list[list[Message]] = [[] for _ in stores]  # requests for keys on their way here
        self.waiting: list[list[Message]] = [[] for _ in stores]  # localizes of keys still moving
        self.peers: set[int] = {COORDINATOR, NO_ENDPOINT, node_id}
        self.lost: set[int] = set()  # nodes that died: nothing is sent to them any more
        self.future: list[Message] = []  # requests from a newer epoch than ours
        self.parked: list[Message] = []  # requests for a dead node, waiting for a new epoch
        self.gate = ShardGate()  # shards frozen for a migration or recovering after a crash
        self.migrations = Migrations(self)
        self.recoveries = Recoveries(self)
        self.replication: Replication | None = None  # set when the job replicates
        self.checkpoint_root = ""  # where checkpoints live (for rebuilding lost shards)
        self.relocations_paused = False  # a checkpoint is being taken: no key changes owner
        # after a node is lost, no key changes owner for a while: requests sent again by
        # their clients must find the keys where the originals were applied (and remembered)
        self.fenced_until = 0.0
        self.stats: collections.Counter[str] = collections.Counter()
        self._homed: dict[tuple[int, int], npt.NDArray[np.bool_]] = {}
        self.released: list[npt.NDArray[np.bool_]] | None = None  # keys given back while draining
        self._last_malformed_log = 0.0
        self._handlers: dict[MsgType, Callable[[Message], None]] = {
            MsgType.PULL: self._on_pull,
            MsgType.PUSH: self._on_push,
            MsgType.SET: self._on_push,
            MsgType.LOCALIZE: self._on_localize,
            MsgType.HANDOFF: self._on_handoff,
            MsgType.TRANSFER: self._on_transfer,
            MsgType.RELEASE: self._on_release,
            MsgType.LOCALIZED: self._on_released,
            MsgType.TRANSFER_DONE: self._on_transfer_done,
            MsgType.SHARD_COPY: self.migrations.on_copy,
            MsgType.OWNERS: self.recoveries.on_owners,
            MsgType.REPLICATE: self._on_replicate,
            MsgType.WRITEBACK: self._on_writeback,
        }

    # ------------------------------------------------------------------ entry points

    def receive(self, frames: Sequence[Any]) -> Message | None:
        """Decode and handle one message; returns control messages for the caller."""
        self.stats["messages"] += 1
        try:
            msg = decode(frames, self.layouts)
            handler = self._handlers.get(msg.type)
            if handler is None:
                return msg
            if msg.requester not in self.peers or msg.sender not in self.peers:
                raise ProtocolError(f"unknown endpoint {msg.sender}/{msg.requester}")
            if self.lost and node_of(msg.sender) in self.lost:
                # Sent before it died, arriving late: what it held was rebuilt without it,
                # and its requests are sent again by their requesters.
                self.stats["dropped_from_lost"] += 1
                return None
        except ProtocolError as exc:
            self.note_malformed(exc)
            return None
        self.dispatch(msg)
        return None

    def dispatch(self, msg: Message) -> None:
        """Handle a decoded data message (also to replay queued requests)."""
        if msg.epoch > self.shard_map.epoch:
            self.future.append(msg)  # the sender knows a shard map we have not seen yet
            return
        replication = self.replication
        if replication is not None and msg.requester in replication.applied and msg.type in _UPDATES:
            # A record here means "applied", wherever the keys are now: answer it before
            # holding or forwarding it to a node that has no such record.
            msg = self._skip_applied(msg, replication)
            if not msg.count:
                return
        if self.gate.blocks is not None and msg.type in _FREEZABLE and msg.keys is not None:
            blocked = self.gate.blocked(msg.keys, self.stores[msg.table].spec.num_keys, self.shard_map)
            if blocked.any():
                if blocked.all():
                    self.gate.park(msg)
                    return
                self.gate.park(subset(msg, np.flatnonzero(blocked), msg.sender, msg.hops))
                msg = subset(msg, np.flatnonzero(~blocked), msg.sender, msg.hops)
        self._handlers[msg.type](msg)

    def note_malformed(self, exc: Exception) -> None:
        self.stats["malformed"] += 1
        now = time.monotonic()
        if now - self._last_malformed_log > 5.0:  # a flood must not become a log flood
            self._last_malformed_log = now
            log.warning(
                "node %d dropped a malformed message (%d so far): %s", self.me, self.stats["malformed"], exc
            )

    def send(self, dest: int, msg: Message) -> None:
        if node_of(dest) in self.lost:
            if dest == node_of(dest) and msg.type in _REROUTABLE:
                self.parked.append(msg)  # routed again once the dead node's shards have a home
            return
        msg.epoch = max(msg.epoch, self.shard_map.epoch)
        self.transport.send(dest, encode(msg))

    # ------------------------------------------------------------------ pull / push / set

    def _on_pull(self, msg: Message) -> None:
        store = self.stores[msg.table]
        keys = msg.keys
        assert keys is not None
        lock = self.lock
        if msg.count == 1:  # the common case, without array reductions
            lock.acquire()
            try:
                owned = store.loc[keys[0]] == self.me
                if owned:
                    row = store.values[keys]
            finally:
                lock.release()
            if owned:
                self.stats["keys_pulled"] += 1
                self._reply(msg, MsgType.PULL_REPLY, 1, msg.positions, row)
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
            self.stats["keys_pulled"] += len(keys)
            self._reply(msg, MsgType.PULL_REPLY, len(keys), msg.positions, values)
            return
        if values is not None:
            self.stats["keys_pulled"] += len(values)
            self._reply(msg, MsgType.PULL_REPLY, len(values), _positions(msg, idx), values)
        self._route(msg, store, rest, own[rest])

    def _on_push(self, msg: Message) -> None:
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
        self.stats["keys_updated"] += len(keys)
        if len(keys):
            # positions whenever the request had them or this is a part of it: the client
            # tracks what is done (to retry the rest) and learns who owns the keys
            positions = _positions(msg, idx) if rest is not None else msg.positions
            if replication is None or replication.after_update(msg, msg.table, keys, positions):
                self._reply(msg, MsgType.ACK, len(keys), positions, None)
        if rest is not None:
            self._route(msg, store, rest, own[rest])

    def _skip_applied(self, msg: Message, replication: Replication) -> Message:
        """A retried push: acknowledge again what was applied here, keep the rest."""
        applied = replication.already_applied(msg)
        if applied is None or not applied.any():
            return msg
        assert msg.keys is not None
        done = np.flatnonzero(applied)
        self.stats["keys_deduplicated"] += len(done)
        self.acknowledge(msg, len(done), _positions(msg, done))
        return subset(msg, np.flatnonzero(~applied), msg.sender, msg.hops)

    def acknowledge(self, msg: Message, count: int, positions: npt.NDArray[np.int32] | None) -> None:
        """ACK ``count`` keys of ``msg`` to its requester (also on behalf of a home)."""
        self._reply(msg, MsgType.ACK, count, positions, None)

    def _on_replicate(self, msg: Message) -> None:
        if self.replication is None:
            self.note_malformed(ProtocolError("REPLICATE to a node of a job without replication"))
            return
        self.replication.on_replicate(msg)

    def _on_writeback(self, msg: Message) -> None:
        if self.replication is None or self.stores[msg.table].owner is None:
            self.note_malformed(ProtocolError("WRITEBACK to a node that homes nothing or does not replicate"))
            return
        self.replication.on_writeback(msg)

    def _reply(
        self,
        msg: Message,
        kind: MsgType,
        count: int,
        positions: npt.NDArray[np.int32] | None,
        values: Any,
    ) -> None:
        frames = encode_reply(
            kind, self.me, msg.requester, msg.req_id, msg.table, count, msg.hops, positions, values
        )
        self.transport.send(msg.requester, frames)

    def _route(self, msg: Message, store: TableStore, idx: Index, own: npt.NDArray[np.int16]) -> None:
        """Queue or forward the keys ``msg.keys[idx]`` that this node does not own."""
        incoming = own == INCOMING
        if incoming.any():
            self.pending[msg.table].append(subset(msg, idx[incoming], msg.sender, msg.hops))
            self.stats["keys_queued"] += int(incoming.sum())
            idx = idx[~incoming]
            if not len(idx):
                return
        assert msg.keys is not None
        keys = msg.keys[idx]
        dests = self.shard_map.home_of(keys, store.spec.num_keys)
        if store.owner is not None:
            homed = dests == self.me
            if homed.any():
                dests = dests.copy()
                dests[homed] = store.owner[keys[homed]]
        if msg.hops + 1 > MAX_HOPS:
            self._error(msg, f"request for table {store.name!r} was forwarded {MAX_HOPS} times")
            return
        for dest, part in group_by(dests):
            if dest == self.me:  # directory says we own it but loc disagrees: never expected
                log.error("node %d: directory inconsistency for %d keys", self.me, len(keys))
                self.stats["anomalies"] += 1
                continue
            chosen = idx if part is None else idx[part]
            self.stats["keys_forwarded"] += len(chosen)
            self.send(dest, subset(msg, chosen, self.me, msg.hops + 1))

    def _error(self, msg: Message, text: str) -> None:
        self.stats["errors"] += 1
        log.error("node %d: %s", self.me, text)
        if is_client(msg.requester):
            reply = Message(MsgType.ERROR, self.me, msg.requester, msg.req_id, msg.table, text=text)
            self.send(msg.requester, reply)

    # ------------------------------------------------------------------ relocation

    def _on_localize(self, msg: Message) -> None:
        """At the home: record the requester as the new owner and ask the old owner to hand over."""
        self._redirect(msg, node_of(msg.requester), make_incoming=False)

    def _on_release(self, msg: Message) -> None:
        """At the home: a node gives keys back (drain); the home becomes their owner again."""
        self._redirect(msg, self.me, make_incoming=True)

    def _on_released(self, msg: Message) -> None:
        """A home confirms that keys this node released are back (the end of a drain)."""
        self.stats["keys_released"] += msg.count

    def _redirect(self, msg: Message, target: int, make_incoming: bool) -> None:
        """Make ``target`` the owner of the keys; one transfer per key is in flight at a time.

        Keys whose previous transfer has not arrived yet wait here (``waiting``) until the
        new owner confirms it (TRANSFER_DONE): so every HANDOFF reaches a node that holds
        the key, and a lost node never leaves a chain of nodes waiting for each other.
        """
        store = self.stores[msg.table]
        keys = msg.keys
        assert keys is not None
        if store.owner is None or store.moving_from is None:
            self.note_malformed(ProtocolError(f"{msg.type.name} sent to node {self.me}, which homes no keys"))
            return
        homes = self.shard_map.home_of(keys, store.spec.num_keys)
        here = homes == self.me
        if not here.all():
            elsewhere = np.flatnonzero(~here)
            for dest, part in group_by(homes[elsewhere]):
                chosen = elsewhere if part is None else elsewhere[part]
                self.send(dest, subset(msg, chosen, self.me, msg.hops + 1))
            keys = keys[here]
        keys = np.unique(keys)
        if self.relocations_paused or self.fenced_until:
            self.waiting[msg.table].append(_with_keys(msg, keys, target))
            return
        self.lock.acquire()
        try:
            busy = store.moving_from[keys] != NOT_MOVING
            if busy.any():
                self.waiting[msg.table].append(_with_keys(msg, keys[busy], target))
                self.stats["keys_waiting"] += int(busy.sum())
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
            self.lock.release()
        if settled:
            self._localized(msg.requester, msg.req_id, msg.table, settled)
        self.stats["keys_redirected"] += len(keys)
        for owner, part in group_by(old):
            chosen = keys if part is None else keys[part]
            handoff = Message(
                MsgType.HANDOFF,
                sender=self.me,
                requester=msg.requester,
                req_id=msg.req_id,
                table=msg.table,
                count=len(chosen),
                aux=target,
                keys=chosen,
            )
            if owner == self.me:
                self._on_handoff(handoff)
            else:
                self.send(owner, handoff)

    def _on_transfer_done(self, msg: Message) -> None:
        """At the home: the keys reached their new owner; start the transfers that waited."""
        store = self.stores[msg.table]
        keys = msg.keys
        assert keys is not None
        if store.moving_from is None:
            self.note_malformed(ProtocolError(f"TRANSFER_DONE sent to node {self.me}, which homes no keys"))
            return
        homes = self.shard_map.home_of(keys, store.spec.num_keys)
        here = homes == self.me
        if not here.all():
            elsewhere = np.flatnonzero(~here)
            for dest, part in group_by(homes[elsewhere]):
                chosen = elsewhere if part is None else elsewhere[part]
                self.send(dest, subset(msg, chosen, self.me, msg.hops + 1))
            keys = keys[here]
        self.lock.acquire()
        try:
            store.moving_from[keys] = NOT_MOVING
            if self.migrations.tracking:
                self.migrations.touch(msg.table, keys)
        finally:
            self.lock.release()
        queued = self.waiting[msg.table]
        if queued:
            self.waiting[msg.table] = []
            for waiting in queued:  # arrival order; keys still moving wait again
                self._redirect(waiting, waiting.aux, waiting.type is MsgType.RELEASE)

    def _on_handoff(self, msg: Message) -> None:
        """At the (old) owner: ship owned keys to ``msg.aux``; queue those not yet here."""
        store = self.stores[msg.table]
        keys = msg.keys
        assert keys is not None
        target = msg.aux
        values: Any = None
        states: tuple[Any, ...] = ()
        lock = self.lock
        lock.acquire()
        try:
            own = store.loc[keys]
            mine = own == self.me
            owned = keys[mine] if not mine.all() else keys
            if len(owned) and target != self.me:
                values = store.values.take(owned, axis=0)
                states = tuple(state.take(owned, axis=0) for state in store.states)
                store.loc[owned] = target
                if self.migrations.tracking:
                    self.migrations.touch(msg.table, owned)
        finally:
            lock.release()
        if len(owned):
            if target == self.me:  # the key is already where it should be
                self._localized(msg.requester, msg.req_id, msg.table, len(owned))
            else:
                self.stats["keys_sent"] += len(owned)
                transfer = Message(
                    MsgType.TRANSFER,
                    sender=self.me,
                    requester=msg.requester,
                    req_id=msg.req_id,
                    table=msg.table,
                    count=len(owned),
                    aux=len(states),
                    keys=owned,
                    values=values,
                    states=states,
                    body=self.replication.records_for(owned) if self.replication is not None else None,
                )
                self.send(target, transfer)
        if len(owned) < len(keys):
            rest = np.flatnonzero(~mine)
            incoming = own[rest] == INCOMING
            if incoming.any():
                self.pending[msg.table].append(subset(msg, rest[incoming], msg.sender, msg.hops))
            gone = int((~incoming).sum())
            if gone and target == self.me:
                # A client's "tell me when it is here": the key came and already moved on,
                # so its localize is complete (and superseded by a later one).
                self._localized(msg.requester, msg.req_id, msg.table, gone)
            elif gone:
                # The home thought we own keys that never came: a protocol bug, not load.
                self.stats["anomalies"] += gone
                log.error("node %d: handoff of %d keys it neither owns nor expects", self.me, gone)

    def _on_transfer(self, msg: Message) -> None:
        """At the new owner: take the values and state, then serve what waited for them."""
        store = self.stores[msg.table]
        keys, values = msg.keys, msg.values
        assert keys is not None
        assert values is not None
        states = msg.states
        self.lock.acquire()
        try:
            confirmed = None
            if msg.flags & RECOVERY:
                # a home re-sends keys whose sender died: only where they are still expected
                here = store.loc[keys]
                expected = here == INCOMING
                confirmed = keys[here == self.me]  # the real transfer came after all
                keys, values = keys[expected], values[expected]
                states = tuple(rows[expected] for rows in states)
            store.values[keys] = values
            for state, rows in zip(store.states, states, strict=True):
                state[keys] = rows
            store.loc[keys] = self.me
            if self.migrations.tracking:
                self.migrations.touch(msg.table, keys)
        finally:
            self.lock.release()
        if confirmed is not None and len(confirmed):
            self._confirm_arrival(msg.table, msg.req_id, confirmed)
        if self.replication is not None:
            self.replication.adopt_records(msg.body)
        if not len(keys):
            return
        if self.replication is not None:
            self._protect_arrivals(msg.table, keys)
        self.stats["keys_received"] += len(keys)
        self._localized(msg.requester, msg.req_id, msg.table, len(keys))
        self._confirm_arrival(msg.table, msg.req_id, keys)
        self._replay(msg.table)

    def _protect_arrivals(self, table: int, keys: npt.NDArray[np.int64]) -> None:
        """Keys arrived: a home replicates them, any other holder writes them back soon."""
        assert self.replication is not None
        if self.stores[table].owner is not None:
            homed = self.homed(table)[keys]
            self.replication.replicate(table, keys[homed], None, NO_ENDPOINT, 0)
            self.replication.dirty[table][keys[~homed]] = 1
        else:
            self.replication.dirty[table][keys] = 1

    def _confirm_arrival(self, table: int, req_id: int, keys: npt.NDArray[np.int64]) -> None:
        """Tell the keys' homes that they arrived (TRANSFER_DONE)."""
        homes = self.shard_map.home_of(keys, self.stores[table].spec.num_keys)
        for home, part in group_by(homes):
            chosen = keys if part is None else keys[part]
            done = Message(MsgType.TRANSFER_DONE, self.me, self.me, req_id, table, len(chosen), keys=chosen)
            if home == self.me:
                self._on_transfer_done(done)
            else:
                self.send(home, done)

    def _localized(self, requester: int, req_id: int, table: int, count: int) -> None:
        if requester in (NO_ENDPOINT, self.me):
            return
        self.send(requester, Message(MsgType.LOCALIZED, self.me, requester, req_id, table, count))

    def _replay(self, table: int) -> None:
        queued = self.pending[table]
        if not queued:
            return
        self.pending[table] = []
        for msg in queued:  # arrival order; parts still waiting are queued again in order
            self.dispatch(msg)

    # ------------------------------------------------------------------ membership changes

    def set_shard_map(self, new_map: ShardMap) -> None:
        """A newer epoch: finish the migrations it commits and serve what waited for it."""
        if new_map.epoch <= self.shard_map.epoch:
            return
        self.migrations.commit(new_map)
        if self.lost:
            # shards of a dead home that we take over: hold their requests until rebuilt
            orphaned = (new_map.homes == self.me) & np.isin(self.shard_map.homes, list(self.lost))
            self.recoveries.expect(np.flatnonzero(orphaned), new_map.num_shards)
        old_map, self.shard_map = self.shard_map, new_map
        if self.replication is not None:
            self.replication.sync(old_map, new_map)
        self._homed.clear()
        self.release_gate()
        for table, queued in enumerate(self.waiting):  # relocations of shards homed elsewhere now
            if queued:
                self.waiting[table] = []
                for msg in queued:
                    self._redirect(msg, msg.aux, msg.type is MsgType.RELEASE)
        waiting, self.future = self.future, []
        for msg in waiting:
            self.dispatch(msg)
        parked, self.parked = self.parked, []
        for msg in parked:  # route them by the new shard map
            self._reroute(msg)

    def _reroute(self, msg: Message) -> None:
        """Send a parked request on: data requests by the usual rules, home-bound ones
        (localize, release, arrival notices) to the keys' new homes."""
        if msg.type in _UPDATES or msg.type is MsgType.PULL:
            self.dispatch(msg)
            return
        assert msg.keys is not None
        homes = self.shard_map.home_of(msg.keys, self.stores[msg.table].spec.num_keys)
        for home, part in group_by(homes):
            chosen = np.arange(len(msg.keys)) if part is None else part
            self.send(home, subset(msg, chosen, msg.sender, msg.hops))

    def release_gate(self) -> None:
        """Handle the held requests whose shards are available again."""

        def still_blocked(msg: Message) -> bool:
            assert msg.keys is not None
            return bool(
                self.gate.blocked(msg.keys, self.stores[msg.table].spec.num_keys, self.shard_map).any()
            )

        for msg in self.gate.release(still_blocked):
            self.dispatch(msg)

    def homed(self, table: int) -> npt.NDArray[np.bool_]:
        """Which keys of ``table`` this node is the home of (cached per epoch)."""
        cached = self._homed.get((table, self.shard_map.epoch))
        if cached is None:
            store = self.stores[table]
            all_keys = np.arange(store.spec.num_keys, dtype=np.int64)
            cached = self.shard_map.home_of(all_keys, store.spec.num_keys) == self.me
            self._homed[(table, self.shard_map.epoch)] = cached
        return cached

    def pause_relocations(self) -> None:
        self.relocations_paused = True

    def lift_fence(self, now: float) -> None:
        """End the relocation fence that followed a lost node, once its time is up."""
        if self.fenced_until and now >= self.fenced_until:
            self.fenced_until = 0.0
            if not self.relocations_paused:
                self.resume_relocations()

    def resume_relocations(self) -> None:
        self.relocations_paused = False
        if self.fenced_until:
            return
        for table, queued in enumerate(self.waiting):
            if queued:
                self.waiting[table] = []
                for msg in queued:
                    self._redirect(msg, msg.aux, msg.type is MsgType.RELEASE)

    def relocations_quiet(self) -> bool:
        """No transfer of a key homed here is in flight."""
        for table, store in enumerate(self.stores):
            if store.moving_from is not None and (store.moving_from[self.homed(table)] != NOT_MOVING).any():
                return False
        return True

    def report_migration_ready(self, migration_id: int) -> None:
        self.transport.send(COORDINATOR, control_frames(MsgType.MIGRATE_READY, self.me, {"id": migration_id}))

    # ------------------------------------------------------------------ introspection

    def counters(self) -> dict[str, int | float | str]:
        counters: dict[str, int | float | str] = dict(self.stats)
        counters["node"] = self.me
        counters["queued_now"] = sum(len(q) for q in self.pending) + sum(len(q) for q in self.waiting)
        counters["metadata_bytes"] = sum(store.metadata_bytes() for store in self.stores)
        counters["num_keys"] = sum(store.spec.num_keys for store in self.stores)
        counters["owned_keys"] = sum(int((store.loc == self.me).sum()) for store in self.stores)
        counters["epoch"] = self.shard_map.epoch
        counters["held_now"] = len(self.gate.held) + len(self.future) + len(self.parked)
        return counters


def _with_keys(msg: Message, keys: npt.NDArray[np.int64], target: int) -> Message:
    """A LOCALIZE or RELEASE for some of its keys, remembering whom the keys go to."""
    return Message(
        msg.type,
        msg.sender,
        msg.requester,
        msg.req_id,
        msg.table,
        len(keys),
        aux=target,
        hops=msg.hops,
        keys=keys,
    )


def _positions(msg: Message, idx: Index) -> npt.NDArray[np.int32]:
    return msg.positions[idx] if msg.positions is not None else idx.astype(np.int32)
