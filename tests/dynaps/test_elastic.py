"""Live elasticity with real processes: every key ends equal to its acknowledged increments."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dynaps

pytestmark = pytest.mark.integration

NUM_KEYS = 2000
TABLES = {"W": dynaps.TableSpec(num_keys=NUM_KEYS, dim=2)}


def train_until(ps: dynaps.PS, stop_file: str, seed: int) -> dict[str, Any]:
    """Push unit increments and localize keys until ``stop_file`` exists (or this worker drains).

    Only synchronous pushes: when push() returns, the increment is acknowledged and counted.
    """
    W = ps.table("W")
    rng = np.random.default_rng(seed + 17 * ps.rank)
    acked = np.zeros(NUM_KEYS, dtype=np.int64)
    rounds = 0
    drained = False
    try:
        while not os.path.exists(stop_file) or rounds < 20:
            keys = rng.integers(0, NUM_KEYS, size=50)
            W.push(keys, np.ones((50, 2)))
            np.add.at(acked, keys, 1)
            if rounds % 3 == 0:
                W.localize(rng.integers(0, NUM_KEYS, size=20))
            if rounds % 5 == 0:
                W.pull(rng.integers(0, NUM_KEYS, size=30))
            rounds += 1
    except dynaps.Drained:
        drained = True
    return {"acked": acked, "rounds": rounds, "drained": drained, "rank": ps.rank}


def read_all(ps: dynaps.PS) -> np.ndarray:
    return ps.table("W").pull(np.arange(NUM_KEYS))[:, 0]


def assert_counts(cluster: dynaps.LocalCluster, results: list[dict[str, Any]]) -> None:
    acked = sum(r["acked"] for r in results)
    for values in cluster.run(read_all):
        np.testing.assert_array_equal(values, acked)


def run_while(cluster: dynaps.LocalCluster, tmp_path: Path, change: Any) -> list[dict[str, Any]]:
    stop_file = str(tmp_path / "stop")
    job = cluster.submit(train_until, stop_file, 3)
    time.sleep(0.3)  # let training get going (correctness does not depend on it)
    change()
    Path(stop_file).touch()
    return job.result(timeout=120)


def test_servers_added_and_removed_while_training(tmp_path: Path) -> None:
    with dynaps.LocalCluster(servers=1, workers=2, tables=TABLES, num_shards=64) as cluster:
        epoch = cluster.status()["epoch"]

        def grow_and_shrink() -> None:
            cluster.scale(servers=3)
            status = cluster.status()
            assert len(status["shardsPerServer"]) == 3
            assert all(20 <= n <= 22 for n in status["shardsPerServer"].values())
            cluster.scale(servers=1)

        results = run_while(cluster, tmp_path, grow_and_shrink)
        status = cluster.status()
        assert status["epoch"] > epoch + 2, "shards did not move"
        assert len(status["shardsPerServer"]) == 1
        assert all(r["rounds"] > 20 for r in results)
        assert_counts(cluster, results)


def test_sigterm_drains_a_worker_without_losing_updates(tmp_path: Path) -> None:
    with dynaps.LocalCluster(servers=2, workers=3, tables=TABLES, num_shards=64) as cluster:
        results = run_while(cluster, tmp_path, lambda: cluster.stop("worker-1"))
        assert [r["drained"] for r in results] == [False, True, False]
        assert cluster.processes["worker-1"].returncode == 0
        assert cluster.status()["workers"]["ready"] == 2
        assert_counts(cluster, results)


def test_sigterm_drains_a_server_without_losing_updates(tmp_path: Path) -> None:
    with dynaps.LocalCluster(servers=3, workers=2, tables=TABLES, num_shards=64) as cluster:
        results = run_while(cluster, tmp_path, lambda: cluster.stop("server-1"))
        assert cluster.processes["server-1"].returncode == 0
        assert len(cluster.status()["shardsPerServer"]) == 2
        assert_counts(cluster, results)


def take_shards(ps: dynaps.PS, num_shards: int, epoch: int, slow: float) -> list[int]:
    taken = []
    try:
        for shard in ps.data_shards(num_shards, epoch):
            taken.append(shard)
            time.sleep(slow)
    except dynaps.Drained:
        pass
    return taken


def test_data_shards_are_leased_once_each_and_survive_a_leaving_worker() -> None:
    with dynaps.LocalCluster(servers=1, workers=3, tables=TABLES) as cluster:
        taken = cluster.run(take_shards, 30, 0, 0.0)
        assert sorted(s for part in taken for s in part) == list(range(30))
        job = cluster.submit(take_shards, 60, 1, 0.05)
        time.sleep(0.4)
        cluster.kill("worker-2")  # its current shard goes back to the queue
        with pytest.raises(dynaps.ClusterError, match="rank 2"):
            job.result(timeout=60)
        survivors = list(job._results.values())  # the two that finished
        assert len(survivors) == 2
        covered = [s for part in survivors for s in part]
        assert len(covered) == len(set(covered)), "no shard was leased twice"
        # every shard was finished by someone: the killed worker's open one was taken over
        assert cluster.status()["dataShards"]["1"] == {"shards": 60, "done": 60, "held": 0, "free": 0}
