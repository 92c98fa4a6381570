"""A hung node, with real processes: SIGSTOP a server, then SIGCONT it.

Workers push unit increments synchronously (each acknowledged when ``push`` returns), so
at the end every key must equal the number of acknowledged increments on it:

* without replication the job waits for the stopped server (its keys have no copy)
  and nothing is lost;
* with replication the stopped server is declared lost within seconds, its shards fail
  over to their backups, and once it runs again it learns it was declared lost and exits
  with ``FENCED_EXIT_CODE``; whatever it sent meanwhile changed nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dynaps
from dynaps.contract import FENCED_EXIT_CODE
from tests.dynaps.test_faults import TABLES, push_until, read_all

pytestmark = pytest.mark.integration

STOPPED_SECONDS = 5.0  # longer than the short timeout (3 s at 100 ms heartbeats)


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process is stopped (SIGSTOP) inside the block, and continued after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def await_status(cluster: dynaps.LocalCluster, check: Callable[[dict[str, Any]], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check(cluster.status()):
        assert time.monotonic() < deadline, f"{what}: {cluster.status()}"
        time.sleep(0.05)


def node_id(cluster: dynaps.LocalCluster, name: str) -> int:
    return int(next(m["id"] for m in cluster.status()["members"] if m["name"] == name))


def test_without_replication_a_stopped_server_is_waited_for_and_nothing_is_lost(tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    with dynaps.LocalCluster(servers=2, workers=2, tables=TABLES, num_shards=16) as cluster:
        server = cluster.processes["server-1"]
        me = node_id(cluster, "server-1")
        job = cluster.submit(push_until, str(stop), False)
        time.sleep(0.5)
        stopped_at = time.monotonic()
        with stopped(server.pid):
            await_status(cluster, lambda s: [w["node"] for w in s["waitingFor"]] == [me], "the wait")
            time.sleep(max(0.0, stopped_at + STOPPED_SECONDS - time.monotonic()))
            status = cluster.status()
            assert status["lost"] == [], "declared lost while stopped"
            assert "server-1" in status["waitingFor"][0]["message"]
        await_status(cluster, lambda s: not s["waitingFor"], "the end of the wait")
        stop.touch()
        results = job.result(timeout=120)
        acked = sum(r["acked"] for r in results)
        np.testing.assert_array_equal(cluster.run(read_all)[0], acked)
        assert cluster.status()["lost"] == []
        assert server.poll() is None, "the server serves on"


def test_with_replication_a_stopped_server_is_lost_then_fenced_and_nothing_is_lost(tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    with dynaps.LocalCluster(servers=3, workers=2, tables=TABLES, replication=1, num_shards=32) as cluster:
        server = cluster.processes["server-1"]
        me = node_id(cluster, "server-1")
        job = cluster.submit(push_until, str(stop), False)
        time.sleep(0.5)
        with stopped(server.pid):
            await_status(cluster, lambda s: me in s["lost"], "the stopped server's loss")
            assert cluster.status()["waitingFor"] == []
            time.sleep(1.0)  # training goes on without it
        continued_at = time.monotonic()
        assert server.wait(timeout=10) == FENCED_EXIT_CODE
        fenced_after = time.monotonic() - continued_at
        stop.touch()
        results = job.result(timeout=120)
        acked = sum(r["acked"] for r in results)
        np.testing.assert_array_equal(cluster.run(read_all)[0], acked)
        assert fenced_after < 3.0, f"the fenced server exited {fenced_after:.1f} s after SIGCONT"
