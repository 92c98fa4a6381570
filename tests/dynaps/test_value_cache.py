"""The per-clock value cache (``cache: clock``): repeated pulls of a remote key within one
clock are read from the worker's copy, the worker's own pushes change it as the owner
would (add, set), and ``ps.clock()`` / ``ps.barrier()`` empty it."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import dynaps
from dynaps.client.value_cache import ClockCache
from dynaps.contract import UpdaterSpec
from dynaps.store.updaters import make_updater

KEY = 7
FLAG_START, FLAG_PUSHED = 0, 1
TABLES = {
    "C": dynaps.TableSpec(num_keys=100, dim=2, cache="clock"),
    "G": dynaps.TableSpec(num_keys=100, dim=2, cache="clock", updater={"kind": "sgd", "lr": 0.5}),
    "A": dynaps.TableSpec(num_keys=100, dim=2, cache="clock", updater={"kind": "adagrad", "lr": 0.5}),
    "flags": dynaps.TableSpec(num_keys=2, dim=1),
}


def add_cache(num_keys: int = 50) -> ClockCache:
    return ClockCache(num_keys, 2, np.dtype(np.float32), make_updater(UpdaterSpec()))


def test_the_cache_keeps_rows_until_cleared_and_applies_adds() -> None:
    cache = add_cache()
    # a key repeated in a pull comes back with the same row each time
    cache.insert(np.asarray([3, 9, 3]), np.asarray([[1, 1], [2, 2], [1, 1]], dtype=np.float32))
    hit, rows = cache.lookup(np.asarray([9, 4, 3]))
    assert hit.tolist() == [True, False, True]
    np.testing.assert_array_equal(rows, [[2, 2], [1, 1]])
    cache.pushed(np.asarray([3, 3, 4]), np.ones((3, 2), dtype=np.float32))
    np.testing.assert_array_equal(cache.lookup(np.asarray([3]))[1], [[3, 3]])  # both adds
    cache.assigned(np.asarray([9]), np.asarray([[0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(cache.lookup(np.asarray([9]))[1], [[0, 0]])
    cache.insert(np.arange(10, 50), np.zeros((40, 2), dtype=np.float32))  # grows past its first size
    assert len(cache) == 42
    cache.clear()
    assert len(cache) == 0
    assert not cache.lookup(np.arange(50))[0].any()


def test_a_stateful_updater_drops_pushed_keys_from_the_cache() -> None:
    cache = ClockCache(10, 1, np.dtype(np.float64), None)
    cache.insert(np.asarray([1, 2]), np.asarray([[4.0], [5.0]]))
    cache.pushed(np.asarray([1]), np.asarray([[1.0]]))
    assert cache.lookup(np.asarray([1, 2]))[0].tolist() == [False, True]


def test_a_fetch_that_crossed_a_push_or_a_clock_is_not_cached() -> None:
    cache = add_cache()
    first = cache.begin_fetch()
    second = cache.begin_fetch()
    cache.pushed(np.asarray([5]), np.ones((1, 2), dtype=np.float32))  # while both are in flight
    cache.fetched(first, np.asarray([5, 6]), np.zeros((2, 2), dtype=np.float32))
    assert cache.lookup(np.asarray([5, 6]))[0].tolist() == [False, True]
    cache.fetched(second, np.asarray([5]), np.zeros((1, 2), dtype=np.float32))
    assert not cache.lookup(np.asarray([5]))[0].any()  # still without the push
    cache.fetched(cache.begin_fetch(), np.asarray([5]), np.ones((1, 2), dtype=np.float32))
    assert cache.lookup(np.asarray([5]))[0].all()  # fetched after the push: cached
    stale = cache.begin_fetch()
    cache.clear()
    cache.fetched(stale, np.asarray([7]), np.zeros((1, 2), dtype=np.float32))
    assert len(cache) == 0


def _wait_for_flag(ps: dynaps.PS, flag: int) -> None:
    flags = ps.table("flags")
    deadline = time.monotonic() + 30
    while flags.pull([flag])[0, 0] < 1:
        assert time.monotonic() < deadline, f"flag {flag} never set"
        time.sleep(0.01)


def cached_reader_and_pusher(ps: dynaps.PS) -> dict[str, Any]:
    """Rank 0 reads key 7 twice in one clock around rank 1's push; rank 1 pushes."""
    C, G, A, flags = ps.table("C"), ps.table("G"), ps.table("A"), ps.table("flags")
    ps.barrier()
    if ps.rank == 1:
        _wait_for_flag(ps, FLAG_START)
        C.push([KEY], np.ones((1, 2)))
        flags.push([FLAG_PUSHED], np.ones((1, 1)))
        ps.barrier()
        return {}
    seen: dict[str, Any] = {}
    before = ps.stats()
    seen["first"] = C.pull([KEY])[0, 0]
    flags.push([FLAG_START], np.ones((1, 1)))
    _wait_for_flag(ps, FLAG_PUSHED)  # rank 1's push is applied at the owner
    seen["same_clock"] = C.pull([KEY])[0, 0]
    C.push([KEY], np.full((1, 2), 2.0))
    seen["own_push"] = C.pull(np.asarray([KEY, KEY]))[:, 0].tolist()
    fetched = G.pull([3], wait=False).result()
    assert fetched is not None
    seen["g_first"] = fetched[0, 0]
    seen["a_first"] = A.pull([3])[0, 0]
    G.push([3], np.ones((1, 2)))  # sgd: the owner subtracts 0.5, and so does the copy
    seen["g_same_clock"] = G.pull([3])[0, 0]
    A.push([3], np.ones((1, 2)))  # adagrad: only the owner can step; the key is fetched again
    seen["a_after_push"] = A.pull([3])[0, 0]
    middle = ps.stats()
    ps.clock()
    seen["next_clock"] = C.pull([KEY])[0, 0]
    seen["g_next_clock"] = G.pull([3])[0, 0]
    after = ps.stats()
    seen["cached"] = middle["keys_pulled_cached"] - before["keys_pulled_cached"]
    seen["fetched_after_clock"] = after["keys_pulled_remote"] - middle["keys_pulled_remote"]
    ps.barrier()
    return seen


def test_a_clock_serves_repeated_pulls_from_the_copy_and_the_next_clock_refetches() -> None:
    with dynaps.LocalCluster(servers=2, workers=2, tables=TABLES, allocation="static") as cluster:
        seen = cluster.run(cached_reader_and_pusher, timeout=120)[0]
    first = seen["first"]
    assert seen["same_clock"] == first, "a pull in the same clock went to the owner"
    assert seen["own_push"] == [first + 2, first + 2], "the worker's own add was not applied to its copy"
    assert seen["g_same_clock"] == seen["g_first"] - 0.5, "the copy missed the worker's own sgd step"
    assert seen["a_after_push"] < seen["a_first"], "an adagrad step was missed: the copy was read"
    assert seen["next_clock"] == first + 3, "the next clock still read the copy"
    assert seen["g_next_clock"] == seen["g_first"] - 0.5
    # read from the copy: C twice (same clock) and twice more (own push), G once
    assert seen["cached"] == 4
    assert seen["fetched_after_clock"] == 2
