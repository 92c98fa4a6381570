"""A backup that outlives a migration of its shard: rows from the old and the new home
reach it on different paths, in either order (the simulated network of simnet.py, with
the real coordinator deciding where the shard goes)."""

from __future__ import annotations

import numpy as np

from dynaps.store.shardmap import shard_of
from tests.dynaps.simnet import NUM_KEYS, NUM_SHARDS, WORKERS, Cluster

PATIENCE = 100  # ticks with nothing to deliver before a wait counts as blocked by the held channel


def deliver_all_but(cluster: Cluster, held: tuple[int, int]) -> bool:
    """Deliver every message, run the nodes' loops and let time pass while something waits
    for it, except on channel ``held``; False if what waits needs the held channel."""
    idle = 0
    for _ in range(10_000):
        cluster.step()
        busy = [channel for channel in sorted(cluster.network.busy()) if channel != held]
        if busy:
            idle = 0
            cluster.deliver(busy[0])
        elif any(s.migrations.tracking for s in cluster.live().values()):
            continue
        elif cluster.waits_for_time() and idle < PATIENCE:
            idle += 1
            cluster.tick()
        else:
            return not cluster.waits_for_time()
    raise AssertionError("never settled")


def draining_behind_a_held_row(shard: int) -> tuple[Cluster, int, int, int] | None:
    """A cluster where ``shard``'s first push reached its home but not yet its backup, and
    the home was drained onto a new home that keeps the backup: returns the cluster, the
    key, the backup and the old home.  None when the coordinator moves this shard onto its
    backup instead (the row and the copy then share one path)."""
    cluster = Cluster(replicated=True)
    shards = shard_of(np.arange(NUM_KEYS, dtype=np.int64), NUM_KEYS, NUM_SHARDS, cluster.shard_map.partition)
    key = int(np.flatnonzero(shards == shard)[0])
    assert cluster.shard_map.backups is not None
    old_home, backup = int(cluster.shard_map.homes[shard]), int(cluster.shard_map.backups[shard, 0])
    held = (old_home, backup)
    cluster.start("push", WORKERS[0], [key])  # applied by the old home; its row to the backup waits
    assert deliver_all_but(cluster, held)
    cluster.drain(old_home)
    deliver_all_but(cluster, held)
    planned = [m for m in cluster.coordinator.homes.rebalancer.running.values() if shard in m.shards]
    if not planned or planned[0].target == backup:
        return None
    return cluster, key, backup, old_home


def test_a_migration_commits_only_once_the_backup_holds_the_old_homes_rows() -> None:
    """Without the wait, the commit made the backup's predecessor the new home, the old
    home's row arrived stale and was dropped, and losing the new home before its own sync
    reached the backup lost the acknowledged push, with no data loss reported."""
    found = [c for c in (draining_behind_a_held_row(s) for s in range(NUM_SHARDS)) if c is not None]
    assert found, "no shard kept its backup through the drain of its home"
    cluster, key, backup, old_home = found[0]
    shard = int(shard_of(np.asarray([key]), NUM_KEYS, NUM_SHARDS, cluster.shard_map.partition)[0])
    assert int(cluster.shard_map.homes[shard]) == old_home, "the move committed before the backup had the row"
    new_home = next(
        m.target for m in cluster.coordinator.homes.rebalancer.running.values() if shard in m.shards
    )
    assert deliver_all_but(cluster, (new_home, backup))  # the old home's row and marker, not the new sync
    assert int(cluster.shard_map.homes[shard]) == new_home
    assert cluster.store(backup).values[key, 0] == 1
    assert cluster.nodes[backup].stats["replica_rows_stale"] == 0
    cluster.kill(new_home, False)  # its sync to the backup never arrives
    assert new_home in cluster.dead, "the kill waited for moves in flight"
    cluster.settle(None)
    cluster.check()  # the backup took over with the acknowledged push
    assert cluster.coordinator.homes.losses.entries == []
