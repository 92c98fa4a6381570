"""Real processes on 127.0.0.1: consistency while keys move, local access, clean shutdown."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import dynaps
from dynaps.contract import THREAD_ENV, thread_env

pytestmark = pytest.mark.integration

NUM_KEYS = 1000


def hammer(ps: dynaps.PS, seed: int, rounds: int, hot: int = 0) -> dict[str, Any]:
    """Push unit increments to random keys, localize random keys, pull; count what was pushed.

    ``hot``: every push and pull draws 32-120 keys from the first ``hot``, so most repeat
    (the client sends a remote key once, its increments summed: key_paths)."""
    rng = np.random.default_rng(seed + ps.rank)
    W = ps.table("W")
    pushed = np.zeros(NUM_KEYS, dtype=np.int64)
    handles = []
    for step in range(rounds):
        if hot:
            keys = rng.integers(0, hot, size=int(rng.integers(32, 120)))
        else:
            keys = rng.integers(0, NUM_KEYS, size=int(rng.integers(1, 40)))
        np.add.at(pushed, keys, 1)
        ones = np.ones((len(keys), W.dim), dtype=np.float32)
        if step % 3 == 0:
            handles.append(W.push(keys, ones, wait=False))
        else:
            W.push(keys, ones)
        if step % 4 == 1:
            W.localize(rng.integers(0, NUM_KEYS, size=int(rng.integers(1, 30))), wait=step % 8 == 1)
        if step % 5 == 2:
            asked = rng.integers(0, hot or NUM_KEYS, size=60 if hot else 20)
            values = W.pull(asked)
            assert values.shape == (len(asked), W.dim)
            first = np.unique(asked, return_index=True)[1]  # each key's repeats read one row
            np.testing.assert_array_equal(values, values[first][np.searchsorted(asked[first], asked)])
    ps.wait_all()
    for handle in handles:
        assert handle.done()
    ps.barrier()
    return {"pushed": pushed, "stats": ps.stats()}


def read_all(ps: dynaps.PS) -> np.ndarray:
    return ps.table("W").pull(np.arange(NUM_KEYS))


def test_no_update_is_lost_or_doubled_while_keys_move(cluster: dynaps.LocalCluster) -> None:
    before = cluster.run(read_all)[0]
    results = cluster.run(hammer, 7, 300)
    pushed = sum(r["pushed"] for r in results)
    assert pushed.sum() > 10_000
    assert sum(r["stats"]["keys_localized"] for r in results) > 500, "keys hardly moved"
    for values in cluster.run(read_all):  # every worker sees the same, complete counts
        np.testing.assert_array_equal(values - before, np.repeat(pushed[:, None], 4, axis=1))


def test_no_update_is_lost_or_doubled_when_pushes_repeat_keys_that_move(
    cluster: dynaps.LocalCluster,
) -> None:
    before = cluster.run(read_all)[0]
    results = cluster.run(hammer, 11, 200, 90)
    pushed = sum(r["pushed"] for r in results)
    assert pushed[:90].min() > 100  # every hot key many times over
    assert sum(r["stats"]["keys_localized"] for r in results) > 300, "keys hardly moved"
    for values in cluster.run(read_all):
        np.testing.assert_array_equal(values - before, np.repeat(pushed[:, None], 4, axis=1))


def one_key_hammer(ps: dynaps.PS, seed: int, rounds: int) -> dict[str, Any]:
    """One key per pull and push (the per-entry path: one-key arrays, and on every other
    step ``pull_one``/``push_one`` with a Python int) while every worker localizes keys:
    each worker adds to its own column; a synchronous push is seen by the next pull.

    Only synchronous pushes count there: an asynchronous one completes in any order
    (docs/consistency.md), and one sent to a key's stale owner is forwarded home and on,
    so a later synchronous push of the key through a shorter path (the key localized to our
    node meanwhile) may be applied and answered first; all of them are in the totals."""
    rng = np.random.default_rng(seed + ps.rank)
    W = ps.table("W")
    column = ps.rank % W.dim
    start = W.pull(np.arange(NUM_KEYS))[:, column]
    pushed = np.zeros(NUM_KEYS, dtype=np.int64)
    synced = np.zeros(NUM_KEYS, dtype=np.int64)  # synchronous pushes, each applied when it returned
    update = np.zeros((1, W.dim), dtype=np.float32)
    update[0, column] = 1
    for step in range(rounds):
        key = np.array([rng.integers(0, NUM_KEYS // 10)])  # a small range: keys are shared and move
        wait = step % 3 != 0
        if wait and step % 2:
            W.push_one(int(key[0]), update[0])
        else:
            W.push(key, update, wait=wait)
        pushed[key] += 1
        if wait:
            synced[key] += 1
        if step % 8 == 1:
            W.localize(rng.integers(0, NUM_KEYS // 10, size=10), wait=step % 16 == 1)
        row = W.pull_one(int(key[0])) if step % 2 else W.pull(key)[0]
        seen = row[column] - start[key[0]]
        assert seen >= synced[key[0]], "a one-key pull missed this worker's acknowledged push"
    ps.wait_all()
    ps.barrier()
    return {"pushed": pushed, "column": column, "stats": ps.stats()}


def test_one_key_calls_lose_no_update_and_read_own_writes_while_keys_move(
    cluster: dynaps.LocalCluster,
) -> None:
    before = cluster.run(read_all)[0]
    results = cluster.run(one_key_hammer, 11, 1200)
    assert sum(r["stats"]["keys_localized"] for r in results) > 100, "keys hardly moved"
    assert min(r["stats"]["keys_pushed_local"] for r in results) > 100, "no one-key push was local"
    assert sum(r["stats"]["keys_pushed_remote"] for r in results) > 100, "no one-key push was remote"
    for values in cluster.run(read_all):
        for r in results:
            np.testing.assert_array_equal(values[:, r["column"]] - before[:, r["column"]], r["pushed"])


def own_writes_and_monotonic_reads(ps: dynaps.PS, rounds: int) -> int:
    """Each worker increments its own column; its synchronous reads see them, in order."""
    W = ps.table("W")
    rng = np.random.default_rng(ps.rank)
    keys = np.arange(0, 50)
    mine = np.zeros(50)
    last = W.pull(keys)
    column = ps.rank % W.dim
    update = np.zeros((len(keys), W.dim), dtype=np.float32)
    update[:, column] = 1
    checks = 0
    for _ in range(rounds):
        W.push(keys, update)
        mine += 1
        if rng.random() < 0.5:
            W.localize(rng.choice(keys, size=10, replace=False))
        now = W.pull(keys)
        assert (now >= last).all(), "a synchronous pull went backwards"
        assert (now[:, column] >= mine).all(), "a pull missed this worker's own earlier push"
        last = now
        checks += 1
    ps.barrier()
    return checks


def test_pulls_are_monotonic_and_read_own_writes_while_keys_move() -> None:
    tables = {"W": dynaps.TableSpec(num_keys=100, dim=4)}
    with dynaps.LocalCluster(servers=1, workers=3, tables=tables) as cluster:
        assert cluster.run(own_writes_and_monotonic_reads, 150) == [150, 150, 150]
        final = cluster.run(pull_first_keys)[0]
        # worker ranks 0..2 each pushed 150 to their own column on keys 0..49
        np.testing.assert_array_equal(final[:, :3], np.full((50, 3), 150.0))


def pull_first_keys(ps: dynaps.PS) -> np.ndarray:
    return ps.table("W").pull(np.arange(50))


def localized_pulls_are_local(ps: dynaps.PS) -> dict[str, Any]:
    W = ps.table("W")
    keys = np.arange(200 * ps.rank, 200 * ps.rank + 100)
    W.localize(keys)
    ps.barrier()  # every worker's keys have arrived: no relocation traffic from here on
    node_before = ps.node_stats()
    client_before = ps.stats()
    for _ in range(20):
        W.pull(keys)
        W.push(keys, np.ones((len(keys), W.dim)))
    client_after = ps.stats()
    node_after = ps.node_stats()
    ps.barrier()
    return {
        "remote": client_after["keys_pulled_remote"] - client_before["keys_pulled_remote"],
        "local": client_after["keys_pulled_local"] - client_before["keys_pulled_local"],
        "pushed_remote": client_after["keys_pushed_remote"] - client_before["keys_pushed_remote"],
        "node_messages": node_after["messages"] - node_before["messages"],
        "owned": node_after["owned_keys"],
    }


def test_pulls_after_localize_are_served_locally(cluster: dynaps.LocalCluster) -> None:
    for result in cluster.run(localized_pulls_are_local):
        assert result["remote"] == 0
        assert result["pushed_remote"] == 0
        assert result["local"] == 2000
        assert result["owned"] >= 100
        # only the STATS request itself reached the node: no data message
        assert result["node_messages"] == 1


def test_errors_name_the_problem(cluster: dynaps.LocalCluster) -> None:
    messages = cluster.run(misuse)[0]
    assert "no table named 'missing'" in messages["table"]
    assert "outside table 'W'" in messages["range"]
    assert "shape (2, 4)" in messages["shape"]
    assert "must be numbers" in messages["dtype"]
    assert "must be integers" in messages["keytype"]


def misuse(ps: dynaps.PS) -> dict[str, str]:
    W = ps.table("W")
    found = {}
    attempts: dict[str, Callable[[], object]] = {
        "table": lambda: ps.table("missing"),
        "range": lambda: W.pull([0, 1, NUM_KEYS]),
        "shape": lambda: W.push([0, 1], np.ones((3, 4))),
        "dtype": lambda: W.push([0], np.array([["a", "b", "c", "d"]])),
        "keytype": lambda: W.pull([0.5]),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except dynaps.UsageError as exc:
            found[name] = str(exc)
    return found


def test_connect_outside_dynaps_explains_how_to_start() -> None:
    os.environ.pop("DYNAPS_ATTACH", None)
    with pytest.raises(dynaps.NotConnectedError, match="dynaps run"):
        dynaps.connect()


def failing(ps: dynaps.PS) -> None:
    if ps.rank == 1:
        raise RuntimeError("boom in rank 1")


def test_an_exception_in_a_worker_is_reported_with_its_rank(cluster: dynaps.LocalCluster) -> None:
    with pytest.raises(dynaps.ClusterError, match="rank 1") as info:
        cluster.run(failing)
    assert "boom in rank 1" in str(info.value)
    assert cluster.run(read_all)[0].shape == (NUM_KEYS, 4), "the cluster keeps working"


def failing_with_a_log_line(ps: dynaps.PS) -> None:
    logging.getLogger("dynaps.tests").warning("rank %d was here", ps.rank)
    if ps.rank == 1:
        raise RuntimeError("boom in rank 1")


def test_a_cluster_with_a_log_dir_keeps_each_process_s_log_there(cluster: dynaps.LocalCluster) -> None:
    assert cluster.log_dir is not None  # the module's cluster (tests/dynaps/conftest.py)
    with pytest.raises(dynaps.ClusterError, match="rank 1") as info:
        cluster.run(failing_with_a_log_line)
    assert f"the processes' logs: {cluster.log_dir}" in str(info.value)
    logs = Path(cluster.log_dir)
    names = {path.name for path in logs.glob("*.log")}
    assert {"coordinator.log", "server-0.log", "server-1.log", "worker-2.log", "runner-worker-2.log"} <= names
    for rank in range(3):
        assert f"rank {rank} was here" in (logs / f"runner-worker-{rank}.log").read_text()


def failing_in_turn(ps: dynaps.PS) -> None:
    if ps.rank == 2:
        raise RuntimeError("first: rank 2")
    if ps.rank == 0:
        time.sleep(1.0)  # after rank 2's error has come
        raise RuntimeError("later: rank 0")


def test_every_failed_rank_is_reported_first_to_last(cluster: dynaps.LocalCluster) -> None:
    """The first error is usually the cause (the others may be barriers it left waiting)."""
    with pytest.raises(dynaps.ClusterError, match=r"rank\(s\) 2, 0, first to last") as info:
        cluster.run(failing_in_turn)
    text = str(info.value)
    assert text.index("first: rank 2") < text.index("later: rank 0")


def test_shutdown_leaves_no_process_and_releases_every_port() -> None:
    tables = {"W": dynaps.TableSpec(num_keys=100, dim=2)}
    cluster = dynaps.LocalCluster(servers=2, workers=2, tables=tables)
    pids = cluster.pids()
    assert len(pids) == 7  # coordinator, 2 servers, 2 worker nodes, 2 runners
    ports = {
        conn.laddr.port
        for pid in pids.values()
        for conn in psutil.Process(pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }
    assert len(ports) >= 6
    cluster.run(read_all_small)
    started = time.monotonic()
    cluster.close()
    assert time.monotonic() - started < 10
    for name, pid in pids.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
    listening = {
        c.laddr.port
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr
    }
    assert not ports & listening, f"ports still bound: {ports & listening}"


UNGUARDED_SCRIPT = """
import dynaps

