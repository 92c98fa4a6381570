"""What a node does on the coordinator's orders: membership, drain, checkpoint, recovery.

The decisions live here, in-process and free of sockets and OS processes, so tests drive
them directly; :class:`~dynaps.node.process.NodeProcess` is the shell that feeds them
messages and the clock, and does what only an OS process can (:class:`Shell`).

A graceful leave (:meth:`ControlPlane.start_drain`, on DRAIN or SIGTERM) is a state
machine of its own, :class:`~dynaps.node.drain.Drainer`: the control plane starts it and
its tick advances it.

A node the coordinator declared lost (it was paused or cut off for too long) must not
serve on: others now serve its keys.  It stops as soon as it learns so (:meth:`fence`): a
MEMBERSHIP that lists it as lost or leaves it out, or the coordinator refusing its
heartbeat (REFUSED); the process then exits with ``FENCED_EXIT_CODE``.  What it sent before
is dropped by the others, who know it as lost.  After a gap in its loop it serves nothing
before the coordinator said it is still a member (:mod:`dynaps.node.waking`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from dynaps.errors import ConfigError, ProtocolError
from dynaps.node import rejoining
from dynaps.node.drain import LEAVE_LINGER, Drain, Drainer
from dynaps.node.drain import Shell as DrainShell
from dynaps.node.server import NodeServer
from dynaps.node.waking import WAKE_LIMIT, WAKE_RETRY, Frames, Waking
from dynaps.store.checkpoint_files import contained, write_owned
from dynaps.store.shardmap import ShardMap
from dynaps.wire import control, joining, membership_deltas, messages
from dynaps.wire.protocol import COORDINATOR, Message, MsgType, node_of

log = logging.getLogger(__name__)


class Shell(DrainShell, Protocol):
    """What the control logic asks of the OS process around it: what a drain asks, and
    the node's heartbeat."""

    def heartbeat(self) -> control.Heartbeat:
        """This node's sign of life, as sent to the coordinator."""


@dataclass
class CheckpointPause:
    """A checkpoint is being taken: relocations are paused until it resumes them."""

    id: int
    quiet: bool = False  # reported: no transfer of a key homed here is in flight


