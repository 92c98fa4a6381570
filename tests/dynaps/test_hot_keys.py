"""Replicated hot keys (``table.replicate``, dynaps.client.hot_keys) with real processes:
pushes buffered in two workers all reach the owners (exact additive totals), replicas
converge and never go back in time, hot keys are never relocated, clocks flush and refresh
them (bsp), and bad settings are refused with a clear error."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dynaps
from dynaps.apps import kge, w2v
from dynaps.client import hot_keys
from dynaps.client.handles import Handle
from dynaps.errors import UsageError
from dynaps.wire.protocol import MsgType

HOT = np.arange(8)  # hot keys of table H
COLD = np.arange(8, 48)
ROUNDS = 400  # each cold key is pushed ROUNDS / len(COLD) times per worker
TABLES = {
    "H": dynaps.TableSpec(num_keys=64, dim=2, dtype="float64"),
    "C": dynaps.TableSpec(num_keys=16, dim=1, dtype="float64", cache="clock"),
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[dynaps.LocalCluster]:
    with dynaps.LocalCluster(servers=2, workers=2, tables=TABLES, allocation="dynamic") as c:
        yield c


def hammer(ps: dynaps.PS) -> dict[str, Any]:
    """Both workers push to the hot keys and to cold ones, read the hot keys as they go and
    localize both kinds; returns what they read and their counters."""
    table = ps.table("H")
    table.replicate(HOT, sync_ms=2)
    ps.barrier()
    weight = float(ps.rank + 1)
    seen = []
    localized_before = ps.stats()["keys_localized"]
    asked = 0
    for i in range(ROUNDS):
        keys = np.concatenate([HOT, [COLD[i % len(COLD)]]])
        table.push(keys, np.full((len(keys), 2), weight), wait=False)
        if i % 10 == 0:
            seen.append(table.pull(HOT)[:, 0].copy())
            mixed = table.pull(np.concatenate([[COLD[0]], HOT[:3]]), wait=False).result()
            assert mixed is not None
            seen.append(np.concatenate([mixed[1:, 0], seen[-1][3:]]))
        if i % 50 == 0:
            wanted = np.concatenate([HOT, COLD[ps.rank :: 2][:5]])
            table.localize(wanted)
            asked += 5
    localized = ps.stats()["keys_localized"] - localized_before
    stats = table.hot_stats
    ps.barrier()  # flushes what is buffered, then waits for the other worker
    final = table.pull(np.arange(48))[:, 0]
    return {
        "seen": np.asarray(seen).tolist(),
        "final": final.tolist(),
        "localized": localized,
        "asked": asked,
        "stats": stats,
    }


def ownership(ps: dynaps.PS) -> dict[str, Any]:
    """Stop replicating (flushes first), then say which hot keys this node owns."""
    table = ps.table("H")
    table.replicate([])
    return {"hot_owned_here": table.local_mask(HOT).tolist()}


def test_hot_pushes_from_two_workers_all_arrive_and_hot_keys_never_move(
    cluster: dynaps.LocalCluster,
) -> None:
    results = cluster.run(hammer, timeout=180)
    expected_hot = ROUNDS * (1.0 + 2.0)
    expected_cold = ROUNDS / len(COLD) * (1.0 + 2.0)
    for rank, result in enumerate(results):
        final = np.asarray(result["final"])
        # exact totals: nothing buffered was lost or applied twice
        np.testing.assert_array_equal(final[HOT], np.full(len(HOT), expected_hot), err_msg=f"rank {rank}")
        np.testing.assert_array_equal(final[COLD], np.full(len(COLD), expected_cold))
        seen = np.asarray(result["seen"])
        # a replica never goes back in time and never runs ahead of the owners
        assert (np.diff(seen, axis=0) >= 0).all(), f"rank {rank}'s replica went back in time"
        assert (seen <= expected_hot).all()
        assert seen[-1].min() > 0, "the replica was never refreshed during the run"
        # only cold keys were asked to move (each at most once per localize call)
        assert 0 < result["localized"] <= result["asked"]
        stats = result["stats"]
        assert stats["hot_keys"] == len(HOT)
        assert stats["flushes"] >= 1
        assert stats["hot_pushes"] == ROUNDS * len(HOT)
    assert results[0]["final"] == results[1]["final"], "the workers' replicas did not converge"
    for rank, owned in enumerate(cluster.run(ownership, timeout=60)):
        assert not any(owned["hot_owned_here"]), f"worker {rank} took hot keys"


def zero_table(ps: dynaps.PS) -> None:
    if ps.rank == 0:
        ps.table("H").set(np.arange(64), np.zeros((64, 2)))
    ps.barrier()


def replica_after_set_and_sync_push(ps: dynaps.PS) -> dict[str, Any]:
    table = ps.table("H")
    table.replicate(HOT, sync_ms=60_000)  # only clocks, barriers, waits and sets flush
    ps.barrier()
    out: dict[str, Any] = {}
    if ps.rank == 0:
        table.push([50], [[5.0, 5.0]], wait=False)  # cold: unaffected by the replica
        table.push([1], [[3.0, 3.0]], wait=False)  # buffered
        table.set([1, 2], [[10.0, 10.0], [20.0, 20.0]])  # flushes the buffer first: set wins
        out["after_set"] = table.pull([1, 2])[:, 0].tolist()
        table.push([2], [[1.0, 1.0]])  # synchronous: applied at the owner on return
    ps.barrier()
    out["values"] = table.pull([1, 2, 50])[:, 0].tolist()
    try:
        ps.table("C").replicate([1])
    except UsageError as exc:
        out["cache_error"] = str(exc)
    table.replicate([])
    ps.barrier()
    return out


def test_set_and_synchronous_pushes_keep_their_meaning(cluster: dynaps.LocalCluster) -> None:
    cluster.run(zero_table)
    results = cluster.run(replica_after_set_and_sync_push, timeout=60)
    assert results[0]["after_set"] == [10.0, 20.0]
    for result in results:
        assert result["values"] == [10.0, 21.0, 5.0]
        assert "cache: clock" in result["cache_error"]


def bsp_reader(ps: dynaps.PS) -> list[float]:
    """Under bsp a pull at clock c sees every push of clocks < c, hot keys included."""
    table = ps.table("H")
    table.replicate(HOT, sync_ms=60_000)  # no timed flush: the clock alone must do it
    ps.barrier()
    seen = []
    for _ in range(8):
        table.push([0], [[1.0, 1.0]], wait=False)
        ps.clock()
        seen.append(float(table.pull([0])[0, 0]))
    ps.barrier()
    return seen


def test_under_bsp_a_clock_flushes_and_refreshes_hot_keys() -> None:
    with dynaps.LocalCluster(servers=1, workers=2, tables=TABLES, consistency="bsp") as cluster:
        results = cluster.run(bsp_reader, timeout=120)
    for rank, seen in enumerate(results):
        for clock, value in enumerate(seen, start=1):
            assert value >= 2 * clock, f"rank {rank} at clock {clock} read {value}: a push was missing"


def test_the_refresh_after_a_barrier_counts_as_the_timed_sync() -> None:
    """After a clock or a barrier the first read refreshes the replica; the next call must
    not pull every hot key again at once because the last timed sync was long ago (it did:
    about one needless refresh per round of KGE's entity blocks)."""
    pulled: list[int] = []

    def pull(keys: Any, wait: bool) -> Any:
        pulled.append(len(keys))
        return np.zeros((len(keys), 2))

    paths = hot_keys.Paths(
        pull=pull,
        update=lambda kind, keys, rows, wait: None,
        localize=lambda keys, wait: None,
        room=lambda: None,
        done=lambda kind, out: Handle(None, 0, kind, "H", None, out, 0),
        wait=lambda handle: handle.out,
        counters=np.zeros(64, dtype=np.int64),
    )
    hot = hot_keys.HotKeys(paths, HOT, 64, 2, np.dtype(np.float64), sync=10.0)
    hot.pull(HOT, True)  # the first read refreshes (a new replica is stale)
    hot.new_clock()  # a barrier passed...
    hot.last_sync -= 60.0  # ...long after the last timed sync
    hot.pull(HOT[:2], True)  # refreshes: the clock's guarantee
    hot.push(MsgType.PUSH, HOT[:2], np.ones((2, 2)), False)  # buffered; no second refresh
    assert hot.stats["refreshes"] == 2
    assert pulled == [len(HOT)] * 2
    hot.last_sync -= 60.0  # an interval later the timed sync flushes and refreshes again
    hot.pull(HOT[:1], True)
    assert hot.stats["refreshes"] == 3
    assert hot.stats["flushes"] == 1


def push_hot_until(ps: dynaps.PS, stop_file: str) -> dict[str, Any]:
    """Push to hot keys (asynchronously: acknowledged once buffered) until ``stop_file``
    exists or this worker drains; nothing flushes on a timer (sync_ms is a minute).
    ``<stop_file>.<rank>`` says that this worker has pushed."""
    table = ps.table("H")
    table.replicate(HOT, sync_ms=60_000)
    acked = np.zeros(len(HOT))
    rounds, drained = 0, False
    try:
        while not os.path.exists(stop_file) or rounds < 20:
            table.push(HOT, np.ones((len(HOT), 2)), wait=False)
            acked += 1
            rounds += 1
            if rounds == 20:
                Path(f"{stop_file}.{ps.rank}").touch()
            time.sleep(0.001)
    except dynaps.Drained:
        drained = True
    # flushes before returning: a drained worker's are the drain's own (close comes later)
    return {"acked": acked, "drained": drained, "flushes": table.hot_stats["flushes"]}


def read_hot(ps: dynaps.PS) -> list[float]:
    ps.barrier()  # flushes this worker's buffer; the next read refreshes the replica
    values: list[float] = ps.table("H").pull(HOT)[:, 0].tolist()
    return values


def test_a_draining_worker_flushes_its_buffered_hot_pushes(tmp_path: Path) -> None:
    stop_file = str(tmp_path / "stop")
    with dynaps.LocalCluster(servers=2, workers=3, tables=TABLES) as cluster:
        job = cluster.submit(push_hot_until, stop_file)
        deadline = time.monotonic() + 60
        while not all(os.path.exists(f"{stop_file}.{rank}") for rank in range(3)):
            assert time.monotonic() < deadline, "the workers did not start pushing"
            time.sleep(0.02)
        cluster.stop("worker-1")  # its buffer holds pushes that only a flush sends
        Path(stop_file).touch()
        results = job.result(timeout=120)
        assert [r["drained"] for r in results] == [False, True, False]
        assert results[1]["acked"].min() > 0, f"worker 1 drained before it pushed: {results}"
        assert results[1]["flushes"] == 1, "the draining worker did not flush before Drained"
        expected = sum(r["acked"] for r in results)
        for values in cluster.run(read_hot, timeout=60):
            np.testing.assert_array_equal(values, expected)


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ([[1, 2]], "one-dimensional"),
        ([1.5], "integers"),
        ([3, 64], "outside table 'H'"),
        ([-1], "outside table 'H'"),
    ],
)
def test_bad_hot_keys_are_refused(keys: Any, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        hot_keys.hot_key_set(keys, 64, "H")


@pytest.mark.parametrize("sync_ms", [0, -5, 1e9, "soon", None, float("nan")])
def test_bad_sync_intervals_are_refused(sync_ms: Any) -> None:
    with pytest.raises(UsageError, match="sync_ms"):
        hot_keys.sync_seconds(sync_ms, "H")


def test_kge_hot_entities_are_the_most_frequent_and_the_option_is_checked() -> None:
    triples = np.asarray([[0, 0, 1], [0, 1, 2], [3, 0, 0], [2, 1, 1]])
    # degrees: 0 -> 3, 1 -> 2, 2 -> 2, 3 -> 1
    assert kge.hot_entities(triples, 5, 1).tolist() == [0]
    assert kge.hot_entities(triples, 5, 3).tolist() == [0, 1, 2]
    assert kge.hot_entities(triples, 5, 0.4).tolist() == [0, 1]  # 40 % of 5 entities
    assert len(kge.hot_entities(triples, 5, 0)) == 0
    for bad in ("-1", "2.5", "many"):
        with pytest.raises(SystemExit):
            kge.parse(["--hot-keys", bad])


def test_w2v_hot_words_option_takes_auto_a_count_or_a_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    assert w2v.parse([])[0].hot_words is None  # auto: hot_words_expected
    assert w2v.parse(["--hot-words", "auto"])[0].hot_words is None
    assert w2v.parse(["--hot-words", "250"])[0].hot_words == 250
    assert w2v.parse(["--hot-words", "0.1"])[0].hot_words == 0.1
    for bad in ("-1", "2.5", "many"):
        with pytest.raises(SystemExit):
            w2v.parse(["--hot-words", bad])
        assert "--hot-words" in capsys.readouterr().err  # a usage line naming the option
