"""The data plane of a node: :class:`NodeServer` takes every data message and hands it on.

Every node (server or worker) runs one.  It decodes a message, drops it when it comes from
an unknown or lost endpoint or is malformed, holds requests of a newer epoch than its own
and requests for shards frozen for a migration or a recovery, answers again the retried
pushes it already applied, and hands the rest to the part that handles the message's type:
pulls, pushes and sets to :class:`~dynaps.node.serving.Serving` (Lapse's rules per key:
serve, queue or forward), relocations to :mod:`dynaps.node.relocation`, and so on.  It
applies new shard maps and the loss of nodes, and reports the node's counters.

:class:`NodeServer` wires the node's parts together: each gets the narrow view of
:class:`~dynaps.node.context.NodeContext` (which this class provides) and owns its state.
It touches no socket: it reads decoded messages and sends through a
:class:`~dynaps.wire.transport.Transport`, so the protocol can be tested in-process.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.errors import ProtocolError
from dynaps.node.applied import AppliedRequests
from dynaps.node.departures import Departures
from dynaps.node.gate import ShardGate
from dynaps.node.migration import Migrations
from dynaps.node.recovery import Recoveries
from dynaps.node.relocation import Relocations
from dynaps.node.replication import Replication
from dynaps.node.serving import Serving, reply
from dynaps.node.writeback import WriteBack
from dynaps.store.notices import Notices
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock, SharedLock
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.throttled_log import ThrottledLog
from dynaps.wire import control, messages, routing
from dynaps.wire.codec import decode, encode
from dynaps.wire.protocol import (
    COORDINATOR,
    NO_ENDPOINT,
    Message,
    MsgType,
    client_of,
    is_client,
    node_of,
)
from dynaps.wire.routing import positions_of, subset
from dynaps.wire.transport import Transport

log = logging.getLogger(__name__)

_UPDATES = frozenset({MsgType.PUSH, MsgType.SET})
# Requests from a newer epoch wait for it, within bounds: a member is at most a few epochs
# ahead (the coordinator commits one at a time, each after the nodes took part), so one
# far ahead names an epoch never issued, and a full queue means a flood, not a lag.
MAX_EPOCHS_AHEAD = 64
MAX_FUTURE = 100_000
# Requests and arrival notices: a node routes them again when their destination died, and
# a home holds them while their shard is frozen for a migration.
_ROUTED = messages.REQUEST_TYPES | {MsgType.TRANSFER_DONE}
# Counted per table (NodeServer.table_stats; STATS sums them): requests handled here, keys
# answered or updated here, keys sent on to their owner; keys that moved here or away by
# relocation (received, sent) and migration; keys restored after a node died (rebuilt: a
# lost home's shards; recovered: a lost worker's keys, taken back by their home).
TABLE_COUNTERS = (
    "pulls",
    "keys_pulled",
    "pushes",
    "keys_updated",
    "keys_forwarded",
    "keys_received",
    "keys_sent",
    "keys_migrated_in",
    "keys_migrated_out",
    "keys_rebuilt",
    "keys_recovered",
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
        flush_interval_ms: int | None = None,
        checkpoint_root: str = "",
        notices: Notices | None = None,
    ) -> None:
        """``flush_interval_ms``: replicate (see :mod:`dynaps.node.replication`), writing held
        keys back at this interval; None: the job does not replicate.  ``checkpoint_root``:
        where checkpoints live (to rebuild lost shards from).  ``notices``: where a worker
        node tells its training process that its localizes completed (None: by message)."""
        self.me = node_id
        self.checkpoint_root = checkpoint_root  # CHECKPOINT orders must write under it
        self.transport = transport
        self.stores = list(stores)
        self.layouts = [store.layout for store in stores]
        self.shard_map = shard_map
        self.lock = lock
        self.peers: set[int] = {COORDINATOR, NO_ENDPOINT, node_id}
        self.future: list[Message] = []  # requests from a newer epoch than ours
        self.parked: list[Message] = []  # requests for a dead node, waiting for a new epoch
        self.stats: collections.Counter[str] = collections.Counter()
        # per table, what happened to its keys here (TABLE_COUNTERS)
        self.table_stats: list[collections.Counter[str]] = [
            collections.Counter(dict.fromkeys(TABLE_COUNTERS, 0)) for _ in self.stores
        ]
        self._homed: dict[tuple[int, int], npt.NDArray[np.bool_]] = {}
        self.metrics_port: int | None = None  # where the node's process serves /metrics (STATS says)
        # a flood must not become a log flood
        self._malformed_log = ThrottledLog(log, f"node {node_id} dropped a malformed message")
        self.gate = ShardGate()  # shards frozen for a migration or recovering after a crash
        self.loss_reports: collections.deque[control.TookBack | control.HandoffLost] = collections.deque(
            maxlen=control.LOSS_REPORTS_KEPT
        )
        self.applied = AppliedRequests()  # exactly once, with or without replication
        self.replication = (
            None
            if flush_interval_ms is None
            else Replication(self, flush_interval_ms, self.acknowledge, self.applied, self._changed)
        )
        # the write-back of keys held away from their home (a part of replication)
        self.writeback: WriteBack | None = None if self.replication is None else self.replication.writeback
        self.migrations = Migrations(
            self, self.applied, None if self.replication is None else self.replication.flushed
        )
        self.recoveries = Recoveries(self, checkpoint_root, self.replication, self.applied.records_for)
        self.departures = Departures(self, on_lost=self._forget_lost, records_for=self.applied.records_for)
        self.relocations = Relocations(
            self,
            self.dispatch,
            self.migrations,
            self.replication,
            self.writeback,
            self.applied,
            lambda: self.departures.fenced,
            notices,
        )
        self.serving = Serving(
            self, transport, self.relocations.queue, self.migrations, self.replication, self.applied
        )
        self._handlers: dict[MsgType, Callable[[Message], None]] = {
            MsgType.PULL: self.serving.on_pull,
            MsgType.PUSH: self.serving.on_push,
            MsgType.SET: self.serving.on_push,
            MsgType.LOCALIZE: self.relocations.on_localize,
            MsgType.HANDOFF: self.relocations.on_handoff,
            MsgType.TRANSFER: self.relocations.on_transfer,
            MsgType.RELEASE: self.relocations.on_release,
            MsgType.LOCALIZED: self.relocations.releases.on_released,
            MsgType.ACK: self.relocations.releases.on_release_acked,  # keys it gave back are backed up
            MsgType.TRANSFER_DONE: self.relocations.on_transfer_done,
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
            peers = self.peers
            if (msg.requester not in peers or msg.sender not in peers) and not (
                self._known(msg.requester) and self._known(msg.sender)
            ):  # the test of each message is the two set lookups; a program's first ones need more
                raise ProtocolError(f"unknown endpoint {msg.sender}/{msg.requester}")
            lost = self.departures.lost
            if lost and node_of(msg.sender) in lost:
                # Sent before it died, arriving late: what it held was rebuilt without it,
                # and its requests are sent again by their requesters.
                self.stats["dropped_from_lost"] += 1
                return None
        except ProtocolError as exc:
            self.note_malformed(exc)
            return None
        self.dispatch(msg)
        return None

    def _known(self, endpoint: int) -> bool:
        """A member, or the training program of a member node.  A program that attached a
        moment ago sends at once, while the membership that names it is still on its way to
        the nodes: its push, or the copy another server forwards down a backup chain, may come
        first (a chaos run lost a push so: dropped at a backup, never acknowledged).  Its
        answers wait in the transport until that membership gives its address."""
        return endpoint in self.peers or (is_client(endpoint) and node_of(endpoint) in self.peers)

    def dispatch(self, msg: Message) -> None:
        """Handle a decoded data message (also to replay queued requests)."""
        if msg.epoch > self.shard_map.epoch:
            if msg.epoch - self.shard_map.epoch > MAX_EPOCHS_AHEAD or len(self.future) >= MAX_FUTURE:
                self.note_malformed(
                    ProtocolError(f"{msg!r}: epoch {msg.epoch} too far ahead, or too many ahead")
                )
                return
            self.future.append(msg)  # the sender knows a shard map we have not seen yet
            return
        if msg.requester in self.applied and msg.type in _UPDATES:
            # A record here means "applied", wherever the keys are now: answer it before
            # holding or forwarding it to a node that has no such record.
            msg = self._skip_applied(msg)
            if not msg.count:
                return
        if self.gate.blocks is not None and msg.type in _ROUTED and msg.keys is not None:
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
        self._malformed_log(exc)

    def send(self, dest: int, msg: Message) -> None:
        if node_of(dest) in self.departures.lost:
            if dest == node_of(dest) and msg.type in _ROUTED:
                self.parked.append(msg)  # routed again once the dead node's shards have a home
            return
        msg.epoch = max(msg.epoch, self.shard_map.epoch)
        self.transport.send(dest, encode(msg))

    def send_frames(self, dest: int, frames: Sequence[Any]) -> None:
        self.transport.send(dest, frames)

    def report_loss(self, report: control.TookBack | control.HandoffLost) -> None:
        """Tell the coordinator of updates lost (TOOK_BACK, HANDOFF_LOST), and keep the report
        to say again to a replacement coordinator (in REJOIN)."""
        kind = MsgType.TOOK_BACK if isinstance(report, control.TookBack) else MsgType.HANDOFF_LOST
        self.loss_reports.append(report)
        self.send_frames(COORDINATOR, messages.control(kind, self.me, report))

    # ------------------------------------------------------------------ retries and replication

    def _skip_applied(self, msg: Message) -> Message:
        """A retried push: answer again what was applied here (through the chain of a
        replicated home), keep the rest."""
        applied = self.applied.already_applied(msg)
        if applied is None or not applied.any():
            return msg
        assert msg.keys is not None
        done = np.flatnonzero(applied)
        self.stats["keys_deduplicated"] += len(done)
        positions = positions_of(msg, done)
        replication = self.replication
        if replication is None or replication.after_retry(msg, msg.keys[done], positions):
            self.acknowledge(msg, len(done), positions)
        return subset(msg, np.flatnonzero(~applied), msg.sender, msg.hops)

    def acknowledge(self, msg: Message, count: int, positions: npt.NDArray[np.int32] | None) -> None:
        """ACK ``count`` keys of ``msg`` to its requester (also on behalf of a home)."""
        reply(self.transport, self.me, msg, MsgType.ACK, count, positions, None)

    def _on_replicate(self, msg: Message) -> None:
        if self.replication is None:
            self.note_malformed(ProtocolError("REPLICATE to a node of a job without replication"))
            return
        self.replication.on_replicate(msg)

    def _changed(self, table: int, keys: npt.NDArray[np.int64]) -> None:
        """Rows of ``keys`` changed here outside a request (a write-back): a pre-copy that
        sent them already must send them again."""
        if self.migrations.tracking:
            self.migrations.touch(table, keys)

    def _on_writeback(self, msg: Message) -> None:
        if self.writeback is None:
            self.note_malformed(ProtocolError("WRITEBACK to a node of a job without replication"))
        elif self.stores[msg.table].owner is not None:
            self.writeback.on_writeback(msg)
        elif msg.sender == client_of(self.me) and msg.keys is not None:
            # our training process wrote through: its rows go on our path to the homes,
            # behind (and never before) the rows we sent for the same keys.  Keys that left
            # and are on their way back wait for their arrival: the rows here are stale
            # (the update went with them), and their home already counts us as the owner.
            incoming = self.stores[msg.table].loc[msg.keys] == INCOMING
            if incoming.any():
                self.relocations.queue(subset(msg, np.flatnonzero(incoming), msg.sender, msg.hops))
                if incoming.all():
                    return
                msg = subset(msg, np.flatnonzero(~incoming), msg.sender, msg.hops)
            assert msg.keys is not None
            self.writeback.write_back(msg.table, msg.keys, msg.positions, msg.requester, msg.req_id)
        else:
            self.note_malformed(ProtocolError("WRITEBACK to a worker from another endpoint than its client"))

    # ------------------------------------------------------------------ membership changes

    def set_shard_map(self, new_map: ShardMap) -> None:
        """A newer epoch: finish the migrations it commits and serve what waited for it."""
        if new_map.epoch <= self.shard_map.epoch:
            return
        self.migrations.commit(new_map)
        lost = self.departures.lost
        if lost:
            # shards of a dead home that we take over: hold their requests until rebuilt
            orphaned = (new_map.homes == self.me) & np.isin(self.shard_map.homes, list(lost))
            self.recoveries.expect(np.flatnonzero(orphaned), new_map.num_shards)
        old_map, self.shard_map = self.shard_map, new_map
        if self.replication is not None and self.writeback is not None:
            self.replication.sync(old_map, new_map, self.recoveries.rebuilding())
            self.writeback.rehome(old_map, new_map)
            self.migrations.refreeze()  # a chain that changed gets the marker at its new backups
            self.writeback.rehome_deferred()
        self._homed.clear()
        self.release_gate()
        self.relocations.retry_waiting()  # relocations of shards homed elsewhere now
        waiting, self.future = self.future, []
        for msg in waiting:
            self.dispatch(msg)
        if self.replication is not None:
            self.replication.pass_synced()  # the rows that waited for this epoch are applied
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
        for home, piece in routing.split(msg, homes):
            self.send(home, piece)

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

    def take_back_from_lost(self, lost: set[int]) -> None:
        """Nodes died (see :meth:`Departures.take_back_from_lost`); forget their requests."""
        new = self.departures.take_back_from_lost(lost)
        if new:
            self.relocations.drop_requests_of(new)
            if self.writeback is not None:
                self.writeback.forget_deferred()

    def _forget_lost(self, node: int) -> None:
        self.transport.forget(node)
        self.transport.forget(client_of(node))
        self.recoveries.forget_node(node)
        self.relocations.releases.lost_destination(node)  # keys we were giving back to it: counted lost

    def lift_fence(self, now: float) -> None:
        """End the relocation fence that followed a lost node, once its time is up."""
        if self.departures.lift_fence(now) and not self.relocations.paused:
            self.relocations.resume()

    # ------------------------------------------------------------------ introspection

    def counters(self) -> dict[str, int | float | str]:
        counters: dict[str, int | float | str] = dict(self.stats)
        for name in TABLE_COUNTERS:
            counters[name] = sum(table[name] for table in self.table_stats)
        counters["node"] = self.me
        counters["queued_now"] = self.relocations.queued_now()
        counters["metadata_bytes"] = sum(store.metadata_bytes() for store in self.stores)
        counters["num_keys"] = sum(store.spec.num_keys for store in self.stores)
        counters["owned_keys"] = sum(int((store.loc == self.me).sum()) for store in self.stores)
        counters["epoch"] = self.shard_map.epoch
        counters["held_now"] = len(self.gate.held) + len(self.future) + len(self.parked)
        counters["records_held"] = sum(len(seen) for seen in self.applied.applied.values())
        if self.metrics_port is not None:
            counters["metrics_port"] = self.metrics_port
        return counters