class ControlPlane:
    """A node's control state and its reactions to control messages and time."""

    def __init__(
        self,
        server: NodeServer,
        role: control.Role,
        shell: Shell,
        drain_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        wake_gap: float = math.inf,
    ) -> None:
        """``wake_gap``: seconds between two turns of the node's loop after which it asks the
        coordinator before it serves again (half its silence limit; inf: never)."""
        self.server = server
        self.node_id = server.me
        self.role = role
        self.shell = shell
        self.members: set[int] = set()  # live node ids, from the last membership
        self.highest_node_id = self.node_id  # of every node heard of (for a new coordinator)
        self.client_address: str | None = None  # where this worker's training process receives
        self.drainer = Drainer(server, role, shell, self.send_coordinator, drain_timeout, clock)
        self.checkpoint: CheckpointPause | None = None
        self.fenced = ""  # why the coordinator no longer counts this node as a member
        self.waking = Waking(wake_gap)  # after a gap in the loop: data held until confirmed
        # the membership last applied; a MEMBERSHIP_DELTA that does not follow it asks for the whole
        self.follower = membership_deltas.Follower(self._ask_membership, clock)
        # shards homed here that were loaded from a checkpoint: their backups get them once the
        # job runs (:meth:`sync_restored_when_running`)
        self.restored: npt.NDArray[np.int64] | None = None

    def sync_restored_when_running(self, shards: npt.NDArray[np.int64]) -> None:
        """Send ``shards`` (restored here) down their chains once the job runs, not before.

        Before the job runs a backup may still be waiting for its own first membership, and
        a node does not keep what reaches it then: the rows would be dropped while the report
        that follows them, arriving after its membership, counted it as a synced replica of
        initial values (a loss of this server then lost the restored keys, unreported).  When
        the coordinator announces RUNNING, every member has its store and its membership.
        """
        self.restored = shards

    def send_coordinator(self, kind: MsgType, body: BaseModel, req_id: int = 0) -> None:
        self.server.send_frames(COORDINATOR, messages.control(kind, self.node_id, body, req_id))

    @property
    def drain(self) -> Drain | None:
        """The step of the node's drain (None: not draining)."""
        return self.drainer.step

    @drain.setter
    def drain(self, step: Drain | None) -> None:
        self.drainer.step = step

    @property
    def abandoned(self) -> bool:
        """It left while draining, without a handover (the coordinator was gone)."""
        return self.drainer.abandoned

    @property
    def wake_gap(self) -> float:
        return self.waking.gap

    @wake_gap.setter
    def wake_gap(self, gap: float) -> None:
        self.waking.gap = gap

    # ------------------------------------------------------------------ after a gap in the loop

    def turned(self, now: float) -> None:
        """The node's loop turns at ``now`` (before it handles what it received)."""
        if self.waking.turn(now) and not self.fenced:
            log.warning(
                "node %d: its loop did not run for more than %.1f s: it serves nothing until the "
                "coordinator confirms it is still a member",
                self.node_id,
                self.waking.gap,
            )
            self._ask_if_member(now)

    def _ask_if_member(self, now: float) -> None:
        # the heartbeat first: REFUSED if we were declared lost, else it resets our silence
        # before the PING is answered
        self.send_coordinator(MsgType.HEARTBEAT, self.shell.heartbeat())
        self.send_coordinator(MsgType.PING, control.Empty(), self.waking.ask(now))

    def admit(self, frames: Frames) -> bool:
        """Whether the node may handle a message it received now (else it was kept, or it is
        fenced and drops it)."""
        return not self.fenced and self.waking.admit(frames)

    def take_released(self) -> list[Frames]:
        """Data messages held after a gap, to handle now that the node serves again."""
        return self.waking.take_released()

    # ------------------------------------------------------------------ membership

    def _ask_membership(self, version: int) -> None:
        self.server.stats["membership_asked"] += 1
        self.send_coordinator(MsgType.MEMBERSHIP_QUERY, control.MembershipQuery(version=version))

    def apply_membership(self, membership: control.Membership) -> None:
        server = self.server
        self.follower.took(membership)
        if self.node_id in membership.lost:
            self.fence(f"membership {membership.version} lists it as lost")
            return
        if membership.node(self.node_id) is None and self.drain is not Drain.LEFT:
            # Only a node that left is ever left out of a membership it receives.
            self.fence(f"membership {membership.version} does not list it")
            return
        members = joining.connect_members(server.transport, membership)
        self.members = {info.id for info in membership.nodes}
        self.highest_node_id = max(self.highest_node_id, *self.members, *membership.lost)
        mine = membership.node(self.node_id)
        if mine is not None:
            self.client_address = mine.client
        departed = {e for e in server.peers - members if e > 0 and node_of(e) not in membership.lost}
        server.peers |= members
        if membership.lost:
            server.take_back_from_lost(set(membership.lost))
        new_map = ShardMap.from_json(membership.shard_map)
        if new_map.epoch > server.shard_map.epoch:
            server.set_shard_map(new_map)
        server.departures.forget_departed({node_of(e) for e in departed} - {self.node_id})
        for endpoint in departed - {self.node_id}:
            # no socket kept to a node that left: ZeroMQ would reconnect to its address for
            # ever, handing the job's password to whoever listens there next
            server.transport.forget(endpoint, linger=LEAVE_LINGER * 2)
        if self.restored is not None and membership.phase is control.Phase.RUNNING:
            shards, self.restored = self.restored, None
            if server.replication is not None:
                homed = shards[server.shard_map.homes[shards] == self.node_id]  # still ours
                server.replication.sync_shards(homed, server.shard_map)
                server.replication.report_synced(homed)

    # ------------------------------------------------------------------ control messages

    def fence(self, why: str) -> None:
        """The coordinator declared this node lost: stop serving, and exit (non-zero)."""
        if self.fenced:
            return
        self.fenced = why
        self.waking.drop()
        log.error("node %d: fenced, no longer a member of the job (%s): it stops", self.node_id, why)
        self.shell.stop_loop()

    def on_message(self, msg: Message) -> None:
        """Act on a control message; a bad one is counted and dropped like any malformed one."""
        server = self.server
        if self.fenced:
            return  # no longer a member: nothing it does now may count
        if msg.sender == COORDINATOR:
            self.drainer.coordinator_heard()
        try:
            if msg.type is MsgType.REFUSED:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("REFUSED from a non-coordinator")
                # Registered long ago: a refusal now answers a heartbeat of a node declared lost.
                refused = control.body_of(msg, control.Refused)
                if refused.node != self.node_id:  # another node's fence, replayed here
                    raise ProtocolError(f"REFUSED for node {refused.node}, this is {self.node_id}")
                self.fence(refused.reason)
            elif msg.type is MsgType.MEMBERSHIP:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("MEMBERSHIP from a non-coordinator")
                self.apply_membership(control.body_of(msg, control.Membership))
            elif msg.type is MsgType.MEMBERSHIP_DELTA:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("MEMBERSHIP_DELTA from a non-coordinator")
                following = self.follower.next(control.body_of(msg, control.MembershipDelta))
                if following is not None:
                    self.apply_membership(following)
            elif msg.type is MsgType.SHUTDOWN:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("SHUTDOWN from a non-coordinator")
                log.info(
                    "node %d: shutdown (%s)", self.node_id, control.body_of(msg, control.Shutdown).reason
                )
                self.shell.stop_loop()
            elif msg.type is MsgType.MIGRATE_OUT:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("MIGRATE_OUT from a non-coordinator")
                server.migrations.start(control.body_of(msg, control.MigrateOut))
            elif msg.type is MsgType.DRAIN:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("DRAIN from a non-coordinator")
                self.start_drain(control.body_of(msg, control.Drain).reason or "drain requested")
            elif msg.type is MsgType.ADOPT:  # a restarted coordinator rebuilds the job
                if msg.sender != COORDINATOR:
                    raise ProtocolError("ADOPT from a non-coordinator")
                server.migrations.abort_all()  # it would never commit them
                answer = rejoining.rejoin(
                    self.shell.heartbeat(),
                    server.shard_map.to_json(),
                    self.highest_node_id,
                    self.follower.current,
                    server.loss_reports,
                    members=control.body_of(msg, control.Adopt).members,
                    replicas=server.replication.synced_replicas() if server.replication else (),
                )
                self.send_coordinator(MsgType.REJOIN, answer)
            elif msg.type is MsgType.MIGRATE_ABORT:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("MIGRATE_ABORT from a non-coordinator")
                server.migrations.abort(control.body_of(msg, control.MigrateAbort).id)
            elif msg.type is MsgType.RECOVER:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("RECOVER from a non-coordinator")
                order = control.body_of(msg, control.Recover)
                server.recoveries.start(order.id, order.shards, order.source, self.members, order.holders)
            elif msg.type is MsgType.OWNERS_QUERY:
                if node_of(msg.sender) not in self.members:
                    raise ProtocolError(f"OWNERS_QUERY from unknown node {msg.sender}")
                query = control.body_of(msg, control.OwnersQuery)
                server.recoveries.report_owners(
                    msg.sender, query.id, np.asarray(query.shards, dtype=np.int64)
                )
            elif msg.type is MsgType.REPLICA_SYNCED:  # from a home whose shards we back up
                if server.replication is None or msg.sender not in server.peers:
                    raise ProtocolError(f"REPLICA_SYNCED from {msg.sender}, which is no member")
                if node_of(msg.sender) in self.members:
                    server.replication.on_synced(control.body_of(msg, control.ReplicaSynced), msg.sender)
                else:  # sent before its home left: that home backs up nothing any more
                    server.stats["replica_reports_stale"] += 1
            elif msg.type is MsgType.CHECKPOINT:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("CHECKPOINT from a non-coordinator")
                self.on_checkpoint(control.body_of(msg, control.Checkpoint))
            elif msg.type is MsgType.PONG and msg.sender == COORDINATOR:
                if self.waking.confirmed(msg.req_id):
                    log.warning(
                        "node %d: the coordinator counts it as a member: it serves again", self.node_id
                    )
            elif msg.type in (MsgType.STATS, MsgType.PING):
                if msg.sender not in server.peers:
                    raise ProtocolError(f"{msg.type.name} from unknown endpoint {msg.sender}")
                if msg.type is MsgType.STATS:
                    stats = control.Stats(counters=server.counters())
                    reply = messages.control(MsgType.STATS_REPLY, self.node_id, stats, msg.req_id)
                else:
                    reply = messages.control(MsgType.PONG, self.node_id, control.Empty(), msg.req_id)
                server.send_frames(msg.sender, reply)
            elif msg.type is MsgType.WELCOME and msg.sender == COORDINATOR:
                pass  # the answer to a REGISTER sent again, after the first answer came
            else:
                raise ProtocolError(f"node does not handle {msg.type.name}")
        except ProtocolError as exc:
            server.note_malformed(exc)

    def on_checkpoint(self, order: control.Checkpoint) -> None:
        server = self.server
        if order.phase == "pause":  # homes: no new relocations, report once none is in flight
            server.relocations.pause()
            self.checkpoint = CheckpointPause(order.id)
        elif order.phase == "write":
            written, failed = 0, ""
            try:
                # a path elsewhere, or a link planted in the volume: not obeyed, and said so,
                # for the coordinator abandons the round (relocations wait for it to end)
                directory = contained(server.checkpoint_root, order.path)
                with server.lock:
                    for store in server.stores:
                        written += write_owned(store, self.node_id, directory)
            except (ConfigError, OSError) as exc:
                log.error("node %d: cannot write checkpoint %d: %s", self.node_id, order.id, exc)
                failed = str(exc)[:500]
            done = control.CheckpointDone(
                id=order.id, phase=control.CheckpointPhase.WRITE, keys=written, failed=failed
            )
            self.send_coordinator(MsgType.CHECKPOINT_DONE, done)
        else:  # resume
            self.checkpoint = None
            server.relocations.resume()

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """The periodic duties that follow from the node's state (between requests)."""
        server = self.server
        if self.drainer.step is not None:
            self.drainer.advance(now)
        waking = self.waking
        if waking.since is not None and not self.fenced:
            if now - waking.since >= WAKE_LIMIT:
                log.warning(
                    "node %d: no answer from the coordinator for %.0f s: it serves again",
                    self.node_id,
                    WAKE_LIMIT,
                )
                waking.release()
            elif now - waking.asked_at >= WAKE_RETRY:
                self._ask_if_member(now)
        server.recoveries.tick(now)
        server.lift_fence(now)
        if server.writeback is not None:
            server.writeback.flush(now)
        checkpoint = self.checkpoint
        if checkpoint is not None and not checkpoint.quiet and server.relocations.quiet():
            checkpoint.quiet = True
            paused = control.CheckpointDone(id=checkpoint.id, phase=control.CheckpointPhase.PAUSE)
            self.send_coordinator(MsgType.CHECKPOINT_DONE, paused)

    # ------------------------------------------------------------------ draining

    def start_drain(self, reason: str) -> None:
        """Begin a graceful leave (idempotent): :mod:`dynaps.node.drain`."""
        self.drainer.start(reason)

    def coordinator_disconnected(self, now: float) -> None:
        self.drainer.coordinator_disconnected(now)