cluster = dynaps.LocalCluster(servers=1, workers=1, tables={"W": dynaps.TableSpec(num_keys=10, dim=2)})
cluster.close()
"""


def live_processes_of_group(pgid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):  # gone meanwhile
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def test_a_script_that_builds_a_cluster_without_a_main_guard_is_told_to_add_one(tmp_path: Path) -> None:
    """Runners are spawned: each imports the main script again, builds a cluster of its own
    there and dies before it joins.  The script gets a ClusterError that says so and how to
    fix it, not a bare EOFError, and leaves no process behind."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    runtime = str(Path(dynaps.__file__).parents[1])
    path = os.pathsep.join(p for p in (runtime, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: everything it starts is found and stopped
    )
    try:
        _, stderr = proc.communicate(timeout=120)
        deadline = time.monotonic() + 10  # multiprocessing's resource tracker ends just after it
        while (left := live_processes_of_group(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if proc.poll() is None:  # it hung: it still leads its group, whose id is its pid
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        for leftover in live_processes_of_group(proc.pid):
            with contextlib.suppress(psutil.Error):  # psutil signals only the process it found
                leftover.kill()
    assert proc.returncode == 1, stderr
    assert "ClusterError: worker-0: its runner process exited before joining the job (exit code 1)" in stderr
    assert 'guard its entry point with `if __name__ == "__main__":`' in stderr
    assert "EOFError" not in stderr
    assert not left, f"processes left behind: {left}"


def read_all_small(ps: dynaps.PS) -> np.ndarray:
    return ps.table("W").pull(np.arange(100))


def localize_from_another_worker(ps: dynaps.PS) -> dict[str, Any]:
    """Each worker takes a block, then the next worker's block (so its keys must move)."""
    W = ps.table("W")
    block = 40

    def keys_of(rank: int) -> np.ndarray:
        return np.arange(700 + block * rank, 700 + block * (rank + 1))

    # Both blocks once first: a program's first localize of a shard waits for the coordinator to
    # note it (HOLDING, dynaps.client.holdings), a message this test does not count.
    W.localize(keys_of((ps.rank + 1) % ps.num_workers))
    ps.barrier()
    W.localize(keys_of(ps.rank))
    ps.barrier()
    before_node = ps.node_stats()
    before = ps.stats()
    W.localize(keys_of((ps.rank + 1) % ps.num_workers))
    after = ps.stats()
    after_node = ps.node_stats()
    values = W.pull(keys_of((ps.rank + 1) % ps.num_workers))
    ps.barrier()
    return {
        "received": after_node["keys_received"] - before_node["keys_received"],
        "notices": after_node.get("localized_notices", 0) - before_node.get("localized_notices", 0),
        "messages": after["messages_received"] - before["messages_received"],
        "remote": ps.stats()["keys_pulled_remote"] - after["keys_pulled_remote"],
        "rows": len(values),
    }


def test_a_localize_completes_through_the_memory_the_node_shares(cluster: dynaps.LocalCluster) -> None:
    """The node tells its training process that the keys arrived without a message
    (dynaps.store.notices); the keys are local once localize returns."""
    for result in cluster.run(localize_from_another_worker):
        assert result["received"] == 40
        assert result["notices"] >= 1
        assert result["messages"] == 0  # no LOCALIZED message reached the training process
        assert result["remote"] == 0
        assert result["rows"] == 40


def diverging(ps: dynaps.PS) -> None:
    if ps.rank == 1:
        raise dynaps.UsageError("training diverged: lower --lr")
    if ps.rank == 0:
        time.sleep(1.0)  # after rank 1's error has come
        raise RuntimeError("a consequence in rank 0")


def test_a_usage_error_in_a_worker_comes_back_as_one(cluster: dynaps.LocalCluster) -> None:
    """The caller's mistake, met in a worker: its message and rank, not a ClusterError of tracebacks."""
    with pytest.raises(dynaps.UsageError) as info:
        cluster.run(diverging)
    assert str(info.value) == "worker rank 1: training diverged: lower --lr"
    assert cluster.run(read_all)[0].shape == (NUM_KEYS, 4), "the cluster keeps working"


def reporting_a_diverged_loss(ps: dynaps.PS) -> None:
    if ps.rank == 0:
        ps.report(loss=float("nan"), rmse=float("inf"), seen_epoch=3.25)
    ps.barrier()  # the report reached the coordinator before the barrier's answer


def test_a_report_keeps_its_finite_values_and_leaves_out_the_rest(cluster: dynaps.LocalCluster) -> None:
    """NaN has no JSON form: sent, it made the coordinator drop the whole report as malformed."""
    cluster.run(reporting_a_diverged_loss)
    reported = cluster.status()["metricsByRank"]["0"]
    assert reported["seen_epoch"] == 3.25
    assert "loss" not in reported
    assert "rmse" not in reported


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"servers": 0}, "LocalCluster: servers: Input should be greater than or equal to 1"),
        ({"workers": -1}, "LocalCluster: workers: Input should be greater than or equal to 1"),
        ({"allocation": "bogus"}, "LocalCluster: 'bogus' is not a valid Allocation"),
        ({"servers": True}, "LocalCluster: servers takes a whole number, got True"),
        ({"workers": "2"}, "LocalCluster: workers takes a whole number, got '2'"),
        ({"staleness": 2.0}, "LocalCluster: staleness takes a whole number, got 2.0"),
        (
            {"tables": {"W": {"num_keys": True, "dim": 2}}},
            "LocalCluster: table 'W': num_keys: a whole number, not True",
        ),
        (
            {"tables": {"W": {"num_keys": 10, "dim": "4"}}},
            "LocalCluster: table 'W': dim: a whole number, not '4'",
        ),
        ({"tables": {"W": {"num_keys": 10}}}, "LocalCluster: table 'W': dim: Field required"),
        (
            {"tables": [dynaps.TableSpec(num_keys=10, dim=2)]},
            "LocalCluster needs tables={name: dynaps.TableSpec(num_keys=..., dim=...)}",
        ),
    ],
)
def test_a_wrong_cluster_argument_is_a_config_error_naming_it(
    arguments: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was pydantic's ValidationError, a ValueError or an AttributeError (a table given as
    a mapping), and the checkpoint folder made for the cluster stayed behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    given = {"servers": 1, "workers": 1, "tables": {"W": dynaps.TableSpec(num_keys=10, dim=2)}, **arguments}
    with pytest.raises(dynaps.ConfigError) as info:
        dynaps.LocalCluster(**given)
    assert str(info.value) == message
    assert list(tmp_path.iterdir()) == []


