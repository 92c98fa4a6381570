"""A backup that outlives a migration of its shard: rows from the old and the new home
reach it on different paths, in either order (the simulated network of simnet.py, with
the real coordinator deciding where the shard goes)."""

from __future__ import annotations

import numpy as np

from dynaps.store.shardmap import shard_of
from dynaps.wire.codec import decode
from dynaps.wire.protocol import MsgType, is_client
from tests.dynaps.simnet import NUM_KEYS, NUM_SHARDS, WORKERS, Cluster

PATIENCE = 100  # ticks with nothing to deliver before a wait counts as blocked by the held channel


def deliver_all_but(cluster: Cluster, *held: tuple[int, int]) -> bool:
    """Deliver every message, run the nodes' loops and let time pass while something waits
    for it, except on the ``held`` channels; False if what waits needs a held channel."""
    idle = 0
    for _ in range(10_000):
        cluster.step()
        busy = [channel for channel in sorted(cluster.network.busy()) if channel not in held]
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


def middle_lost_behind_a_held_row() -> tuple[Cluster, int, int]:
    """Chain home -> middle -> tail (replication: 2): a push's row waits between the middle
    and the tail, the middle dies, and the row arrives after the tail learned of the loss
    (dropped, not acknowledged); the worker has sent the push again.  Nothing the home sent
    the tail since has arrived.  Returns the cluster, the home and the tail."""
    cluster = Cluster(replicated=True, replication=2)
    cluster.max_losses = 2
    chains = cluster.shard_map.chains()
    shards = shard_of(np.arange(NUM_KEYS, dtype=np.int64), NUM_KEYS, NUM_SHARDS, cluster.shard_map.partition)
    home, middle, tail = (int(n) for n in chains[shards[0]])
    cluster.start("push", WORKERS[0], [0])
    assert deliver_all_but(cluster, (middle, tail))  # the row waits between middle and tail
    assert cluster.busy, "the push was acknowledged before its row reached the tail"
    cluster.kill(middle, keep_sent=True)
    deliver_all_but(cluster, (middle, tail), (home, tail))  # the tail learns of the loss first
    assert cluster.nodes[tail].shard_map.epoch == cluster.shard_map.epoch
    assert deliver_all_but(cluster, (home, tail)), "the late row is delivered"
    assert cluster.nodes[tail].stats["dropped_from_lost"] == 1
    assert cluster.clients[WORKERS[0]]._requests.counters.get("requests_retried") == 1
    return cluster, home, tail


def test_a_retry_the_home_applied_is_acknowledged_through_the_new_chain() -> None:
    """The home dies before its sync reaches the tail.  The tail stays counted as a replica
    (its predecessor was lost, not drained), so the home must not acknowledge the retry
    before the new chain has the row: the worker sends the push again and the tail, now
    the home, applies it once.  Before, the home acknowledged the retry itself (it had
    applied the push): the push was lost with no data loss reported."""
    cluster, home, _ = middle_lost_behind_a_held_row()
    # (the tail's rebuild of the middle's shards, which waits for the home, is going on)
    cluster.kill(home, keep_sent=False, unsettled=True)
    cluster.settle(None)
    cluster.check()  # the push was applied once, and the tail, the last home, has it
    assert cluster.coordinator.homes.losses.entries == []


def test_a_replica_sync_brings_the_records_of_the_updates_it_includes() -> None:
    """The home's sync reaches the tail, its rows for the retry do not, and the home dies:
    the worker sends the push again to the tail, whose rows (from the sync) include it.
    The sync carries the home's record of the push, so the tail answers it without
    applying it twice."""
    cluster, home, tail = middle_lost_behind_a_held_row()
    layouts = cluster.nodes[tail].layouts
    queue = cluster.network.channels[(home, tail)]
    synced = False
    while queue:
        msg = decode(queue[0], layouts)
        if msg.type is MsgType.REPLICATE and is_client(msg.requester):
            break  # the home's rows for the retry: lost with the home
        synced |= msg.type is MsgType.REPLICATE
        cluster.deliver((home, tail))
    assert synced, "the home sent no sync before its rows for the retry"
    cluster.kill(home, keep_sent=False, unsettled=True)
    cluster.settle(None)
    cluster.check()  # applied once: the tail recognised the retry
    assert cluster.nodes[tail].stats["keys_deduplicated"] >= 1
    assert cluster.coordinator.homes.losses.entries == []


def test_a_drained_middle_of_a_chain_hands_over_behind_its_rows() -> None:
    """Chain home -> middle -> tail (replication: 2); a push's row waits between the middle
    and the tail when the middle is drained.  The middle stays in the chain until the
    home's hand-over marker has passed the tail, which is after the row: the tail keeps
    the row and stays a synced replica, so losing the home right after (its own sync to
    the tail lost with it) loses nothing.  Before, the middle left the chain at once, the
    tail acknowledged the late row without keeping it, and the loss of the home lost the
    acknowledged push (reported, as the tail was no longer counted)."""
    cluster = Cluster(replicated=True, replication=2)
    chains = cluster.shard_map.chains()
    shards = shard_of(np.arange(NUM_KEYS, dtype=np.int64), NUM_KEYS, NUM_SHARDS, cluster.shard_map.partition)
    home, middle, tail = (int(n) for n in chains[shards[0]][:3])
    cluster.start("push", WORKERS[0], [0])
    assert deliver_all_but(cluster, (middle, tail))  # the row waits between middle and tail
    assert cluster.busy, "the push was acknowledged before its row reached the tail"
    cluster.drain(middle)
    deliver_all_but(cluster, (middle, tail), (home, tail))
    held = cluster.shard_map.backups
    assert held is not None
    assert middle in held[shards[0]], "the middle left the chain before its rows reached the tail"
    deliver_all_but(cluster, (home, tail))  # the row, then the marker: the hand-over commits
    after = cluster.shard_map.backups
    assert after is not None
    assert middle not in after[shards[0]]
    assert not cluster.busy, "the push was never acknowledged"
    assert cluster.store(tail).values[0, 0] == 1
    assert cluster.nodes[tail].stats["replica_rows_stale"] == 0
    cluster.kill(home, keep_sent=False, unsettled=True)  # its sync to the tail dies with it
    cluster.settle(None)
    cluster.check()
    assert cluster.coordinator.homes.losses.entries == []
