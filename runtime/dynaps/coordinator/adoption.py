"""After a coordinator restart: rebuilding the running job from its nodes.

A heartbeat from a node the coordinator never registered means the coordinator restarted
while the job ran on.  The nodes keep their ids; the coordinator collects them, asks each
for its shard map (ADOPT, answered by REJOIN), and once no new node has appeared for a
moment carries on with the newest map.  Registrations that arrive meanwhile wait.
"""

from __future__ import annotations

from typing import Any

from dynaps.coordinator.roster import Member, MemberState
from dynaps.wire import control

ADOPT_QUIET = 1.0  # seconds without a new node before the job goes on


def adopted_member(node: int, heartbeat: control.Heartbeat, now: float) -> Member:
    """The member a node's heartbeat describes, with the id it already has."""
    member = Member(node, heartbeat.role, heartbeat.address, heartbeat.name, 0, heartbeat.rank, last_seen=now)
    member.client = heartbeat.client
    member.exit_code = heartbeat.exit_code
    member.state = MemberState.DRAINING if heartbeat.draining else MemberState.READY
    return member


class Adoption:
    def __init__(self, quiet: float = ADOPT_QUIET) -> None:
        self.quiet = quiet
        self.maps: dict[int, dict[str, Any] | None] = {}  # node -> its shard map, once it rejoined
        self.until = 0.0  # no new node came before this time: the job may go on
        self.deferred: list[control.Register] = []  # registrations for after the adoption

    def heard(self, node: int, now: float) -> None:
        """A node to adopt (its REJOIN is awaited)."""
        self.maps[node] = None
        self.until = now + self.quiet

    def rejoined(self, node: int, shard_map: dict[str, Any]) -> None:
        if node in self.maps:
            self.maps[node] = shard_map

    def due(self, now: float) -> bool:
        """Whether to finish: quiet and every node rejoined, or quiet for much longer."""
        rejoined = all(doc is not None for doc in self.maps.values())
        return (now > self.until and rejoined) or now > self.until + self.quiet * 5

    def newest_map(self) -> dict[str, Any] | None:
        """The shard map of the highest epoch the nodes reported (None: none yet)."""
        maps = [doc for doc in self.maps.values() if doc is not None]
        if not maps:
            return None
        return max(maps, key=lambda doc: int(doc.get("epoch", 0)))

    def defer(self, reg: control.Register) -> None:
        """Hold a registration back (once: a node that registers again uses the same nonce)."""
        if all(held.nonce != reg.nonce for held in self.deferred):
            self.deferred.append(reg)

    def finish(self) -> list[control.Register]:
        """The adoption ended: the registrations that waited for it."""
        self.maps.clear()
        deferred, self.deferred = self.deferred, []
        return deferred
