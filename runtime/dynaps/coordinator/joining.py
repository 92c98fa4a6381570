"""Members that join, as the coordinator handles them.

A node that registers is admitted (if its role has room) and welcomed with its id; a pod
that registers again under its name replaces its predecessor.  A server that joins a
running job gets backups to hold, the shards that waited for a home, then shards by
rebalancing.  A worker's training program attaches to its node and starts at the oldest
open barrier and the slowest worker's clock.  When these happen (the job's phase) is the
coordinator's: :mod:`dynaps.coordinator.core`.  Members that leave are
:mod:`dynaps.coordinator.departures`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dynaps.coordinator.barriers import Barriers, MinClock
from dynaps.coordinator.departures import Departures
from dynaps.coordinator.outbox import Outbox
from dynaps.coordinator.roster import Member, Roster
from dynaps.coordinator.shard_homes import ShardHomes
from dynaps.wire import control
from dynaps.wire.protocol import MsgType, client_of

log = logging.getLogger(__name__)


class Joining:
    """What the job does when a member joins.  ``announce`` sends the new membership."""

    def __init__(
        self,
        roster: Roster,
        outbox: Outbox,
        homes: ShardHomes,
        departures: Departures,
        barriers: Barriers,
        min_clock: MinClock,
        announce: Callable[[], None],
    ) -> None:
        self.roster = roster
        self.outbox = outbox
        self.homes = homes
        self.departures = departures
        self.barriers = barriers
        self.min_clock = min_clock
        self.announce = announce

    def admit(self, reg: control.Register, replacing: bool) -> Member | None:
        """A node's REGISTER: the member, welcomed, or None (refused).  ``replacing``: a
        registration under a member's name replaces that member (not while the job gathers
        its first nodes)."""
        assert reg.role != "client"  # a program attaches to its node (:meth:`attach`)
        predecessor = self.roster.named(reg.name)
        if predecessor is not None and replacing:
            # The same pod name again: its predecessor is gone (Kubernetes never runs two
            # pods of one name), so do not wait for its heartbeats to stop.
            log.warning("%s %d (%s) was replaced", predecessor.role, predecessor.id, reg.name)
            self.departures.lost(predecessor)
        admitted = self.roster.admit(reg.role, reg.address, reg.name, reg.pid, reg.rank, reg.nonce)
        if isinstance(admitted, str):
            self.outbox.refuse(reg, admitted)
            return None
        member = admitted
        self.outbox.connect(member)
        welcome = control.Welcome(node=member.id, nonce=reg.nonce, rank=member.rank)
        self.outbox.send(member.id, MsgType.WELCOME, welcome)
        log.info("registered %s %d (%s) at %s", reg.role, member.id, reg.name, reg.address)
        return member

    def welcome_again(self, reg: control.Register) -> int | None:
        """A REGISTER sent again (it, or its answer, was lost with a coordinator; a copy is
        known by its nonce): the endpoint welcomed again, or None if it is not such a copy."""
        if reg.role == "client":
            member = self.roster.get(reg.node or -1)
            if member is None or not reg.nonce or member.client_nonce != reg.nonce:
                return None
            endpoint, welcome = client_of(member.id), self._program_welcome(member, reg.nonce)
        else:
            registered = self.roster.registered(reg.nonce) if reg.nonce else None
            if registered is None:
                return None
            endpoint = registered.id
            welcome = control.Welcome(node=registered.id, nonce=reg.nonce, rank=registered.rank)
        self.outbox.send(endpoint, MsgType.WELCOME, welcome)
        return endpoint

    def attach(self, reg: control.Register) -> bool:
        """A training program's REGISTER: whether it attached to its worker (else refused)."""
        member = self.roster.get(reg.node or -1)
        if member is None or member.role != "worker":
            self.outbox.refuse(reg, f"node {reg.node} is not a worker of this job")
            return False
        member.client = reg.address
        member.client_nonce = reg.nonce
        self.outbox.connect_client(member)
        # a program that joins a running job starts at the slowest worker's clock (no wait
        # for it to run through clocks the others finished; see client/barriers.py)
        member.clock = max(member.clock, self.min_clock.value)
        self.outbox.send(client_of(member.id), MsgType.WELCOME, self._program_welcome(member, reg.nonce))
        return True

    def _program_welcome(self, member: Member, nonce: str) -> control.Welcome:
        """What a worker's program learns as it attaches: where the barriers and its clock are."""
        barrier, clock = self.barriers.generation, member.clock
        return control.Welcome(node=member.id, nonce=nonce, rank=member.rank, barrier=barrier, clock=clock)

    def joined(self, member: Member) -> None:
        """A node that joined the running job is ready: a server takes part in the shards."""
        log.info("%s %d joined the running job", member.role, member.id)
        if member.role == "server":
            self.homes.refresh_backups()  # shards without a backup (a single server) get one
        self.announce()
        if member.role == "server":
            for lost in self.homes.take_orphaned():
                self.departures.rehome(lost)
            self.homes.rebalance()
