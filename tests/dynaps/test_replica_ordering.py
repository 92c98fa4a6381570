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


def drained_keeping_the_backup(shard: int) -> tuple[Cluster, int, int, int] | None:
    """A cluster where ``shard``'s first push reached its home but not yet its backup, and
    the home was drained: the shard moved to a new home and kept its backup.  None when
    the coordinator moved this shard (or another of the home's) onto the backup instead."""
    cluster = Cluster(replicated=True)
    shards = shard_of(np.arange(NUM_KEYS, dtype=np.int64), NUM_KEYS, NUM_SHARDS, cluster.shard_map.partition)
    key = int(np.flatnonzero(shards == shard)[0])
    assert cluster.shard_map.backups is not None
    old_home, backup = int(cluster.shard_map.homes[shard]), int(cluster.shard_map.backups[shard, 0])
    held = (old_home, backup)
    cluster.start("push", WORKERS[0], [key])  # applied by the old home; its row to the backup waits
    assert deliver_all_but(cluster, held)
    cluster.drain(old_home)
    if not deliver_all_but(cluster, held):
        return None  # the drain moves a shard onto the backup: its copy waits behind the row
    new_home = int(cluster.shard_map.homes[shard])
    assert new_home != old_home
    assert cluster.shard_map.backups is not None
    if new_home == backup:
        return None
    assert int(cluster.shard_map.backups[shard, 0]) == backup, "the migration kept the backup"
    return cluster, key, backup, new_home


def test_rows_from_a_former_home_do_not_overwrite_the_new_homes() -> None:
    found = [c for c in (drained_keeping_the_backup(s) for s in range(NUM_SHARDS)) if c is not None]
    assert found, "no shard kept its backup through the drain of its home"
    cluster, key, backup, new_home = found[0]
    cluster.start("push", WORKERS[1], [key])  # applied by the new home, whose row arrives first
    assert deliver_all_but(cluster, (-1, -1))
    assert cluster.store(backup).values[key, 0] == 2
    assert cluster.nodes[backup].stats["replica_rows_stale"] == 1  # the old home's row came last
    cluster.kill(new_home, True)  # the backup takes over with both increments
    cluster.settle(None)
    cluster.check()
