"""Planning and tracking shard migrations: the coordinator's side of live rebalancing.

The nodes' side, moving the keys of a shard from its old home to its new one while
requests keep flowing, is :mod:`dynaps.node.migration`; this module only decides which
shards move where and when, and counts what is in flight.

The plan is balanced with minimal movement: every server that stays ends with
``num_shards // n`` or one more shards, servers that leave end with none, and a shard
moves only if its home is over quota (or leaving).  Moves are grouped by (source,
target) into migrations of at most ``shards_per_migration`` shards; at most
``max_concurrent`` migrations run at a time; those ready in one turn of the coordinator are
committed together, in one new epoch (:meth:`ShardHomes.commit_ready`).
A *hand-over* (a draining server leaving the backup chains of shards it does not home)
is tracked as a migration from the home to itself: the same freeze, marker and commit.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


def plan_moves(
    homes: npt.NDArray[np.int16], staying: list[int], leaving: list[int]
) -> list[tuple[int, int, int]]:
    """(shard, source, target) moves that balance ``homes`` over the ``staying`` servers."""
    if not staying:
        return []
    num_shards = len(homes)
    # with numpy, not shard by shard: a million shards over a thousand servers
    by_home = np.argsort(homes, kind="stable")  # each server's shards together, in order
    sorted_homes = homes[by_home]
    ids = np.asarray(staying, dtype=homes.dtype)  # of the array's dtype: no copy of it per search
    firsts = np.searchsorted(sorted_homes, ids).tolist()
    ends = dict(zip(staying, np.searchsorted(sorted_homes, ids, side="right").tolist(), strict=True))
    counts = {s: ends[s] - first for s, first in zip(staying, firsts, strict=True)}
    base, extra = divmod(num_shards, len(staying))
    # the servers that already hold the most keep the extra shards: fewer moves
    by_load = sorted(staying, key=lambda s: (-counts[s], s))
    quota = {s: base + (1 if i < extra else 0) for i, s in enumerate(by_load)}
    elsewhere = ~np.isin(homes, list(quota)) | np.isin(homes, list(leaving))
    surplus: list[int] = np.flatnonzero(elsewhere).tolist()
    for server in staying:
        over = counts[server] - quota[server]
        if over > 0:
            surplus.extend(by_home[ends[server] - over : ends[server]].tolist())
    moves = []
    deficit = collections.deque(s for s in sorted(staying) for _ in range(max(0, quota[s] - counts[s])))
    for shard in sorted(surplus):
        if not deficit:
            break
        moves.append((shard, int(homes[shard]), deficit.popleft()))
    return moves


@dataclass
class Migration:
    id: int
    source: int
    target: int
    shards: list[int]
    ready: bool = False  # the target holds the copy (it may still wait for the backups)
    leaving: int = 0  # a hand-over (source = target = the home): the backup leaving the chains
    # (shard, backup) pairs that passed on the source's freeze marker
    flushed: set[tuple[int, int]] = field(default_factory=set)


class Rebalancer:
    """The queue of planned moves and the migrations in flight."""

    def __init__(self, max_concurrent: int, shards_per_migration: int = 32) -> None:
        self.max_concurrent = max_concurrent
        self.shards_per_migration = shards_per_migration
        self.queued: list[tuple[int, int, int]] = []
        self.running: dict[int, Migration] = {}
        self.completed = 0
        self._next_id = 1

    def replan(self, homes: npt.NDArray[np.int16], staying: list[int], leaving: list[int]) -> None:
        """Recompute what still has to move, as if the migrations in flight had landed."""
        projected = homes.copy()
        for migration in self.running.values():
            projected[migration.shards] = migration.target
        self.queued = plan_moves(projected, staying, leaving)

    def start_next(self) -> list[Migration]:
        """Migrations to start now, within the concurrency limit."""
        started = []
        sending = {m.source for m in self.running.values()}
        receiving = {m.target for m in self.running.values()}
        in_flight = {shard for m in self.running.values() for shard in m.shards}
        while self.queued and len(self.running) < self.max_concurrent:
            # a node sends one migration at a time (its freeze stays short) and does not send
            # while it receives; it may receive several (a joiner takes a few shards from each
            # of many servers); a shard still on its way somewhere moves on once it arrived
            candidates = [
                m
                for m in self.queued
                if m[1] not in sending | receiving and m[2] not in sending and m[0] not in in_flight
            ]
            if not candidates:
                break
            _shard, source, target = candidates[0]
            group = [m for m in candidates if m[1] == source and m[2] == target][: self.shards_per_migration]
            for move in group:
                self.queued.remove(move)
            migration = Migration(self._next_id, source, target, [m[0] for m in group])
            self._next_id += 1
            self.running[migration.id] = migration
            sending.add(source)
            receiving.add(target)
            started.append(migration)
        return started

    def start_handover(self, home: int, shards: list[int], leaving: int) -> Migration | None:
        """A hand-over of ``shards``' chains from ``leaving``, unless their home is busy
        with another move (one freeze per node at a time) or a shard is in flight."""
        busy = {m.source for m in self.running.values()} | {m.target for m in self.running.values()}
        in_flight = {shard for m in self.running.values() for shard in m.shards}
        if home in busy or len(self.running) >= self.max_concurrent:
            return None
        free = [shard for shard in shards if shard not in in_flight][: self.shards_per_migration]
        if not free:
            return None
        migration = Migration(self._next_id, home, home, free, leaving=leaving)
        self._next_id += 1
        self.running[migration.id] = migration
        return migration

    def commit(self, migration_id: int) -> Migration | None:
        """The migration landed (its target holds the shards): no longer in flight."""
        migration = self.running.pop(migration_id, None)
        if migration is not None:
            self.completed += 1
        return migration

    def abort_involving(self, node: int) -> list[Migration]:
        """Forget migrations from or to a lost node (they are replanned)."""
        gone = [m for m in self.running.values() if node in (m.source, m.target, m.leaving)]
        for migration in gone:
            del self.running[migration.id]
        return gone

    @property
    def idle(self) -> bool:
        return not self.queued and not self.running
