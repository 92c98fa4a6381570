"""Keys a worker holds keep their updates through a scale-out or a drain and that worker's
crash (issue 13, audit F1), with real processes.

Under replication a worker writes the keys it holds back to their homes every flush
interval, and when it dies their homes take them back with the last rows written back: at
most the last flush interval is lost.  A scale-out (a drain) moves shards to the new server
(away from the one that leaves) while the worker holds their keys; the new home must have
the write-back copy (and sync it to its backups), or the keys come back with their initial
values.  The worker here stops
updating a flush interval before the scale-out, so nothing at all may be lost.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

import dynaps

pytestmark = pytest.mark.integration

NUM_KEYS = 1000
TABLES = {"W": dynaps.TableSpec(num_keys=NUM_KEYS, dim=2)}
FLUSH_MS = 50


def hold_and_push(ps: dynaps.PS) -> int:
    """Rank 1 takes every key and adds 1 to each (acknowledged when push() returns), then
    waits until its node has written them back (a flush interval bounds what a crash may
    lose; these must not be lost).  Returns the pushes."""
    if ps.rank != 1:
        return 0
    W = ps.table("W")
    keys = np.arange(NUM_KEYS)
    W.localize(keys)
    assert W.local_mask(keys).all()
    before = ps.node_stats().get("keys_written_back", 0)
    W.push(keys, np.ones((NUM_KEYS, 2)))
    deadline = time.monotonic() + 30
    while ps.node_stats().get("keys_written_back", 0) < before + NUM_KEYS:
        assert time.monotonic() < deadline, "the pushed keys were not written back in 30 s"
        time.sleep(FLUSH_MS / 1000)
    return 1


def read_all(ps: dynaps.PS) -> np.ndarray:
    return ps.table("W").pull(np.arange(NUM_KEYS))[:, 0]


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2)], ids=["scale-out", "drain"])
def test_keys_of_a_crashed_worker_keep_its_updates_after_shards_moved(before: int, after: int) -> None:
    settings: dict[str, Any] = {"replication": 1, "flush_interval_ms": FLUSH_MS, "num_shards": 16}
    with dynaps.LocalCluster(servers=before, workers=2, tables=TABLES, **settings) as cluster:
        pushes = sum(cluster.run(hold_and_push, timeout=60))
        assert pushes == 1
        cluster.scale(servers=after)  # returns once the migrations committed (and a drained server left)
        status = cluster.status()
        assert len(status["shardsPerServer"]) == after
        victim = next(m for m in status["members"] if m["name"] == "worker-1")
        cluster.kill("worker-1")
        deadline = time.monotonic() + 30
        while victim["id"] not in (status := cluster.status())["lost"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        values = cluster.run(read_all, timeout=60)[0]
        lost = np.flatnonzero(values != 1.0)
        assert not len(lost), f"{len(lost)} keys lost their acknowledged increment: {lost[:10].tolist()}"
