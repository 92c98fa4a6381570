"""Replicas follow membership changes, with real processes (issue 13).

The invariant: workers push unit increments to additive counters; every acknowledged
increment is in the final table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dynaps

pytestmark = pytest.mark.integration

NUM_KEYS = 1000
TABLES = {"W": dynaps.TableSpec(num_keys=NUM_KEYS, dim=2)}


def push_until(ps: dynaps.PS, stop_file: str) -> dict[str, Any]:
    """Unit increments, each acknowledged when push() returns, until ``stop_file`` exists."""
    W = ps.table("W")
    rng = np.random.default_rng(7 + ps.rank)
    acked = np.zeros(NUM_KEYS, dtype=np.int64)
    rounds = 0
    while not os.path.exists(stop_file) or rounds < 20:
        keys = rng.integers(0, NUM_KEYS, size=40)
        W.push(keys, np.ones((40, 2)))
        np.add.at(acked, keys, 1)
        rounds += 1
    return {"acked": acked, "rounds": rounds}


def read_all(ps: dynaps.PS) -> np.ndarray:
    return ps.table("W").pull(np.arange(NUM_KEYS))[:, 0]


def replicas_synced(status: dict[str, Any]) -> bool:
    """Every shard has all its backups synced (before the first shard map there are no shards,
    and ``unsynced`` is 0 too: ``minCopies`` tells them apart)."""
    replication = status["replication"]
    return bool(replication["unsynced"] == 0 and replication.get("minCopies", 0) >= replication["factor"])


def stop_and_count(cluster: dynaps.LocalCluster, job: Any, stop: Path) -> dict[str, Any]:
    """Stop the pushers; the table must hold every acknowledged increment. The status."""
    stop.touch()
    results = job.result(timeout=120)
    acked = sum(r["acked"] for r in results)
    values = cluster.run(read_all)[0]
    lost = int((acked - values).sum())
    assert lost == 0, f"{lost} acknowledged increments lost"
    np.testing.assert_array_equal(values, acked)
    status: dict[str, Any] = cluster.status()
    return status


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2)], ids=["scale-out", "drain"])
def test_a_server_killed_after_a_scale_loses_no_acknowledged_increment(
    tmp_path: Path, before: int, after: int
) -> None:
    stop = tmp_path / "stop"
    settings: dict[str, Any] = {"tables": TABLES, "replication": 1, "num_shards": 32}
    with dynaps.LocalCluster(servers=before, workers=2, **settings) as cluster:
        job = cluster.submit(push_until, str(stop))
        time.sleep(0.3)
        cluster.scale(servers=after)  # returns once the migrations committed (and a drained server left)
        assert len(cluster.status()["shardsPerServer"]) == after
        deadline = time.monotonic() + 30
        while not replicas_synced(status := cluster.status()):  # the new homes synced their backups
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        # a server still in the job (which one drained depends on the order they registered)
        victim = next(m for m in status["members"] if m["role"] == "server")
        cluster.kill(victim["name"])
        time.sleep(0.5)
        status = stop_and_count(cluster, job, stop)
        assert status["lost"] == [victim["id"]]
        assert status["dataLoss"] == []


def push_all(ps: dynaps.PS, times: int) -> None:
    W = ps.table("W")
    for _ in range(times):
        W.push(np.arange(NUM_KEYS), np.ones((NUM_KEYS, 2)))
    ps.barrier()


def test_a_job_restored_from_a_checkpoint_replicates_what_it_restored(tmp_path: Path) -> None:
    with dynaps.LocalCluster(servers=2, workers=1, tables=TABLES, checkpoint_dir=str(tmp_path)) as cluster:
        cluster.run(push_all, 3)
        cluster.checkpoint()
    settings: dict[str, Any] = {"tables": TABLES, "replication": 1, "checkpoint_dir": str(tmp_path)}
    with dynaps.LocalCluster(servers=3, workers=1, restore_from="latest", **settings) as cluster:
        deadline = time.monotonic() + 30
        while not replicas_synced(status := cluster.status()):  # the homes sent what they loaded
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        cluster.kill("server-0")
        values = cluster.run(read_all)[0]
        assert cluster.status()["dataLoss"] == []
        np.testing.assert_array_equal(values, 3.0)


KILL_A_SERVER = """
import numpy as np, psutil, dynaps
ps = dynaps.connect()
if ps.rank == 0:  # this job's server-1: a child of the same `dynaps run` as our worker node
    for proc in psutil.Process().parent().parent().children():
        if proc.environ().get("DYNAPS_NODE_NAME") == "server-1":
            proc.kill()
W = ps.table("W")
for _ in range(20):
    W.push(np.arange(100), np.ones((100, 2)))
ps.barrier()
"""


def test_dynaps_run_prints_the_data_loss(tmp_path: Path) -> None:
    program = tmp_path / "train.py"
    program.write_text(KILL_A_SERVER)
    job = ["--servers", "2", "--workers", "1", "--table", "W:100:2"]
    done = subprocess.run(
        [sys.executable, "-m", "dynaps", "run", *job, "--", sys.executable, str(program)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "job succeeded" in done.stderr
    assert "DATA LOSS: " in done.stderr  # as it happened
    summary = done.stderr[done.stderr.index("job succeeded") :]
    assert "data loss: 1 recovery restored" in summary
    assert "restarted from their initial values (no replica, no checkpoint)" in summary


def test_replication_2_survives_two_servers_killed_at_once(tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    settings: dict[str, Any] = {"tables": TABLES, "replication": 2, "num_shards": 32}
    with dynaps.LocalCluster(servers=4, workers=2, **settings) as cluster:
        job = cluster.submit(push_until, str(stop))
        time.sleep(0.5)
        status = cluster.status()
        assert status["replication"]["minCopies"] == 2, status["replication"]
        servers = sorted((m["id"], m["name"]) for m in status["members"] if m["role"] == "server")
        # Neighbours in id order: the shards homed on the first have the second as their
        # first backup (the first map's chains follow the ids), so both a home and its first
        # backup die, and the second backup takes over.  Each kill is a SIGKILL
        # that returns once the process is gone: both are dead long before the
        # coordinator's grace after a dropped connection ends, as if killed together.
        victims = [name for _, name in servers[:2]]
        for name in victims:
            cluster.kill(name)
        time.sleep(1.0)
        status = stop_and_count(cluster, job, stop)
        assert len(status["lost"]) == 2
        assert status["dataLoss"] == []
        deadline = time.monotonic() + 20
        # the two survivors re-replicate: each shard has one backup again, all there can be
        while (replication := cluster.status()["replication"])["minCopies"] < 1:
            assert time.monotonic() < deadline, replication
            time.sleep(0.05)
