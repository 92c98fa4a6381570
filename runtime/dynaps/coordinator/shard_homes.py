"""Where each shard lives: the shard map, and the migrations and recoveries that change it.

The coordinator's side of moving shards.  It commits the shard map (every change a new
epoch) and orders the moves: *migrations* balance the shards over the servers that stay
(planned by :mod:`dynaps.coordinator.rebalance`; the nodes move the keys,
:mod:`dynaps.node.migration`), and *recoveries* give a lost server's shards new homes,
which rebuild their keys from a replica, a checkpoint or their initial values
(:mod:`dynaps.node.recovery`).  Neither starts while a checkpoint round runs, and
migrations wait for recoveries.  Every commit keeps each shard's backups on ready servers
(:mod:`dynaps.coordinator.replicas`); a recovery from anything but a synced replica is
recorded as data loss (:mod:`dynaps.coordinator.data_loss`).  A recovery names the nodes
that may hold keys of its shards (:mod:`dynaps.coordinator.holders`), which the new home
asks instead of every node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.contract import DataLossCause, RebalancePolicy
from dynaps.coordinator.backup_chains import choose_backups
from dynaps.coordinator.data_loss import DataLoss, LossEntry
from dynaps.coordinator.holders import Holders
from dynaps.coordinator.outbox import Send
from dynaps.coordinator.rebalance import Migration, Rebalancer
from dynaps.coordinator.replicas import Replicas, plan_recovery
from dynaps.coordinator.roster import MemberState, Roster
from dynaps.store.shardmap import ShardMap, next_servers
from dynaps.wire import control
from dynaps.wire.protocol import MsgType

log = logging.getLogger(__name__)

REBALANCE_AFTER_RECOVERY = 2.0  # seconds between rebuilding a lost server's shards and moving them


class ShardHomes:
    """The shard map and the moves in flight.

    Callbacks connect it to the coordinator: ``send`` a control message, ``announce`` a
    new membership version (the shard map changed), whether a checkpoint round is
    ``in_checkpoint`` (moves wait), whether a checkpoint exists to recover from
    (``checkpoint_exists``) and how old it is (``checkpoint_age``, seconds, None: not
    known), and ``on_loss`` for each data loss recorded.  ``num_keys``: each table's size.
    """

    def __init__(
        self,
        policy: RebalancePolicy,
        replication: int,
        roster: Roster,
        send: Send,
        *,
        num_keys: list[int],
        announce: Callable[[], None],
        in_checkpoint: Callable[[], bool],
        checkpoint_exists: Callable[[], bool],
        checkpoint_age: Callable[[], float | None],
        on_loss: Callable[[LossEntry], None],
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
        self.checkpoint_age = checkpoint_age
        self.on_loss = on_loss
        self.clock = clock
        self.shard_map: ShardMap | None = None  # None until the job is prepared
        self.rebalancer = Rebalancer(policy.max_concurrent_migrations)
        self.replicas = Replicas(policy.num_shards, replication)
        self.losses = DataLoss(num_keys, policy.num_shards, policy.partition)
        self.holders = Holders(policy.num_shards)  # whom a recovery asks besides the new home
        self.recoveries: dict[int, int] = {}  # recovery id -> the new home rebuilding shards
        self.orphaned: list[int] = []  # lost servers whose shards wait for a server to join
        self._next_recovery = 1
        self._rebalance_at: float | None = None
        self.commit_due = False  # a migration became ready this turn: commit_ready at its end

    @property
    def recoveries_started(self) -> int:
        """Recoveries ordered by this coordinator (their ids count up from 1)."""
        return self._next_recovery - 1

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

    def initial(self, servers: list[int], restored: bool = False) -> ShardMap:
        """The first shard map, over the job's first ``servers``.

        Homes and backups start alike (initial values), so the backups are replicas from
        the start, unless the homes ``restored`` a checkpoint: then each home syncs its
        backups first and reports it.
        """
        self.shard_map = ShardMap.initial(self.num_shards, self.partition, servers)
        if self.replication:
            self.shard_map.backups = next_servers(self.shard_map.homes, servers, self.replication)
        self.replicas.reset(self.shard_map, synced=not restored)
        return self.shard_map

    def adopt(
        self, doc: dict[str, Any], synced: Sequence[tuple[int, control.ReplicaSynced]] = ()
    ) -> ShardMap:
        """After a coordinator restart: the newest shard map the nodes had, and the replicas
        their backups hold synced at its epoch (``synced``: (backup, report), as the REJOINs
        said; the others are not known, and :meth:`reconfirm` asks the homes)."""
        self.shard_map = ShardMap.from_json(doc)
        self.replicas.reset(self.shard_map, synced=False)
        for backup, report in synced:
            if report.epoch == self.shard_map.epoch:
                self.replicas.confirm(backup, report, self.shard_map)
        self.holders.forget_all()  # nor who holds keys away from their homes: recoveries ask everyone
        return self.shard_map

    def reconfirm(self) -> None:
        """A new epoch with the same homes (and valid backups): every home reports which of
        its backups hold their shards (the homes send REPLICA_SYNCED at every epoch).  The
        replicas the backups said they hold (:meth:`adopt`) follow the change as any would
        (:meth:`Replicas.follow`): a home lost while the coordinator was away has them."""
        if self.shard_map is not None and self.replication:
            self._commit(self.shard_map.homes.copy())

    def refresh_backups(self) -> bool:
        """The ready servers changed: shards whose backup is no longer one get a new backup
        (a new epoch; their homes sync them).  True if the map changed (announce it)."""
        if self.shard_map is None or not self.replication:
            return False
        backups = choose_backups(
            self.shard_map.homes,
            self.shard_map.backups,
            self.roster.ready_servers(),
            self.replication,
            self._lingering(),
        )
        if self.shard_map.backups is not None and np.array_equal(backups, self.shard_map.backups):
            return False
        self._commit(self.shard_map.homes.copy(), backups)
        log.info("epoch %d: shards of departed servers have new backups", self.shard_map.epoch)
        self.commit_ready()  # a replaced backup is no longer waited for
        return True

    def on_replica_synced(self, backup: int, report: control.ReplicaSynced) -> None:
        """``backup`` holds every key of the shards its home synced: a replica now."""
        if self.shard_map is None:
            return
        fresh = self.replicas.confirm(backup, report, self.shard_map)
        if fresh:
            log.info("node %d holds synced replicas of %d more shards of node %d", backup, fresh, report.home)
            self.start_handovers()
        migration = self.rebalancer.running.get(report.migration)
        if migration is not None:
            migration.flushed.update((s, backup) for s in report.shards)
            self.commit_ready()

    def tick(self, now: float) -> None:
        if self._rebalance_at is not None and now >= self._rebalance_at:
            self._rebalance_at = None
            self.rebalance()

    # ------------------------------------------------------------------ migrations

    def rebalance(self) -> None:
        assert self.shard_map is not None
        servers = self.roster.active("server")
        staying = self.roster.ready_servers()
        leaving = [m.id for m in servers if m.state == MemberState.DRAINING]
        self.rebalancer.replan(self.shard_map.homes, staying, leaving)
        self.start_migrations()

    def start_migrations(self) -> None:
        assert self.shard_map is not None
        if self.in_checkpoint() or self.recoveries:
            return  # resumed when they end
        self.start_handovers()
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

    def _lingering(self) -> list[int]:
        """Draining servers: they stay in the chains until their backups are handed over."""
        return [m.id for m in self.roster.active("server") if m.state == MemberState.DRAINING]

    def start_handovers(self) -> None:
        """Take draining servers out of the chains of shards whose other backups are synced.

        While a server drains it stays a backup where it was, and each of its shards gets a
        new backup after the others (:func:`choose_backups`), synced by the home; once the
        new one holds the shard, the shard is handed over: the home freezes it and sends its
        marker down the chain, and the commit that takes the leaver out waits until every
        synced backup passed it on (as for a migration).  Taking it out while rows it was
        passing on are in flight would leave its successor acknowledging them unkept, and a
        loss in the meantime would lose acknowledged updates or go unreported.
        """
        shard_map = self.shard_map
        if shard_map is None or shard_map.backups is None or self.in_checkpoint() or self.recoveries:
            return
        chains = shard_map.backup_slots(self.replicas.slots)
        ready = np.isin(chains, self.roster.ready_servers())
        settled = ~(ready & ~self.replicas.synced).any(axis=1)  # every ready backup synced
        for leaving in self._lingering():
            handing = (chains == leaving).any(axis=1) & settled
            for home in np.unique(shard_map.homes[handing]):
                shards = [int(s) for s in np.flatnonzero(handing & (shard_map.homes == home))]
                migration = self.rebalancer.start_handover(int(home), shards, leaving)
                if migration is None:
                    continue
                log.info(
                    "hand-over %d: node %d leaves the chains of %d shards of node %d",
                    migration.id,
                    leaving,
                    len(migration.shards),
                    home,
                )
                body = control.MigrateOut(
                    id=migration.id,
                    shards=migration.shards,
                    target=migration.target,
                    epoch=shard_map.epoch,
                    leaving=leaving,
                )
                self.send(migration.source, MsgType.MIGRATE_OUT, body)

    def on_migrate_ready(self, migration_id: int) -> None:
        """The target holds a copy and the source is frozen: commit the new epoch once the
        backups hold what the source replicated before it froze."""
        migration = self.rebalancer.running.get(migration_id)
        if self.shard_map is None or migration is None:
            return
        migration.ready = True
        self.commit_due = True  # at the end of the coordinator's turn, with any others ready

    def commit_ready(self) -> None:
        """Commit the ready migrations whose synced backups have all passed on the source's
        freeze marker (:meth:`dynaps.node.replication.Replication.flushed`).

        Without the wait, an acknowledged update replicated by the source just before it
        froze could still be on its way to a backup at the commit; the backup, whose
        predecessor is then the new home, drops it as stale, and a loss of the new home
        before its own sync arrives loses the update with nobody knowing.  A backup that
        is not synced is not waited for (it is not counted on), nor one that is lost or
        replaced meanwhile (the map changed; the source sends its marker again).
        """
        self.commit_due = False
        running = sorted(self.rebalancer.running.values(), key=lambda m: m.id)
        committed = [m for m in running if m.ready and not self._waiting_backups(m)]
        if committed:
            self._commit_migrations(committed)

    def _waiting_backups(self, migration: Migration) -> set[tuple[int, int]]:
        """The (shard, backup) pairs a migration still waits for."""
        assert self.shard_map is not None
        if self.shard_map.backups is None:
            return set()
        chains = self.shard_map.backups[migration.shards]
        synced = self.replicas.synced[migration.shards]
        needed = {
            (shard, int(backup))
            for row, shard in enumerate(migration.shards)
            for slot, backup in enumerate(chains[row])
            if synced[row, slot] and int(backup) != migration.target
        }
        return needed - migration.flushed

    def _commit_migrations(self, migrations: list[Migration]) -> None:
        """One epoch for every migration that is ready: at a million shards a join moves a
        few shards from each of hundreds of servers, and an epoch each, announced to every
        process, was most of what the rebalance cost (bench/README.md)."""
        assert self.shard_map is not None
        homes = self.shard_map.homes.copy()
        flushed: list[int] = []
        handed: list[int] = []
        for migration in migrations:
            self.rebalancer.commit(migration.id)
            homes[migration.shards] = migration.target
            flushed.extend(migration.shards)
            if migration.leaving:
                handed.extend(migration.shards)
            else:  # the old home may keep keys released to it during the copy
                self.holders.former_home(migration.source, migration.shards)
        # with backups: replicas follow every change
        self._commit(homes, flushed=flushed, handed=handed)
        for migration in migrations:
            if migration.leaving:
                log.info(
                    "epoch %d: node %d no longer backs up %d shards of node %d",
                    self.shard_map.epoch,
                    migration.leaving,
                    len(migration.shards),
                    migration.target,
                )
            else:
                log.info(
                    "epoch %d: %d shards now homed on node %d",
                    self.shard_map.epoch,
                    len(migration.shards),
                    migration.target,
                )
        self.announce()
        self.start_migrations()

    def abort_involving(self, lost: int) -> None:
        """The ``lost`` (or departed) node's migrations will never land: the other side forgets them."""
        for migration in self.rebalancer.abort_involving(lost):
            log.warning("migration %d aborted: node %d is gone", migration.id, lost)
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
        for recovery_id, home in list(self.recoveries.items()):
            if home == lost:  # it died rebuilding: its shards are rehomed again below
                del self.recoveries[recovery_id]
                self.losses.abandoned(recovery_id)
        servers = self.roster.ready_servers()
        if not servers:
            log.error("no server left for the shards of lost server %d: waiting for one to join", lost)
            self.orphaned.append(lost)
            self.announce()
            return False
        homes, plan = plan_recovery(
            self.shard_map.homes,
            self.shard_map.backups if self.replication else None,
            self.replicas.synced,
            lost,
            servers,
            self.checkpoint_exists(),
        )
        self._commit(homes)
        self.announce()
        epoch = self.shard_map.epoch
        for group in plan:
            recovery_id = self._next_recovery
            self._next_recovery += 1
            self.recoveries[recovery_id] = group.home
            holders = self.holders.of(group.shards, self._alive)
            order = control.Recover(id=recovery_id, shards=group.shards, source=group.source, holders=holders)
            self.send(group.home, MsgType.RECOVER, order)
            if group.cause is None:
                log.warning(
                    "epoch %d: %d shards of lost server %d rebuilt on node %d from its synced replica",
                    epoch,
                    len(group.shards),
                    lost,
                    group.home,
                )
                continue
            age = self.checkpoint_age() if group.cause is DataLossCause.CHECKPOINT else None
            entry = self.losses.record(group.cause, lost, epoch, group.shards, recovery_id, age)
            log.error("data loss: epoch %d: %s (rebuilt on node %d)", epoch, entry.describe(), group.home)
            self.on_loss(entry)
        self.commit_ready()  # a lost backup is no longer waited for
        return True

    def _alive(self, node: int) -> bool:
        return self.roster.get(node) is not None  # removed once it left or was lost

    def take_orphaned(self) -> list[int]:
        """Lost servers whose shards waited for a server (one just joined)."""
        orphaned, self.orphaned = self.orphaned, []
        return orphaned

    def on_recovered(self, recovery_id: int, keys: int) -> None:
        """A new home rebuilt its shards; ``keys``: those it took from the recovery's source."""
        self.recoveries.pop(recovery_id, None)
        self.losses.recovered(recovery_id, keys)
        if not self.recoveries:
            # Rebalance a little later: requests sent again after the loss should land
            # before shards move on (their homes remember what they already applied).
            self._rebalance_at = self.clock() + REBALANCE_AFTER_RECOVERY

    def _commit(
        self,
        homes: npt.NDArray[np.int16],
        backups: npt.NDArray[np.int16] | None = None,
        flushed: Sequence[int] = (),
        handed: Sequence[int] = (),
    ) -> None:
        """Commit a new shard assignment (a new epoch), with backups under replication:
        ``backups``, or the old ones where still valid (:func:`choose_backups`);
        ``flushed``: the shards of the migration it commits (:meth:`Replicas.follow`),
        ``handed``: of a hand-over, whose leaver it takes out of their chains."""
        assert self.shard_map is not None
        old = self.shard_map
        if self.replication and backups is None:
            ready, lingering = self.roster.ready_servers(), self._lingering()
            backups = choose_backups(homes, old.backups, ready, self.replication, lingering, handed)
        self.shard_map = ShardMap(old.epoch + 1, old.num_shards, old.partition, homes, backups)
        members = [m.id for m in self.roster.active("server")]
        self.replicas.follow(old, self.shard_map, flushed, members)
