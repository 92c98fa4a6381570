"""Members that leave or are lost, as the coordinator handles them.

A leaving server's shards move away first (:mod:`dynaps.coordinator.shard_homes` plans
it); a member that left or was lost gives its data leases back and stops backing shards
up, so the survivors re-replicate; a lost server's shards are rebuilt on new homes, and
the keys a lost node held (a worker's localized keys) go back to their homes, whose reports
(TOOK_BACK) are counted as data loss, as are the keys a draining node was giving back to a
home that died before they arrived (HANDOFF_LOST).  The nodes' side of the same events is
:mod:`dynaps.node.departures`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dynaps.contract import DataLossCause, FaultTolerance
from dynaps.coordinator.data_loss import held_keys_cause
from dynaps.coordinator.leases import Leases
from dynaps.coordinator.outbox import Outbox
from dynaps.coordinator.roster import Member, MemberState, Roster
from dynaps.coordinator.shard_homes import ShardHomes
from dynaps.errors import ProtocolError
from dynaps.wire import control

log = logging.getLogger(__name__)


class Departures:
    """What the job does when a member leaves or is lost.

    ``announce`` sends the new membership, ``settle`` lets a barrier pass or the job end
    without the member, ``abandon_checkpoint`` ends a checkpoint round in progress (a lost
    node never writes its part).  ``faults``: the job's fault tolerance (what a lost node's
    keys lose).
    """

    def __init__(
        self,
        roster: Roster,
        outbox: Outbox,
        homes: ShardHomes,
        leases: Leases,
        announce: Callable[[], None],
        settle: Callable[[], None],
        abandon_checkpoint: Callable[[], None],
        faults: FaultTolerance,
    ) -> None:
        self.faults = faults
        self.roster = roster
        self.outbox = outbox
        self.homes = homes
        self.leases = leases
        self.announce = announce
        self.settle = settle
        self.abandon_checkpoint = abandon_checkpoint

    def leaving(self, member: Member, reason: str) -> None:
        """The node drains: a server's shards move away; a worker releases its keys."""
        if member.state == MemberState.DRAINING:
            return
        log.info("%s %d is leaving (%s)", member.role, member.id, reason or "drain")
        member.state = MemberState.DRAINING
        self.homes.refresh_backups()  # a leaving server backs nothing up
        self.announce()
        if member.role == "server":
            self.homes.rebalance()
        self.settle()

    def left(self, member: Member) -> None:
        if member.role == "server" and self.homes.is_home(member.id):
            # It left with shards that are its own in the committed map (a node must wait
            # for them to move away): its copies went with it, so it counts as lost: the
            # backups take over, or the loss is counted, rather than wait for a move from it.
            log.error("server %d left while it still homes shards: treated as lost", member.id)
            self.lost(member)
            return
        log.info("%s %d left", member.role, member.id)
        self.leases.release(member.id)
        self.roster.remove(member, lost=False)
        self.outbox.forget(member)
        # A server that joined and was told to drain before a shard reached it leaves at once
        # (it homes nothing yet): the migration towards it would wait for ever.
        self.homes.abort_involving(member.id)
        self.homes.refresh_backups()
        self.announce()
        if member.role == "server":
            self.homes.rebalance()  # what the aborted migrations were to do
        self.settle()

    def lost(self, member: Member) -> None:
        log.error("%s %d (%s) stopped answering: lost", member.role, member.id, member.name)
        self.roster.remove(member, lost=True)
        if member.rank in self.roster.missing_ranks:
            log.warning("worker rank %d was lost unfinished: the job waits for its replacement", member.rank)
        self.outbox.forget(member, lost=True)
        returned = self.leases.release(member.id)
        if returned:
            log.warning("%d data shards of node %d go back to the queue", returned, member.id)
        self.homes.abort_involving(member.id)
        self.abandon_checkpoint()
        if member.role == "server" and self.homes.is_home(member.id):
            self.rehome(member.id)
            return
        self.homes.refresh_backups()  # the survivors re-replicate what it backed up
        self.announce()
        if member.role == "server":
            self.homes.rebalance()
        self.settle()

    def took_back(self, home: Member, took: control.TookBack) -> None:
        """``home`` took back the keys lost node ``took.node`` held, with its own copy of
        their values: what the node did to them since is lost (see :func:`held_keys_cause`)."""
        if home.role != "server":
            raise ProtocolError(f"TOOK_BACK from {home.role} {home.id}, which homes nothing")
        if took.node not in self.roster.lost:
            raise ProtocolError(f"TOOK_BACK of keys of node {took.node}, which is not lost")
        if max(took.shards) >= self.homes.num_shards:
            raise ProtocolError(f"TOOK_BACK names shard {max(took.shards)} of {self.homes.num_shards}")
        cause = held_keys_cause(self.faults)
        if cause is None:  # written through: every acknowledged update is at its home
            log.info("node %d took back %d keys of lost node %d: nothing lost", home.id, took.keys, took.node)
            return
        role = next((m.role for m in self.roster.departed.values() if m.id == took.node), "node")
        epoch = took.epoch or self.homes.epoch  # the home's: the same when a new coordinator hears it again
        entry = self.homes.losses.took_back(
            cause, took.node, role, epoch, took.shards, took.keys, self.faults.flush_interval_ms
        )
        log.error("data loss: %s (taken back by node %d)", entry.describe(), home.id)
        self.homes.on_loss(entry)

    def handoff_lost(self, sender: Member, lost: control.HandoffLost) -> None:
        """``sender`` was giving keys back to their home, lost node ``lost.node``, which died
        before it confirmed their arrival: the shards' new home rebuilt them from its replica,
        the sender's last write-back, so what the sender changed since is lost.  Without
        replication the recovery's own entry counts them already (the keys nobody held went
        back to the checkpoint or their initial values); under write-through the replica has
        every acknowledged update."""
        if lost.node not in self.roster.lost:
            raise ProtocolError(f"HANDOFF_LOST of keys sent to node {lost.node}, which is not lost")
        if max(lost.shards) >= self.homes.num_shards:
            raise ProtocolError(f"HANDOFF_LOST names shard {max(lost.shards)} of {self.homes.num_shards}")
        cause = held_keys_cause(self.faults)
        if cause is not DataLossCause.WRITE_BACK:
            log.info(
                "%s %d was giving back %d keys to lost node %d: counted by its recovery, or nothing lost",
                sender.role,
                sender.id,
                lost.keys,
                lost.node,
            )
            return
        entry = self.homes.losses.handed_off(
            lost.node,
            lost.epoch or self.homes.epoch,
            lost.shards,
            lost.keys,
            self.faults.flush_interval_ms,
            sender=sender.id,
            sender_role=sender.role,
        )
        log.error("data loss: %s", entry.describe())
        self.homes.on_loss(entry)

    def rehome(self, lost: int) -> None:
        """New homes rebuild a lost server's shards (the new map, with new backups, is
        announced); with no server left they wait for one to join."""
        if self.homes.rehome(lost):
            self.settle()
