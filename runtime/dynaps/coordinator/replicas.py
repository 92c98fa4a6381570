"""Which shards have a backup that holds their data, and where a lost server's shards go.

Under ``replication: 1`` every shard has a backup server besides its home.  A backup is a
replica only once it holds every key of the shard: a new backup (after a join, a drain, a
migration that made the backup the home, or a loss) gets the whole shard from the home
first (a replica sync, :mod:`dynaps.node.replication`), and until the backup reports
REPLICA_SYNCED the coordinator does not count on it.  Backups stay where they are while
they remain valid (a ready server other than the home), so most changes need no sync.

:func:`plan_recovery` decides, shard by shard, where a lost server's shards are rebuilt and
from what, and names the data loss that follows when that is not a synced replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dynaps.contract import DataLossCause
from dynaps.store.shardmap import NO_BACKUP, ShardMap
from dynaps.wire import control
from dynaps.wire.control import RecoverySource


def choose_backups(
    homes: npt.NDArray[np.int16], old: npt.NDArray[np.int16] | None, servers: Sequence[int]
) -> npt.NDArray[np.int16]:
    """Each shard's backup: its old one while that is a ready server other than its home,
    else the ready server (not its home) that backs the fewest shards; NO_BACKUP with one server."""
    ready = set(servers)
    backups = np.full(len(homes), NO_BACKUP, dtype=np.int16) if old is None else old.copy()
    valid = np.isin(backups, list(ready)) & (backups != homes)
    load = {s: int((backups[valid] == s).sum()) for s in ready}
    for shard in np.flatnonzero(~valid):
        candidates = [s for s in ready if s != int(homes[shard])]
        if not candidates:
            backups[shard] = NO_BACKUP
            continue
        chosen = min(candidates, key=lambda s: (load[s], s))
        backups[shard] = chosen
        load[chosen] += 1
    return backups


class Replicas:
    """Per shard: whether its backup is known to hold all of its keys (a synced replica).

    ``since[s]`` is the epoch from which shard ``s``'s current (home, backup) pair needs a
    sync: a REPLICA_SYNCED sent by the home at an older epoch does not count.
    """

    def __init__(self, num_shards: int) -> None:
        self.synced = np.zeros(num_shards, dtype=np.bool_)
        self.since = np.zeros(num_shards, dtype=np.int64)

    def reset(self, shard_map: ShardMap, synced: bool) -> None:
        """A first map (homes and backups start alike: ``synced``) or an adopted one (not known)."""
        has_backup = shard_map.backups is not None and shard_map.backups != NO_BACKUP
        self.synced[:] = synced & has_backup
        self.since[:] = shard_map.epoch

    def follow(self, old: ShardMap, new: ShardMap) -> None:
        """A new epoch: a shard whose backup changed waits for its sync.

        A shard that only changed home (a migration) keeps its backup's data: the old home
        replicated every update until it froze the shard, and the new home took the same
        values.  A lost home's shards always get a new backup (the old one is their home).
        """
        if new.backups is None:
            self.synced[:] = False
            return
        kept = old.backups is not None and np.asarray(old.backups == new.backups)
        changed = ~np.asarray(kept, dtype=np.bool_) | (new.backups == NO_BACKUP)
        self.synced &= ~changed
        self.since[changed] = new.epoch

    def confirm(self, backup: int, report: control.ReplicaSynced, shard_map: ShardMap) -> int:
        """``backup`` holds ``report.shards`` as sent by their home; returns how many became synced."""
        if shard_map.backups is None or not report.shards:
            return 0
        shards = np.asarray([s for s in report.shards if 0 <= s < shard_map.num_shards], dtype=np.int64)
        valid = (
            (shard_map.homes[shards] == report.home)
            & (shard_map.backups[shards] == backup)
            & (self.since[shards] <= report.epoch)
        )
        fresh = shards[valid & ~self.synced[shards]]
        self.synced[fresh] = True
        return len(fresh)

    def status(self, replication: int) -> dict[str, int]:
        """``unsynced``: shards whose backup is not (yet) known to hold them (none without replication)."""
        if not replication:
            return {"factor": 0, "synced": 0, "unsynced": 0}
        synced = int(self.synced.sum())
        return {"factor": replication, "synced": synced, "unsynced": len(self.synced) - synced}


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

    A shard whose backup is a ready server goes to it.  With its replica synced nothing
    is lost; otherwise (the sync had not finished) the last checkpoint is restored if
    there is one, else the partial replica is kept: the loss is named either way.  A
    shard without a live backup goes to the least loaded server and restarts from the
    checkpoint or, failing that, from initial values.
    """
    new = homes.copy()
    load = {s: int((homes == s).sum()) for s in servers}
    groups: dict[tuple[int, RecoverySource, DataLossCause | None], list[int]] = {}
    for shard in np.flatnonzero(homes == lost):
        backup = int(backups[shard]) if backups is not None else NO_BACKUP
        cause: DataLossCause | None
        if backup in load:
            home = backup
            if synced[shard]:
                source, cause = RecoverySource.REPLICA, None
            elif checkpoint:
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
