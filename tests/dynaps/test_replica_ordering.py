"""A backup that outlives a migration of its shard: rows from the old and the new home
reach it on different paths, in either order (the simulated network of simnet.py)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from dynaps.coordinator.replicas import choose_backups
from tests.dynaps import simnet
from tests.dynaps.simnet import SPARE, WORKERS, Cluster


def deliver_all_but(cluster: Cluster, held: tuple[int, int]) -> None:
    """Deliver every message (and run the nodes' loops) except those on channel ``held``."""
    while True:
        cluster.step()
        busy = [channel for channel in sorted(cluster.network.busy()) if channel != held]
        if not busy:
            if any(s.migrations.tracking for s in cluster.live().values()):
                continue
            return
        cluster.deliver(busy[0])


def test_rows_from_a_former_home_do_not_overwrite_the_new_homes(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = Cluster(replicated=True)

    def stable(homes: npt.NDArray[np.int16], servers: list[int]) -> npt.NDArray[np.int16]:
        # backups stay while valid, as the coordinator keeps them (coordinator/replicas.py)
        return choose_backups(homes, cluster.shard_map.backups, servers)

    monkeypatch.setattr(simnet, "next_servers", stable)
    assert cluster.shard_map.backups is not None
    old_home, backup = int(cluster.shard_map.homes[0]), int(cluster.shard_map.backups[0])
    assert SPARE not in (old_home, backup)
    held = (old_home, backup)
    first, second = WORKERS[0], WORKERS[1]
    cluster.start("push", first, [0])  # applied by the old home; its row to the backup waits
    deliver_all_but(cluster, held)
    cluster.migrate(0, SPARE)
    deliver_all_but(cluster, held)
    assert int(cluster.shard_map.homes[0]) == SPARE
    assert int(cluster.shard_map.backups[0]) == backup  # the migration kept the backup
    cluster.start("push", second, [0])  # applied by the new home, whose row arrives first
    deliver_all_but(cluster, held)
    assert second not in cluster.busy
    cluster.settle(None)  # now the old home's row arrives: stale
    assert cluster.store(backup).values[0, 0] == 2
    assert cluster.nodes[backup].stats["replica_rows_stale"] == 1
    cluster.kill(SPARE, True)  # the backup takes over with both increments
    cluster.settle(None)
    cluster.check()
