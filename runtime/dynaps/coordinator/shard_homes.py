"""Where each shard lives: the shard map, and the migrations and recoveries that change it.

The coordinator's side of moving shards.  It commits the shard map (every change a new
epoch) and orders the moves: *migrations* balance the shards over the servers that stay
(planned by :mod:`dynaps.coordinator.rebalance`; the nodes move the keys,
:mod:`dynaps.node.migration`), and *recoveries* give a lost server's shards new homes,
which rebuild their keys from a replica, a checkpoint or their initial values
(:mod:`dynaps.node.recovery`).  Neither starts while a checkpoint round runs, and
migrations wait for recoveries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.contract import RebalancePolicy
from dynaps.coordinator.outbox import Send
from dynaps.coordinator.rebalance import Rebalancer
from dynaps.coordinator.roster import MemberState, Roster
from dynaps.store.shardmap import ShardMap, next_servers
from dynaps.wire import control
from dynaps.wire.protocol import MsgType

log = logging.getLogger(__name__)

REBALANCE_AFTER_RECOVERY = 2.0  # seconds between rebuilding a lost server's shards and moving them


def recovery_homes(
    homes: npt.NDArray[np.int16], backups: npt.NDArray[np.int16] | None, lost: int, servers: list[int]
) -> npt.NDArray[np.int16]:
    """New homes for the shards of the ``lost`` server, among ``servers``.

    With ``backups`` (replication), a shard's backup holds its replica and takes it;
    otherwise the least loaded server does.
    """
    shards = np.flatnonzero(homes == lost)
    new = homes.copy()
    load = {s: int((new == s).sum()) for s in servers}
    for shard in shards:
        backup = int(backups[shard]) if backups is not None else -1
        home = backup if backups is not None and backup in load else min(load, key=lambda s: (load[s], s))
        new[shard] = home
        load[home] += 1
    return new


class ShardHomes:
    """The shard map and the moves in flight.

    Callbacks connect it to the coordinator: ``send`` a control message, ``announce`` a
    new membership version (the shard map changed), whether a checkpoint round is
    ``in_checkpoint`` (moves wait), and whether a checkpoint exists to recover from
    (``checkpoint_exists``).
    """

    def __init__(
        self,
        policy: RebalancePolicy,
        replication: int,
        roster: Roster,
        send: Send,
        *,
        announce: Callable[[], None],
        in_checkpoint: Callable[[], bool],
        checkpoint_exists: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.num_shards = policy.num_shards
        self.partition = policy.partition
        self.replication = replication
        self.roster = roster
        self.send = send
        self.announce = announce
        self.in_checkpoint = in_checkpoint
        self.checkpoint_exists = checkpoint_exists
        self.clock = clock
        self.shard_map: ShardMap | None = None  # None until the job is prepared
        self.rebalancer = Rebalancer(policy.max_concurrent_migrations)
        self.recoveries: dict[int, int] = {}  # recovery id -> the new home rebuilding shards
        self.orphaned: list[int] = []  # lost servers whose shards wait for a server to join
        self._next_recovery = 1
        self._rebalance_at: float | None = None

    @property
    def epoch(self) -> int:
        return self.shard_map.epoch if self.shard_map is not None else 0

    @property
    def settled(self) -> bool:
        """No shard is migrating or recovering: ownership does not change."""
        return self.rebalancer.idle and not self.recoveries

    def is_home(self, node: int) -> bool:
        """Whether ``node`` is the home of some shard."""
        return self.shard_map is not None and node in self.shard_map.homes

    def initial(self, servers: list[int]) -> ShardMap:
        """The first shard map, over the job's first ``servers``."""
        self.shard_map = ShardMap.initial(self.num_shards, self.partition, servers)
        if self.replication:
            self.shard_map.backups = next_servers(self.shard_map.homes, servers)
        return self.shard_map

    def adopt(self, doc: dict[str, Any]) -> ShardMap:
        """After a coordinator restart: the newest shard map the nodes had."""
        self.shard_map = ShardMap.from_json(doc)
        return self.shard_map

    def tick(self, now: float) -> None:
        if self._rebalance_at is not None and now >= self._rebalance_at:
            self._rebalance_at = None
            self.rebalance()

    # ------------------------------------------------------------------ migrations

    def rebalance(self) -> None:
        assert self.shard_map is not None
        servers = self.roster.active("server")
        staying = [m.id for m in servers if m.state == MemberState.READY]
        leaving = [m.id for m in servers if m.state == MemberState.DRAINING]
        self.rebalancer.replan(self.shard_map.homes, staying, leaving)
        self.start_migrations()

    def start_migrations(self) -> None:
        assert self.shard_map is not None
        if self.in_checkpoint() or self.recoveries:
            return  # resumed when they end
        for migration in self.rebalancer.start_next():
            log.info(
                "migration %d: %d shards from node %d to node %d",
                migration.id,
                len(migration.shards),
                migration.source,
                migration.target,
            )
            body = control.MigrateOut(
                id=migration.id, shards=migration.shards, target=migration.target, epoch=self.shard_map.epoch
            )
            self.send(migration.source, MsgType.MIGRATE_OUT, body)

    def on_migrate_ready(self, migration_id: int) -> None:
        """The target holds a copy and the source is frozen: commit the new epoch."""
        if self.shard_map is None:
            return
        migration = self.rebalancer.commit(migration_id)
        if migration is None:
            return
        homes = self.shard_map.homes.copy()
        homes[migration.shards] = migration.target
        self.shard_map = ShardMap(
            self.shard_map.epoch + 1, self.shard_map.num_shards, self.shard_map.partition, homes
        )
        log.info(
            "epoch %d: %d shards now homed on node %d",
            self.shard_map.epoch,
            len(migration.shards),
            migration.target,
        )
        self.announce()
        self.start_migrations()

    def abort_involving(self, lost: int) -> None:
        """The ``lost`` node's migrations will never land: the other side forgets them."""
        for migration in self.rebalancer.abort_involving(lost):
            log.warning("migration %d aborted: node %d was lost", migration.id, lost)
            for node in (migration.source, migration.target):
                if node != lost:
                    self.send(node, MsgType.MIGRATE_ABORT, control.MigrateAbort(id=migration.id))

    # ------------------------------------------------------------------ recoveries

    def rehome(self, lost: int) -> bool:
        """Give a lost server's shards new homes, which rebuild them (announces the new map).

        With no server left, the shards wait for the next server that joins (the operator
        recreates the pod); False then.
        """
        assert self.shard_map is not None
        servers = self.roster.ready_servers()
        if not servers:
            log.error("no server left for the shards of lost server %d: waiting for one to join", lost)
            self.orphaned.append(lost)
            self.announce()
            return False
        shards = np.flatnonzero(self.shard_map.homes == lost)
        replicated = self.replication > 0 and self.shard_map.backups is not None
        backups = self.shard_map.backups if replicated else None
        homes = recovery_homes(self.shard_map.homes, backups, lost, servers)
        if replicated:
            source = control.RecoverySource.REPLICA
        elif self.checkpoint_exists():
            source = control.RecoverySource.CHECKPOINT
        else:
            source = control.RecoverySource.INITIAL
            log.error(
                "server %d held shards without replica or checkpoint: their keys restart from "
                "their initial values",
                lost,
            )
        self._commit_homes(homes)
        self.announce()
        for new_home in sorted({int(homes[s]) for s in shards}):
            mine = [int(s) for s in shards if homes[s] == new_home]
            recovery_id = self._next_recovery
            self._next_recovery += 1
            self.recoveries[recovery_id] = new_home
            order = control.Recover(id=recovery_id, shards=mine, source=source)
            self.send(new_home, MsgType.RECOVER, order)
        log.warning(
            "epoch %d: %d shards of lost server %d rebuilt from %s",
            self.shard_map.epoch,
            len(shards),
            lost,
            source,
        )
        return True

    def take_orphaned(self) -> list[int]:
        """Lost servers whose shards waited for a server (one just joined)."""
        orphaned, self.orphaned = self.orphaned, []
        return orphaned

    def on_recovered(self, recovery_id: int) -> None:
        self.recoveries.pop(recovery_id, None)
        if not self.recoveries:
            # Rebalance a little later: requests sent again after the loss should land
            # before shards move on (their homes remember what they already applied).
            self._rebalance_at = self.clock() + REBALANCE_AFTER_RECOVERY

    def _commit_homes(self, homes: npt.NDArray[np.int16]) -> None:
        """Commit a new shard assignment (a new epoch), with backups under replication."""
        assert self.shard_map is not None
        backups = next_servers(homes, self.roster.ready_servers()) if self.replication else None
        self.shard_map = ShardMap(
            self.shard_map.epoch + 1, self.shard_map.num_shards, self.shard_map.partition, homes, backups
        )
