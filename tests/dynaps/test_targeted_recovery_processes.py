"""Targeted recovery with real processes: a lost server's new homes ask only the possible holders.

A worker that localized keys of the lost server's shards keeps them through the rebuild, and
every acknowledged increment survives; the worker that holds nothing is never asked
(its node's ``owners_queries`` counter stays 0).  The in-process model of the same
protocol, with the races, is tests/dynaps/test_targeted_recovery.py.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

import dynaps
from tests.dynaps.test_faults import NUM_KEYS, TABLES, homes

pytestmark = pytest.mark.integration

ROUNDS = 5


def localize_and_push(ps: dynaps.PS, chosen: list[int], lost: list[int]) -> bool:
    """Rank 0 localizes ``chosen``; both ranks increment every key of ``lost`` ROUNDS times
    (synchronous pushes: each acknowledged when it returns)."""
    W = ps.table("W")
    if ps.rank == 0:
        W.localize(np.asarray(chosen))
    ps.barrier()
    keys = np.asarray(lost)
    for _ in range(ROUNDS):
        W.push(keys, np.ones((len(keys), 2)))
    ps.barrier()
    return bool(W.local_mask(np.asarray(chosen)).all())


def after_the_loss(ps: dynaps.PS, chosen: list[int]) -> dict[str, Any]:
    W = ps.table("W")
    return {
        "local": bool(W.local_mask(np.asarray(chosen)).all()),
        "values": W.pull(np.arange(NUM_KEYS))[:, 0],
        "stats": ps.node_stats(),
    }


def test_a_rebuild_keeps_a_holders_keys_and_asks_no_other_worker() -> None:
    with dynaps.LocalCluster(servers=3, workers=2, tables=TABLES, replication=1, num_shards=32) as cluster:
        lost = homes(cluster, "server-1")
        assert len(lost) > 20
        chosen = [int(k) for k in lost[:20]]
        local = cluster.run(localize_and_push, chosen, [int(k) for k in lost])
        assert local[0], "rank 0 holds the keys it localized"
        started = cluster.status()["recoveriesStarted"]
        cluster.kill("server-1")
        deadline = time.monotonic() + 60
        while True:  # until the coordinator ordered the rebuilds and they all reported back
            status = cluster.status()
            if status["recoveriesStarted"] > started and status["recoveriesInFlight"] == 0:
                break
            assert time.monotonic() < deadline, f"no rebuild finished: {status}"
            time.sleep(0.05)
        holder, idle = cluster.run(after_the_loss, chosen)
        assert holder["local"], "the holder keeps the keys it localized through the rebuild"
        expected = np.zeros(NUM_KEYS)
        expected[lost] = 2 * ROUNDS  # every acknowledged increment, once
        np.testing.assert_array_equal(holder["values"], expected)
        np.testing.assert_array_equal(idle["values"], expected)
        assert holder["stats"].get("owners_queries", 0) >= 1, "the holder was asked"
        assert idle["stats"].get("owners_queries", 0) == 0, "a worker that holds nothing is not asked"
