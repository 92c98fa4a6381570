"""Who is in the job: the coordinator's record of nodes, their roles, ranks and states.

Node ids are never reused, so a message from a lost node can never be mistaken for one
from its replacement.  Worker ranks are: a replacement (same name, e.g. the same pod)
gets its predecessor's rank, and otherwise the lowest free one.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dynaps.wire.control import NodeInfo, Role


class MemberState(enum.StrEnum):
    """Where a member is in its life (its value shows in /status)."""

    JOINING = "joining"  # registered, building its stores
    READY = "ready"  # serving
    DRAINING = "draining"  # leaving gracefully


@dataclass
class Member:
    id: int
    role: Role
    address: str
    name: str
    pid: int
    rank: int | None = None
    client: str | None = None  # the address of a worker's training process, once attached
    state: MemberState = MemberState.JOINING
    exit_code: int | None = None  # a worker's program exited with this code
    clock: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    suspect_since: float | None = None  # its connection dropped at this time
    nonce: str = ""  # of its REGISTER: a copy sent again is answered again, not admitted twice
    client_nonce: str = ""  # of its training program's REGISTER, likewise

    def heard(self, now: float) -> None:
        """A message came from it.  This does not end a dropped connection's suspicion: a
        message read after the drop may have been sent before it (a dead node's last heartbeats
        wait in the inbox behind others; at 1,000 nodes they kept crashed servers "alive" until
        the 60 s silence limit)."""
        self.last_seen = now

    def disconnected(self, now: float) -> None:
        """Its connection dropped: lost unless zmq connects to it again soon."""
        if self.suspect_since is None:
            self.suspect_since = now

    def reconnected(self) -> None:
        """zmq connected to it again after a drop: it is there."""
        self.suspect_since = None

    def info(self) -> NodeInfo:
        return NodeInfo(
            id=self.id,
            role=self.role,
            address=self.address,
            client=self.client,
            rank=self.rank,
            name=self.name,
            ready=self.state != MemberState.JOINING,
        )


class Roster:
    def __init__(self, servers: int, workers: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.desired: dict[Role, int] = {"server": servers, "worker": workers}
        self.members: dict[int, Member] = {}
        self.lost: list[int] = []  # ids of nodes that died (nodes recover their keys)
        self.departed: dict[str, Member] = {}  # by name: whom a replacement replaces
        self.former: set[int] = set()  # ids of every node that left or was lost
        # rank -> when: workers lost before their program finished, until a replacement takes
        # the rank (or the job shrinks below it); the job is not finished while one is missing
        self.missing_ranks: dict[int, float] = {}
        self._next_id = 1
        self._by_nonce: dict[str, int] = {}  # a member's REGISTER nonce -> its id

    def active(self, role: Role | None = None) -> list[Member]:
        """The members (of ``role``), by id."""
        return sorted(self._of(role), key=lambda m: m.id)

    def _of(self, role: Role | None) -> list[Member]:
        """The members (of ``role``) in no order: what a count or a test of each needs (at
        1,000 nodes, sorting for each REGISTER and READY was most of registration's CPU)."""
        return [m for m in self.members.values() if role is None or m.role == role]

    def get(self, node: int) -> Member | None:
        return self.members.get(node)

    def named(self, name: str) -> Member | None:
        """The active member called ``name`` (a pod name is unique while the pod exists)."""
        if not name:
            return None
        return next((m for m in self.members.values() if m.name == name), None)

    def admit(
        self, role: Role, address: str, name: str, pid: int, rank: int | None, nonce: str = ""
    ) -> Member | str:
        """A new member, or the reason it is refused."""
        present = self._of(role)
        if len(present) >= self.desired[role]:
            return f"the job wants {self.desired[role]} {role}s and has them"
        member = Member(self._next_id, role, address, name, pid, last_seen=self.clock(), nonce=nonce)
        self._next_id += 1
        if nonce:
            self._by_nonce[nonce] = member.id
        if role == "worker":
            member.rank = self._rank(present, name, rank)
            self.missing_ranks.pop(member.rank, None)
        self.members[member.id] = member
        return member

    def _rank(self, present: list[Member], name: str, hint: int | None) -> int:
        taken = {m.rank for m in present}
        predecessor = self.departed.get(name) if name else None
        for choice in (predecessor.rank if predecessor else None, hint):
            if choice is not None and choice not in taken:
                return choice
        rank = 0
        while rank in taken:
            rank += 1
        return rank

    def reserve_ids_to(self, highest: int) -> None:
        """Ids up to ``highest`` were given out before (a coordinator restart forgot them)."""
        self._next_id = max(self._next_id, highest + 1)

    def adopt(self, member: Member) -> None:
        """A member known from before a coordinator restart, with its id."""
        self.members[member.id] = member
        self._next_id = max(self._next_id, member.id + 1)
        if member.rank is not None:
            self.missing_ranks.pop(member.rank, None)

    def recall_lost(self, lost: set[int]) -> list[Member]:
        """After a coordinator restart: the nodes declared lost before it, remembered as lost
        (their messages are dropped, their heartbeats fenced); those adopted meanwhile (paused
        through their loss, they spoke up) are removed, and returned."""
        for node in sorted(lost - set(self.lost)):
            self.lost.append(node)
        self.former.update(lost)
        zombies = [m for m in self.members.values() if m.id in lost]
        for member in zombies:
            self.members.pop(member.id)
            self._by_nonce.pop(member.nonce, None)
        return zombies

    def registered(self, nonce: str) -> Member | None:
        """The member whose REGISTER had ``nonce`` (that REGISTER, sent again)."""
        node = self._by_nonce.get(nonce)
        return None if node is None else self.members.get(node)

    def remove(self, member: Member, lost: bool) -> None:
        self.members.pop(member.id, None)
        self._by_nonce.pop(member.nonce, None)
        self.former.add(member.id)
        if member.name:
            self.departed[member.name] = member
        if lost:
            self.lost.append(member.id)
            unfinished = member.exit_code is None and member.state != MemberState.DRAINING
            if member.role == "worker" and member.rank is not None and unfinished:
                self.missing_ranks[member.rank] = self.clock()

    def want(self, role: Role, count: int) -> list[Member]:
        """Set the desired size of ``role``: the members beyond it, to drain (newest first)."""
        self.desired[role] = count
        if role == "worker":
            self.missing_ranks = {r: t for r, t in self.missing_ranks.items() if r < count}
        present = [m for m in self.active(role) if m.state != MemberState.DRAINING]
        surplus = len(present) - count
        if surplus <= 0:
            return []
        victims = sorted(present, key=lambda m: m.rank if m.rank is not None else m.id, reverse=True)
        return victims[:surplus]

    def want_present(self) -> None:
        """After a coordinator restart: want at least the nodes that came back."""
        for role, count in self.desired.items():
            self.desired[role] = max(count, len(self._of(role)))

    def find(self, target: str) -> Member | None:
        """The active member named ``target``, or whose id it is."""
        return next((m for m in self.active() if target in (m.name, str(m.id))), None)

    def complete(self) -> bool:
        """Every node the job expects has registered."""
        return all(len(self._of(role)) == self.desired[role] for role in ("server", "worker"))

    def started(self) -> bool:
        """Every node built its store and every worker's program attached (or already exited)."""
        if any(m.state == MemberState.JOINING for m in self.members.values()):
            return False
        # a program that exits without connecting does not hold the others up
        return not any(m.client is None and m.exit_code is None for m in self._of("worker"))

    def finished(self) -> bool:
        """Every worker that stays has seen its program exit, and none was lost unfinished."""
        return self.finished_but_missing() and not self.missing_ranks

    def finished_but_missing(self) -> bool:
        """Every worker that stays has seen its program exit (some ranks may be missing)."""
        workers = [m for m in self._of("worker") if m.state != MemberState.DRAINING]
        return bool(workers) and all(m.exit_code is not None for m in workers)

    def ready_servers(self) -> list[int]:
        """Ids of the servers that hold a store and are not leaving."""
        return [m.id for m in self.active("server") if m.state == MemberState.READY]

    def workers_running(self) -> list[Member]:
        """Workers whose training process is attached and has not finished."""
        return [m for m in self.active("worker") if m.client is not None and m.exit_code is None]

    def infos(self) -> list[NodeInfo]:
        return [m.info() for m in self.active()]
