"""A restarted coordinator taking over a running job: what it does to the job's parts.

:mod:`dynaps.coordinator.adoption` keeps the bookkeeping (who was heard, the maps and
member lists the nodes sent); this module acts on it: it adopts each node heard, then
installs the newest shard map with the replicas its backups said they hold synced at its
epoch, declares lost the members no one heard from, and records again the losses the nodes
reported before the restart.  The coordinator owns the phase
(ADOPTING, then RUNNING) and calls :meth:`Rebuilding.take_over`, then, once running,
:meth:`Rebuilding.carry_on`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dynaps.coordinator.adoption import Adoption, Loss, adopted_member, unheard_member
from dynaps.coordinator.departures import Departures
from dynaps.coordinator.outbox import Outbox
from dynaps.coordinator.roster import Roster
from dynaps.coordinator.shard_homes import ShardHomes
from dynaps.errors import ProtocolError
from dynaps.wire import control
from dynaps.wire.protocol import MsgType

log = logging.getLogger(__name__)


class Rebuilding:
    """Rebuilds the running job from its nodes after a coordinator restart."""

    def __init__(
        self,
        adoption: Adoption,
        roster: Roster,
        outbox: Outbox,
        homes: ShardHomes,
        departures: Departures,
        clock: Callable[[], float],
    ) -> None:
        self.adoption = adoption
        self.roster = roster
        self.outbox = outbox
        self.homes = homes
        self.departures = departures
        self.clock = clock
        self._unheard: dict[int, int | None] = {}
        self._losses: list[Loss] = []

    def heard(self, node: int, heartbeat: control.Heartbeat) -> None:
        """A heartbeat of a node this coordinator never registered: adopt it, with its id."""
        if node in self.adoption.lost:  # declared lost before the restart, and paused since
            self.outbox.fence(node, heartbeat.address)
            return
        member = adopted_member(node, heartbeat, self.clock())
        self.roster.adopt(member)
        self.outbox.connect(member)
        asked = self.adoption.heard(node, self.clock())
        self.outbox.send(node, MsgType.ADOPT, control.Adopt(members=asked))

    def take_over(self) -> bool:
        """Install the newest shard map a node sent (False: none has yet); the members no one
        heard from and the losses reported wait for :meth:`carry_on`."""
        newest = self.adoption.newest_map()
        if newest is None:
            return False
        self._unheard, self._losses = self.adoption.missing(), self.adoption.losses
        # versions go on from the nodes', so a later restart can tell their newest membership
        self.outbox.version = max(self.outbox.version, self.adoption.highest_version)
        for zombie in self.roster.recall_lost(self.adoption.lost):
            log.warning("node %d was declared lost before the restart: told to exit", zombie.id)
            self.outbox.forget(zombie)
            self.outbox.fence(zombie.id, zombie.address)
        self.homes.adopt(newest, self.adoption.synced_replicas())  # those of its epoch count
        self.roster.want_present()
        self.homes.reconfirm()  # a new epoch: the homes report their backups again
        return True

    def carry_on(self, announce: Callable[[], None]) -> list[control.Register]:
        """The job runs again: the unheard members are lost (before any membership, which
        ``announce`` sends, leaves them out as if they had left), the losses reported before
        the restart are recorded again.  Returns the registrations that waited."""
        unheard, losses = self._unheard, self._losses
        self._unheard, self._losses = {}, []
        deferred = self.adoption.finish()
        self._lose_unheard(unheard)
        announce()
        self._hear_losses_again(losses)
        return deferred

    def _lose_unheard(self, unheard: dict[int, int | None]) -> None:
        """Members the others knew (id -> a worker's rank) and that stayed silent through the
        rebuilding: lost, as silence makes a node, so its shards go to their backups, the keys
        it held are taken back as a loss and a worker's rank waits for its replacement; it is
        told to exit if it speaks later."""
        for node, rank in sorted(unheard.items()):
            member = unheard_member(node, rank, self.clock())
            log.error("%s %d, a member before the restart, was not heard from since", member.role, node)
            self.roster.adopt(member)
            self.departures.lost(member)

    def _hear_losses_again(self, losses: list[Loss]) -> None:
        """The losses the nodes reported before the restart, recorded again: the coordinator
        before may have died before it recorded (or the operator read) them."""
        for node, report in losses:
            reporter = self.roster.get(node)
            if reporter is None:
                continue
            try:
                if isinstance(report, control.TookBack):
                    self.departures.took_back(reporter, report)
                else:
                    self.departures.handoff_lost(reporter, report)
            except ProtocolError as exc:
                log.warning(
                    "node %d reported a loss before the restart that cannot be recorded: %s", node, exc
                )
