"""What the coordinator does with a member's message while the job runs.

:class:`~dynaps.coordinator.core.Coordinator` keeps the job's life (registration, start,
restart, the end) and hands every other message of a known member here: barriers and
clocks, leaving, migrations and recoveries, losses reported, replicas, checkpoints, leases,
reports, stages, holdings, queries.  Each goes to the part that owns it; a message a member
may not send raises ProtocolError (the coordinator drops it and logs).
"""

from __future__ import annotations

from collections.abc import Callable

from dynaps.coordinator.adoption import Adoption
from dynaps.coordinator.barriers import Barriers
from dynaps.coordinator.checkpoint_rounds import CheckpointRounds
from dynaps.coordinator.departures import Departures
from dynaps.coordinator.leases import Leases
from dynaps.coordinator.outbox import Outbox
from dynaps.coordinator.progress import Progress
from dynaps.coordinator.reports import Reports
from dynaps.coordinator.roster import Member, Roster
from dynaps.coordinator.shard_homes import ShardHomes
from dynaps.coordinator.stages import Stages
from dynaps.errors import ProtocolError
from dynaps.wire import control
from dynaps.wire.control import Membership
from dynaps.wire.protocol import Message, MsgType, client_of


class MemberMessages:
    """Routes a running member's messages to the coordinator's parts."""

    def __init__(
        self,
        roster: Roster,
        outbox: Outbox,
        homes: ShardHomes,
        barriers: Barriers,
        progress: Progress,
        departures: Departures,
        checkpoints: CheckpointRounds,
        adoption: Adoption,
        leases: Leases,
        reports: Reports,
        stages: Stages,
        *,
        phase: Callable[[], str],
        adopting: Callable[[], bool],
        membership: Callable[[], Membership],
    ) -> None:
        """``phase``: the job's phase as STATS_REPLY says it; ``adopting``: the coordinator
        rebuilds the job after a restart (no membership to give yet); ``membership``: the
        whole current document."""
        self.roster = roster
        self.outbox = outbox
        self.homes = homes
        self.barriers = barriers
        self.progress = progress
        self.departures = departures
        self.checkpoints = checkpoints
        self.adoption = adoption
        self.leases = leases
        self.reports = reports
        self.stages = stages
        self._phase = phase
        self._adopting = adopting
        self._membership = membership

    def handle(self, member: Member, msg: Message) -> None:
        """``msg`` from ``member`` (heard already); ProtocolError for one it may not send."""
        kind, send = msg.type, self.outbox.send
        if kind is MsgType.BARRIER:
            self.barriers.reach(msg.sender, control.body_of(msg, control.Barrier).generation)
            self.progress.check_barrier()
        elif kind is MsgType.CLOCK:
            clock = control.body_of(msg, control.Clock).clock
            asked_again = clock <= member.clock  # its CLOCK_MIN may have been lost
            member.clock = max(member.clock, clock)
            self.progress.publish_min_clock()
            if asked_again:
                self.progress.tell_min_clock(member)
        elif kind is MsgType.LEAVE:
            self.departures.leaving(member, control.body_of(msg, control.Leave).reason)
        elif kind is MsgType.LEFT:
            self.departures.left(member)
        elif kind is MsgType.MIGRATE_READY:
            self.homes.on_migrate_ready(control.body_of(msg, control.MigrateReady).id)
        elif kind is MsgType.RECOVERED:
            recovered = control.body_of(msg, control.Recovered)
            self.homes.on_recovered(recovered.id, recovered.keys)
        elif kind is MsgType.TOOK_BACK:  # a home took back keys a lost node held: data loss
            self.departures.took_back(member, control.body_of(msg, control.TookBack))
        elif kind is MsgType.HANDOFF_LOST:  # keys given back died with their home: data loss
            self.departures.handoff_lost(member, control.body_of(msg, control.HandoffLost))
        elif kind is MsgType.REPLICA_SYNCED:
            self.homes.on_replica_synced(member.id, control.body_of(msg, control.ReplicaSynced))
        elif kind is MsgType.CHECKPOINT_DONE:
            self.checkpoints.on_done(member.id, control.body_of(msg, control.CheckpointDone))
        elif kind is MsgType.REJOIN:
            rejoin = control.body_of(msg, control.Rejoin)
            self.roster.reserve_ids_to(rejoin.highest_node_id)  # dead nodes' ids stay unused
            self.adoption.rejoined(member.id, rejoin)
        elif kind is MsgType.LEASE:
            lease = control.body_of(msg, control.Lease)
            shard = self.leases.next(lease.epoch, lease.num_shards, member.id, lease.finished)
            send(msg.sender, MsgType.LEASE_REPLY, control.LeaseReply(epoch=lease.epoch, shard=shard))
        elif kind is MsgType.REPORT:
            self.reports.add(member.rank, control.body_of(msg, control.Report).metrics)
        elif kind is MsgType.STAGE:
            self._workers_program(member, msg)
            self.stages.reach(msg.sender, control.body_of(msg, control.Stage).done)
            self.progress.settle_stages()
        elif kind is MsgType.HOLDING:  # a program will localize keys of these shards
            self._workers_program(member, msg)
            holding = control.body_of(msg, control.Holding)
            if max(holding.shards) >= self.homes.num_shards:
                raise ProtocolError(f"HOLDING names shard {max(holding.shards)} of {self.homes.num_shards}")
            self.homes.holders.note(member.id, holding.shards)
            send(msg.sender, MsgType.HOLDING_NOTED, holding)
        elif kind is MsgType.STATS:
            send(msg.sender, MsgType.STATS_REPLY, control.Stats(counters={"phase": self._phase()}))
        elif kind is MsgType.MEMBERSHIP_QUERY:  # it missed a version: the whole document
            if msg.sender != member.id and member.client is None:
                raise ProtocolError(f"MEMBERSHIP_QUERY from {msg.sender}, whose program is not registered")
            if self.homes.shard_map is not None and not self._adopting():
                self.outbox.send_whole(msg.sender, self._membership())
        elif kind is MsgType.PING:  # with its id: a node back from a gap knows it is a member
            send(msg.sender, MsgType.PONG, control.Empty(), msg.req_id)
        else:
            raise ProtocolError(f"coordinator does not handle {kind.name}")

    @staticmethod
    def _workers_program(member: Member, msg: Message) -> None:
        if msg.sender != client_of(member.id) or member.role != "worker":
            raise ProtocolError(f"{msg.type.name} from {msg.sender}, which is no worker's program")
