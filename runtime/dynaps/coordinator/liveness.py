"""Failure detection: when the coordinator declares a node lost.

A crash closes the node's connection: it is lost once no heartbeat came for a short grace
after that.  Silence alone (a hung node, a dead machine) takes longer, so that a node
starved of CPU for a moment is not declared lost.  A node still building its store may
stay silent for longer still.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dynaps.coordinator.roster import Member, MemberState

JOIN_TIMEOUT = 120.0  # seconds a joining node may take to build its store


@dataclass(frozen=True)
class Liveness:
    grace_after_disconnect: float  # seconds without a message after the connection dropped
    lost_after: float  # seconds of silence alone
    join_timeout: float = JOIN_TIMEOUT

    @classmethod
    def for_heartbeat(cls, heartbeat_seconds: float) -> Liveness:
        return cls(max(0.2, 2 * heartbeat_seconds), max(3.0, 10 * heartbeat_seconds))

    def overdue(self, members: Iterable[Member], now: float) -> list[Member]:
        """The members to declare lost at ``now``."""
        lost = []
        for member in members:
            limit = self.join_timeout if member.state == MemberState.JOINING else self.lost_after
            silent = now - member.last_seen
            suspect = member.suspect_since is not None and member.last_seen < member.suspect_since
            if silent > limit or (suspect and silent > self.grace_after_disconnect):
                lost.append(member)
        return lost