def asking_wrongly(ps: dynaps.PS) -> list[str]:
    """What each wrong question is told (none may be a TypeError or a 30 s timeout)."""
    told = []
    for question in (
        lambda: ps.node_stats(99),  # no such node: asked of no one, it only timed out
        lambda: next(ps.data_shards("3")),  # type: ignore[arg-type]
        lambda: next(ps.data_shards(4, epoch=-1)),
    ):
        try:
            question()
        except dynaps.UsageError as exc:
            told.append(str(exc))
    return told


def test_wrong_questions_of_the_job_are_usage_errors(cluster: dynaps.LocalCluster) -> None:
    started = time.monotonic()
    assert cluster.run(asking_wrongly)[0] == [
        "node 99 is not a member of this job",
        "data_shards needs a whole number of shards >= 1, got '3'",
        "data_shards needs a whole epoch >= 0, got -1",
    ]
    assert time.monotonic() - started < 10


def test_run_and_scale_check_their_arguments(cluster: dynaps.LocalCluster) -> None:
    with pytest.raises(dynaps.UsageError, match="takes a function fn"):
        cluster.run("train")  # type: ignore[arg-type]
    # a runner is another process: a lambda or an argument that does not pickle cannot reach
    # it (pickle's own error, raised half-way through sending, was the message)
    cannot_send = r"cannot send .*pass a function defined at the top level of a module"
    with pytest.raises(dynaps.UsageError, match=cannot_send):
        cluster.run(lambda ps: ps.rank)
    with pytest.raises(dynaps.UsageError, match=cannot_send):
        cluster.run(read_all, threading.Lock())
    for count in (0, -1, True, 2.0):
        with pytest.raises(dynaps.UsageError, match=r"scale\(workers=\.\.\.\) takes a whole number"):
            cluster.scale(workers=count)  # type: ignore[arg-type]
    assert cluster.run(read_all)[0].shape == (NUM_KEYS, 4), "the cluster keeps working"


