"""Which shards have a backup that holds their data, and where a lost server's shards go.

Under ``replication: k`` every shard has ``k`` backup servers besides its home, distinct
and ready (as many as there are other servers, at most ``k``), in a replication chain.  A
backup is a replica only once it holds every key of the shard: a new backup (after a join,
a drain, a migration that made a backup the home, or a loss) gets the whole shard from the
home first (a replica sync down the chain, :mod:`dynaps.node.replication`), and until the
backup reports REPLICA_SYNCED the coordinator does not count on it.  Which servers those
are is :mod:`dynaps.coordinator.backup_chains`.

:func:`plan_recovery` decides, shard by shard, where a lost server's shards are rebuilt and
from what, and names the data loss that follows when that is not a synced replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dynaps.contract import DataLossCause
from dynaps.coordinator.backup_chains import improper_chains
from dynaps.store.shardmap import NO_BACKUP, ShardMap
from dynaps.wire import control
from dynaps.wire.control import RecoverySource


class Replicas:
    """Per shard and backup slot: whether that backup is known to hold all of the shard's
    keys (a synced replica); the slots follow :attr:`ShardMap.backups`.

    ``since[s, j]`` is the epoch from which the backup in slot ``j`` of shard ``s`` needs a
    sync: a REPLICA_SYNCED sent by the home at an older epoch does not count.
    """

    def __init__(self, num_shards: int, copies: int) -> None:
        self.slots = max(1, copies) + 1  # the slots of ShardMap.backups: k, and one for a leaver
        self.synced = np.zeros((num_shards, self.slots), dtype=np.bool_)
        self.since = np.zeros((num_shards, self.slots), dtype=np.int64)

    def reset(self, shard_map: ShardMap, synced: bool) -> None:
        """A first map (homes and backups start alike: ``synced``) or an adopted one (not known)."""
        if shard_map.backups is None or shard_map.backups.shape[1] > self.slots:
            self.synced[:] = False
        else:
            self.synced[:] = synced & (shard_map.backup_slots(self.slots) != NO_BACKUP)
        self.since[:] = shard_map.epoch

    def follow(
        self, old: ShardMap, new: ShardMap, flushed: Sequence[int] = (), members: Sequence[int] = ()
    ) -> None:
        """A new epoch: a backup new to its shard waits for its sync, and so does one whose
        predecessor in the chain changed while that predecessor lives on (``members``: a
        drain); one that stays a backup of the shard after the same predecessor, or after a
        predecessor that was lost, keeps what it was known to hold, unless a backup before it
        in the chain waits for its sync for the reason above.

        Rows its old predecessor sent before the change and that arrive after it are stale
        there: the backup acknowledges them (their requester must not wait for ever) but
        does not keep them, so until the home's sync down the new chain arrives it may lack
        an acknowledged update.  ``flushed``: the shards of a migration this epoch commits,
        whose backups already passed on the old home's freeze marker (every row it sent
        before is applied there: :meth:`ShardHomes.commit_ready`); their new predecessor
        (the new home) took the same values.  A lost home's shards lose the backup that
        becomes their home; the backups after it move up the chain behind the same
        predecessor, synced as they were.  A lost predecessor's rows still in flight are the
        window ``replication: k`` accepts (counting them out would report a loss after every
        two losses at once, which k = 2 promises to survive).
        """
        if new.backups is None or new.backups.shape[1] > self.slots:
            self.synced[:] = False
            return
        if old.backups is None or old.backups.shape[1] > self.slots:
            self.synced[:] = False
            self.since[:] = new.epoch
            return
        old_backups, new_backups = old.backup_slots(self.slots), new.backup_slots(self.slots)
        # a shard whose home and chain stay as they were keeps what its backups were known to
        # hold (an empty slot holds nothing); only the others are worked out: at a million
        # shards a commit changes a few, and doing every row took 0.4 s of each epoch
        changed = old.homes != new.homes
        for slot in range(self.slots):
            changed |= old_backups[:, slot] != new_backups[:, slot]
        # rows naming a server twice or the home are worked out in full (an adopted map)
        rows = np.flatnonzero(changed | improper_chains(new.homes, new_backups))
        moved = np.zeros(len(new.homes), dtype=np.bool_)
        moved[list(flushed)] = True
        followed = _follow_chains(  # from what was known before this epoch
            self.synced[rows],
            self.since[rows],
            np.column_stack([old.homes[rows], old_backups[rows]]),
            np.column_stack([new.homes[rows], new_backups[rows]]),
            moved[rows, None],
            members,
            new.epoch,
        )
        empty = new_backups == NO_BACKUP
        self.synced &= ~empty
        self.since[empty] = new.epoch
        self.synced[rows], self.since[rows] = followed

    def confirm(self, backup: int, report: control.ReplicaSynced, shard_map: ShardMap) -> int:
        """``backup`` holds ``report.shards`` as sent by their home; returns how many of its
        slots became synced."""
        if shard_map.backups is None or not report.shards:
            return 0
        shards = np.asarray([s for s in report.shards if 0 <= s < shard_map.num_shards], dtype=np.int64)
        # at most one slot per shard: backups are distinct
        slots = shard_map.backup_slots(self.slots)[shards] == backup
        valid = (
            slots & (shard_map.homes[shards] == report.home)[:, None] & (self.since[shards] <= report.epoch)
        )
        fresh = valid & ~self.synced[shards]
        rows, columns = np.nonzero(fresh)
        self.synced[shards[rows], columns] = True
        return len(rows)

    def synced_copies(self) -> npt.NDArray[np.int64]:
        """Per shard: how many of its backups are known to hold all of its keys."""
        return np.asarray(self.synced.sum(axis=1), dtype=np.int64)

    def status(self, replication: int) -> dict[str, int]:
        """``synced``: shards whose ``replication`` backups all hold them; ``unsynced``: the
        others (none without replication); ``minCopies``: the fewest synced backups of a shard."""
        if not replication:
            return {"factor": 0, "synced": 0, "unsynced": 0}
        copies = self.synced_copies()
        synced = int((copies >= replication).sum())
        least = int(copies.min()) if len(copies) else 0
        return {"factor": replication, "synced": synced, "unsynced": len(copies) - synced, "minCopies": least}


def _follow_chains(
    synced: npt.NDArray[np.bool_],
    since: npt.NDArray[np.int64],
    old_chains: npt.NDArray[np.int16],
    new_chains: npt.NDArray[np.int16],
    moved: npt.NDArray[np.bool_],
    members: Sequence[int],
    epoch: int,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """:meth:`Replicas.follow` for some shards: their synced slots and the epochs the slots
    need a sync from, after their chains (home, then backup slots) changed from ``old_chains``
    to ``new_chains`` in ``epoch``; ``moved``: the shards of a migration this epoch commits."""
    slots = synced.shape[1]
    old_backups, new_backups = old_chains[:, 1:], new_chains[:, 1:]
    # per slot: the server its rows come from
    old_before, new_before = old_chains[:, :-1], new_chains[:, :-1]
    gone = ~np.isin(old_before, list(members))
    followed = np.zeros_like(synced)
    needs = np.full_like(since, epoch)
    # per new slot: its server was in the old chain and its predecessor changed while the
    # old one lives on (stale rows from it are acknowledged there and not passed on, so no
    # backup after it in the chain has them either)
    cut = np.zeros_like(synced)
    for slot in range(slots):
        same = (new_backups == old_backups[:, slot : slot + 1]) & (new_backups != NO_BACKUP)
        before = old_before[:, slot : slot + 1]
        kept = same & ((new_before == before) | gone[:, slot : slot + 1] | moved)
        cut |= same & ~kept
        followed |= kept & synced[:, slot : slot + 1]
        needs = np.where(kept, since[:, slot : slot + 1], needs)
    downstream = np.logical_or.accumulate(cut, axis=1)
    return followed & ~downstream, np.where(downstream, epoch, needs)


@dataclass(frozen=True)
class RecoveryGroup:
    """Shards of a lost server rebuilt by one new home from one source."""

    home: int
    source: RecoverySource
    cause: DataLossCause | None  # None: nothing lost (a synced replica)
    shards: list[int]


def plan_recovery(
    homes: npt.NDArray[np.int16],
    backups: npt.NDArray[np.int16] | None,
    synced: npt.NDArray[np.bool_],
    lost: int,
    servers: Sequence[int],
    checkpoint: bool,
) -> tuple[npt.NDArray[np.int16], list[RecoveryGroup]]:
    """New homes for the ``lost`` server's shards among ``servers``, and what each rebuilds from.

    A shard with a backup on a ready server goes to the first such backup in its chain that
    is synced (nothing is lost), else to the first ready one: the sync had not finished, so
    the last checkpoint is restored if there is one, else the partial replica is kept, and
    the loss is named either way.  A shard without a live backup goes to the least loaded
    server and restarts from the checkpoint or, failing that, from initial values.
    ``synced`` has one column per backup slot (:class:`Replicas`).
    """
    new = homes.copy()
    held = np.bincount(homes[homes > 0], minlength=max(servers, default=0) + 1)
    load = {s: int(held[s]) for s in servers}
    groups: dict[tuple[int, RecoverySource, DataLossCause | None], list[int]] = {}
    for shard in np.flatnonzero(homes == lost):
        chain = [] if backups is None else [int(b) for b in backups[shard]]
        live = [(slot, b) for slot, b in enumerate(chain) if b in load]
        replicas = [b for slot, b in live if synced[shard, slot]]
        cause: DataLossCause | None
        if replicas:
            home, source, cause = replicas[0], RecoverySource.REPLICA, None
        elif live:
            home = live[0][1]
            if checkpoint:
                source, cause = RecoverySource.CHECKPOINT, DataLossCause.CHECKPOINT
            else:
                source, cause = RecoverySource.REPLICA, DataLossCause.REPLICAS_EXHAUSTED
        else:
            home = min(load, key=lambda s: (load[s], s))
            if checkpoint:
                source, cause = RecoverySource.CHECKPOINT, DataLossCause.CHECKPOINT
            elif backups is not None:
                source, cause = RecoverySource.INITIAL, DataLossCause.REPLICAS_EXHAUSTED
            else:
                source, cause = RecoverySource.INITIAL, DataLossCause.INITIAL
        new[shard] = home
        load[home] += 1
        groups.setdefault((home, source, cause), []).append(int(shard))
    plan = [RecoveryGroup(h, src, c, shards) for (h, src, c), shards in sorted(groups.items(), key=_order)]
    return new, plan


def _order(item: tuple[tuple[int, RecoverySource, DataLossCause | None], list[int]]) -> tuple[int, int]:
    (home, _, _), shards = item
    return home, shards[0]
