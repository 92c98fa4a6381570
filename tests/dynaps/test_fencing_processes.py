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
from tests.dynaps.progress_logs import whole_lines
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
        # resumed, it learns at its next heartbeat that it was lost, and exits fenced (about
        # 0.2 s after SIGCONT on a quiet machine; a 3 s bound here failed at 5.3 s with the
        # suite at -n 6 on 2 cores: the wait's timeout is the bound)
        assert server.wait(timeout=10) == FENCED_EXIT_CODE
        stop.touch()
        results = job.result(timeout=120)
        acked = sum(r["acked"] for r in results)
        np.testing.assert_array_equal(cluster.run(read_all)[0], acked)


def push_own_until_refused(ps: dynaps.PS, progress: str, stop_file: str) -> dict[str, Any]:
    """Rank 1 localizes keys 0..49 and adds 1 to each, one ``push_one`` at a time (local:
    acknowledged at once), logging every round, until a call fails or ``stop_file`` exists."""
    W = ps.table("W")
    if ps.rank == 1:
        W.localize(np.arange(OWN_KEYS))
    ps.barrier()
    if ps.rank != 1:
        return {}
    row = np.ones(W.dim, dtype=W.dtype)
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    rounds, error = 0, ""
    try:
        while not os.path.exists(stop_file):
            for key in range(OWN_KEYS):
                W.push_one(key, row)
            rounds += 1
            os.write(fd, f"{rounds} {time.monotonic()}\n".encode())
    except dynaps.ClusterError as exc:
        error = str(exc)
    finally:
        os.close(fd)
    return {"rounds": rounds, "error": error, "failed_at": time.monotonic()}


OWN_KEYS = 50
FLUSH_MS = 50


def test_a_stopped_worker_node_stops_its_program_and_loses_at_most_its_last_flush_interval(
    tmp_path: Path,
) -> None:
    """SIGSTOP a worker's node (not its program) while the program updates keys it holds:
    the program stops applying them at once (they would no longer be written back), gets a
    ClusterError once the coordinator declares its node lost, and the homes take the keys
    back with the last write-back: what it acknowledged and lost spans about one flush
    interval, not the seconds until the loss (issue 13, audit F3)."""
    progress, stop = tmp_path / "progress", tmp_path / "stop"
    with dynaps.LocalCluster(
        servers=2, workers=2, tables=TABLES, replication=1, flush_interval_ms=FLUSH_MS
    ) as cluster:
        node = cluster.processes["worker-1"]
        me = node_id(cluster, "worker-1")
        job = cluster.submit(push_own_until_refused, str(progress), str(stop))
        deadline = time.monotonic() + 30
        while (rounds := _rounds(progress)) == [] or rounds[-1] - rounds[0] < 10 * FLUSH_MS / 1000:
            assert time.monotonic() < deadline, "the program does not push"  # ten flush intervals
            time.sleep(0.05)
        with stopped(node.pid):
            await_status(cluster, lambda s: me in s["lost"], "the stopped worker's loss")
            time.sleep(1.0)
        continued_at = time.monotonic()
        assert node.wait(timeout=10) == FENCED_EXIT_CODE
        deadline = time.monotonic() + 10
        while not job.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.touch()  # unchanged code never tells the program: it would push on for ever
        result = job.result(timeout=30)[1]
        assert "declared lost" in result["error"], result
        assert result["failed_at"] < continued_at, "the program learnt it only from its fenced node"
        cluster.kill("worker-1")  # its program's runner: the node is gone
        values = cluster.run(read_all)[0][:OWN_KEYS]
    rounds = _rounds(progress)
    acknowledged = len(rounds)
    assert result["rounds"] == acknowledged
    assert values.min() > 0, "nothing was written back"
    # a round in progress when the node stopped may be applied in part, and written back unlogged
    assert values.max() <= acknowledged + 1, "nothing is applied twice"
    lost = rounds[int(values.min()) :]  # the acknowledged rounds that some key lacks
    lost_seconds = lost[-1] - lost[0] if lost else 0.0
    # the last flush interval, the bound on the node's silence before the program waits for
    # it (control_block.STALE_SECONDS), and a loaded machine's scheduling (0.5 s)
    assert lost_seconds <= FLUSH_MS / 1000 + 0.25 + 0.5, (acknowledged - int(values.min()), lost_seconds)


def _rounds(progress: Path) -> list[float]:
    """When each logged round was acknowledged (time.monotonic), in order."""
    return [float(t) for _, t in whole_lines(progress)]