def test_a_node_that_exits_at_start_ends_the_wait_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node refuses a bad variable at start: the cluster waited its whole start-up
    timeout for runners that could never join, then 15 s more to stop them."""
    monkeypatch.setenv("DYNAPS_SPIN_MICROS", "many")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ended = r"its node process exited \(exit code 2\) before the job started"
    with pytest.raises(dynaps.ClusterError, match=ended):
        dynaps.LocalCluster(tables={"W": dynaps.TableSpec(num_keys=10, dim=2)}, startup_timeout=600)
    left = [
        p.cmdline()
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and "multiprocessing.resource_tracker" not in " ".join(p.cmdline())
    ]  # the tracker multiprocessing starts once serves this process for its whole life
    assert not left


def numeric_thread_settings(ps: dynaps.PS) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in THREAD_ENV}


def test_each_process_may_start_its_share_of_the_cpus_in_numeric_threads(
    cluster: dynaps.LocalCluster,
) -> None:
    ours = {name: os.environ.get(name) for name in THREAD_ENV}
    share = str(max(1, len(os.sched_getaffinity(0)) // 3))  # the module's cluster has 3 workers
    user_chose = any(value is not None for value in ours.values())
    assert (
        cluster.run(numeric_thread_settings) == [ours if user_chose else dict.fromkeys(THREAD_ENV, share)] * 3
    )
    for name, pid in cluster.pids().items():
        pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
        environ = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        given = {key: environ.get(key) for key in THREAD_ENV}
        if user_chose:
            assert given == ours, name
        else:  # a worker node hands its environment to the program `dynaps run` starts
            assert given == dict.fromkeys(
                THREAD_ENV, share if name.startswith(("worker", "runner")) else "1"
            ), name
    assert {name: os.environ.get(name) for name in THREAD_ENV} == ours  # ours as it was


def test_a_thread_count_set_by_the_user_is_left_as_it_is() -> None:
    assert thread_env(4, {}) == dict.fromkeys(THREAD_ENV, "4")
    assert thread_env(0, {}) == dict.fromkeys(THREAD_ENV, "1")
    assert thread_env(4, {"MKL_NUM_THREADS": "8"}) == {}
