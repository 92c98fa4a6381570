"""Failure detection: when the coordinator declares a node lost.

A crash closes the node's connection: it is lost once no heartbeat came for a short grace
after that.  Silence alone (a hung node, a stopped process, a dead machine) takes longer,
so that a node starved of CPU for a moment is not declared lost.  When declaring a silent
node lost would throw data away (what it holds has no replica), the job waits longer
still for it (``faultTolerance.silentNodeTimeoutSeconds``): a node that comes back has
lost nothing, while one declared lost takes its keys' latest values with it.  A node still
building its store may stay silent for longer too.

A node declared lost that speaks again is told so and exits (it is *fenced*): see
:meth:`dynaps.coordinator.core.Coordinator._dispatch` and
:meth:`dynaps.node.control_plane.ControlPlane.fence`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dynaps.contract import Allocation, FaultTolerance, silence_limit_seconds
from dynaps.coordinator.roster import Member, MemberState

log = logging.getLogger(__name__)

JOIN_TIMEOUT = 120.0  # seconds a joining node may take to build its store


@dataclass
class Waiting:
    """A silent node past the short timeout that the job waits for."""

    member: Member
    since: float  # when it last spoke, as it entered the wait


def never(member: Member) -> bool:
    return False


class Liveness:
    """Which members are lost at a given time; remembers the silent ones it waits for.

    ``loses_data(member)``: declaring it lost would throw away updates it acknowledged
    (it holds keys without a replica); such a member is waited for longer while it stays
    connected.
    """

    def __init__(
        self,
        grace_after_disconnect: float,
        lost_after: float,
        silent_node_timeout: float,
        loses_data: Callable[[Member], bool] = never,
        join_timeout: float = JOIN_TIMEOUT,
    ) -> None:
        self.loses_data = loses_data
        # seconds without a message after the connection dropped
        self.grace_after_disconnect = grace_after_disconnect
        self.lost_after = lost_after  # seconds of silence alone
        # seconds of silence alone for a node whose loss would lose data (never below lost_after)
        self.silent_node_timeout = max(lost_after, silent_node_timeout)
        self.join_timeout = join_timeout
        self.waiting: dict[int, Waiting] = {}  # by node id

    @classmethod
    def for_heartbeat(
        cls,
        heartbeat_seconds: float,
        silent_node_timeout: float = 60.0,
        loses_data: Callable[[Member], bool] = never,
    ) -> Liveness:
        return cls(
            max(0.2, 2 * heartbeat_seconds),
            silence_limit_seconds(heartbeat_seconds),
            silent_node_timeout,
            loses_data,
        )

    @classmethod
    def for_job(
        cls, faults: FaultTolerance, allocation: Allocation, is_home: Callable[[int], bool]
    ) -> Liveness:
        """The job's timeouts; ``is_home(node)``: the server homes shards."""

        def loses_data(member: Member) -> bool:
            if faults.replication > 0:
                return False  # every shard has a backup that holds its replica
            if member.role == "server":
                return is_home(member.id)
            return allocation == Allocation.DYNAMIC  # a worker's localized keys; static: none

        heartbeat = faults.heartbeat_interval_ms / 1000
        return cls.for_heartbeat(heartbeat, faults.silent_node_timeout_seconds, loses_data)

    def overdue(self, members: Iterable[Member], now: float, caught_up: bool = True) -> list[Member]:
        """The members to declare lost at ``now``.

        ``caught_up``: the coordinator read its whole inbox, and did not stall, before this look.
        Else silence may be its own (heartbeats wait unread): only dropped connections are
        judged then (at 1,000 nodes a coordinator busy with a scale-out declared every new
        server lost after 4.4 s of "silence", bench/README.md)."""
        if not caught_up:
            return self._dropped(members, now)
        lost = []
        waiting: dict[int, Waiting] = {}
        present = set()
        # Below both limits and still connected, a member can be neither lost nor waited for:
        # most are, on most ticks, and this test is all they cost (20 ticks a second over
        # 1,000 members: bench/README.md).
        quiet = now - min(self.lost_after, self.join_timeout)
        for member in members:
            present.add(member.id)
            if member.last_seen >= quiet and member.suspect_since is None:
                continue
            silent = now - member.last_seen
            suspect = member.suspect_since is not None
            if member.state == MemberState.JOINING:
                limit = self.join_timeout
            elif silent > self.lost_after and not suspect and self.loses_data(member):
                limit = self.silent_node_timeout
                before = self.waiting.get(member.id)
                waiting[member.id] = before if before is not None else self._start_waiting(member, silent)
            else:
                limit = self.lost_after
            if silent > limit or self._past_grace(member, now):
                lost.append(member)
                waiting.pop(member.id, None)
        lost.sort(key=lambda m: m.id)  # declared in id order, whatever order they came in
        lost_ids = {m.id for m in lost}
        for node, gone in self.waiting.items():
            if node in present and node not in waiting and node not in lost_ids:
                log.warning(
                    "%s %d (%s) speaks again after %.1f s of silence: nothing was lost",
                    gone.member.role,
                    node,
                    gone.member.name,
                    gone.member.last_seen - gone.since,
                )
        self.waiting = waiting
        return lost

    def _past_grace(self, member: Member, now: float) -> bool:
        """Its connection dropped more than the grace ago.  The grace runs from its last message
        before the drop: one read after the drop may have been sent before it."""
        dropped_at = member.suspect_since
        if dropped_at is None:
            return False
        return now - min(member.last_seen, dropped_at) > self.grace_after_disconnect

    def _dropped(self, members: Iterable[Member], now: float) -> list[Member]:
        """The members lost by a dropped connection alone; those waited for stay waited for."""
        lost = sorted((m for m in members if self._past_grace(m, now)), key=lambda m: m.id)
        for member in lost:
            self.waiting.pop(member.id, None)
        return lost

    def _start_waiting(self, member: Member, silent: float) -> Waiting:
        log.error(
            "%s %d (%s) has been silent for %.1f s but is still connected; declaring it lost would "
            "lose what it holds (no replica), so the job waits for it up to %.0f s "
            "(faultTolerance.silentNodeTimeoutSeconds)",
            member.role,
            member.id,
            member.name,
            silent,
            self.silent_node_timeout,
        )
        return Waiting(member, member.last_seen)

    def report(self, now: float) -> list[dict[str, Any]]:
        """The nodes the job waits for, as /status shows them (``waitingFor``)."""
        return [
            {
                "node": node,
                "name": w.member.name,
                "role": w.member.role,
                "silentSeconds": round(now - w.member.last_seen, 1),
                "lostInSeconds": round(max(0.0, w.member.last_seen + self.silent_node_timeout - now), 1),
                "message": (
                    f"waiting for {w.member.role} {node} ({w.member.name}): silent for "
                    f"{now - w.member.last_seen:.0f} s and holding keys without a replica; "
                    f"declared lost after {self.silent_node_timeout:.0f} s of silence"
                ),
            }
            for node, w in sorted(self.waiting.items())
        ]
