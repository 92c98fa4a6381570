"""After a coordinator restart: rebuilding the running job from its nodes.

A heartbeat from a node the coordinator never registered means the coordinator restarted
while the job ran on.  The nodes keep their ids; the coordinator collects them, asks each
for its shard map and the members it knew (ADOPT, answered by REJOIN), and once no new node
has appeared for a moment carries on with the newest map.  Registrations that arrive
meanwhile wait.

A member the others knew and the coordinator never heard from gets longer to speak
(``missing_wait``; none once a registration waits under its pod name: it was recreated),
then is declared lost like any silent node: its shards go to their
backups and the keys it held are taken back as a loss (the others would otherwise forget it as
if it had left, and its updates with it), and if it speaks later it is told to exit.  A
worker rank that no node holds waits for its replacement: the job never ends without it.
"""

from __future__ import annotations

from typing import Any

from dynaps.coordinator.roster import Member, MemberState
from dynaps.wire import control
from dynaps.wire.control import Role

# a loss a node reported before the restart: (the node, its report)
Loss = tuple[int, control.TookBack | control.HandoffLost]

ADOPT_QUIET = 1.0  # seconds without a new node before the job goes on
# nodes asked for their membership's members and lost nodes (the first heard): the newest of
# their lists is taken, so one node that lagged does not matter, and the cost stays O(N)
MEMBER_LISTS = 3


def adopted_member(node: int, heartbeat: control.Heartbeat, now: float) -> Member:
    """The member a node's heartbeat describes, with the id it already has."""
    member = Member(node, heartbeat.role, heartbeat.address, heartbeat.name, 0, heartbeat.rank, last_seen=now)
    member.client = heartbeat.client
    member.exit_code = heartbeat.exit_code
    member.state = MemberState.DRAINING if heartbeat.draining else MemberState.READY
    return member


def unheard_member(node: int, rank: int | None, now: float) -> Member:
    """A member the others knew (a worker if it has a ``rank``) and that was not heard from,
    as far as it is known: to be declared lost."""
    role: Role = "server" if rank is None else "worker"
    return Member(node, role, "", "", 0, rank, state=MemberState.READY, last_seen=now)


class Adoption:
    def __init__(self, quiet: float = ADOPT_QUIET, missing_wait: float = 0.0) -> None:
        """``missing_wait``: seconds after the quiet moment that a member the others knew
        may take to be heard (at least five quiet periods are waited for a REJOIN)."""
        self.quiet = quiet
        self.missing_wait = missing_wait
        self.maps: dict[int, dict[str, Any] | None] = {}  # node -> its shard map, once it rejoined
        # the members of the newest membership a rejoined node knew (id -> a worker's rank), and
        # its version: an older one may name a node that left since, which would never answer
        self.known: dict[int, int | None] = {}
        self.known_names: dict[int, str] = {}  # their pod names, where they have one
        self.known_version = -1
        self.highest_version = 0  # of any node's membership: the new coordinator's go on from it
        # nodes a membership declared lost: never adopted again (one paused through its loss
        # may speak up now), and remembered, so their later messages are refused
        self.lost: set[int] = set()
        # the losses each node reported before (node, report): said again to this coordinator,
        # which may never have heard them (the operator knows one it saw before)
        self.losses: list[Loss] = []
        # the synced replicas each node said it holds (node, report): of its epoch only
        self.replicas: list[tuple[int, control.ReplicaSynced]] = []
        self.until = 0.0  # no new node came before this time: the job may go on
        self.deferred: list[control.Register] = []  # registrations for after the adoption

    def heard(self, node: int, now: float) -> bool:
        """A node to adopt (its REJOIN is awaited): whether to ask it for its member list."""
        self.maps[node] = None
        self.until = now + self.quiet
        return len(self.maps) <= MEMBER_LISTS

    def rejoined(self, node: int, rejoin: control.Rejoin) -> None:
        if node in self.maps:
            self.maps[node] = rejoin.shard_map
            self.lost.update(rejoin.lost)
            reports: list[control.TookBack | control.HandoffLost] = [*rejoin.took_back, *rejoin.handoff_lost]
            self.losses += [(node, report) for report in reports]
            self.replicas += [(node, report) for report in rejoin.replicas]
            self.highest_version = max(self.highest_version, rejoin.members_version)
            if not rejoin.members:  # not asked for them
                return
            if rejoin.members_version > self.known_version:
                self.known, self.known_version = dict(rejoin.members), rejoin.members_version
                self.known_names = dict(rejoin.member_names)
            elif rejoin.members_version == self.known_version:
                self.known.update(rejoin.members)
                self.known_names.update(rejoin.member_names)

    def missing(self) -> dict[int, int | None]:
        """Members the rejoined nodes knew that were not heard from: id -> a worker's rank."""
        return {
            node: rank for node, rank in self.known.items() if node not in self.maps and node not in self.lost
        }

    def replaced(self) -> set[int]:
        """Missing members whose name a held registration gives: their pod was recreated, so
        the member is gone (declared lost like the others) and is not waited for."""
        names = {reg.name for reg in self.deferred if reg.name}
        return {node for node in self.missing() if self.known_names.get(node, "") in names}

    def due(self, now: float) -> bool:
        """Whether to finish: quiet, every node rejoined and every member they knew heard
        from (or replaced: :meth:`replaced`), or quiet for much longer."""
        rejoined = all(doc is not None for doc in self.maps.values())
        missing = bool(self.missing().keys() - self.replaced())
        late = max(self.quiet * 5, self.missing_wait) if missing else self.quiet * 5
        return (now > self.until and rejoined and not missing) or now > self.until + late

    def newest_map(self) -> dict[str, Any] | None:
        """The shard map of the highest epoch the nodes reported (None: none yet)."""
        maps = [doc for node, doc in self.maps.items() if doc is not None and node not in self.lost]
        if not maps:
            return None
        return max(maps, key=lambda doc: int(doc.get("epoch", 0)))

    def synced_replicas(self) -> list[tuple[int, control.ReplicaSynced]]:
        """The replicas the rejoined nodes said they hold synced, each at its node's epoch, as
        (backup, report); none from a node declared lost."""
        return [(node, report) for node, report in self.replicas if node not in self.lost]

    def defer(self, reg: control.Register) -> None:
        """Hold a registration back (once: a node that registers again uses the same nonce)."""
        if all(held.nonce != reg.nonce for held in self.deferred):
            self.deferred.append(reg)

    def finish(self) -> list[control.Register]:
        """The adoption ended: the registrations that waited for it."""
        self.maps.clear()
        self.known, self.known_version, self.highest_version = {}, -1, 0
        self.known_names = {}
        self.lost = set()
        self.losses = []
        self.replicas = []
        deferred, self.deferred = self.deferred, []
        return deferred
