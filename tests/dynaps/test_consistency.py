"""Consistency models, checked on histories of real processes (docs/consistency.md).

Every worker keeps a counter (key = its rank) and adds 1 to it once in each clock, at the
end of the clock; the slow worker sleeps first.  A worker at clock c then knows how many
clocks each other worker finished *and made visible*: under staleness s, its pull must find
every other counter at c - s or more (the updates of clocks 0 .. c - s - 1).  The same
workload under asp, where clock() does not wait, breaks that bound by far: the test can fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

import dynaps
from dynaps.wire import control
from dynaps.wire.protocol import MsgType, client_of
from tests.dynaps.test_coordinator_core import Job

pytestmark = pytest.mark.integration

WORKERS = 3
CLOCKS = 8
SLOW = 0  # the slow worker's rank
PAUSE = 0.25  # seconds the slow worker sleeps in each clock
ASYNC_KEYS = 20_000  # pushes big enough to be in flight when clock() is called

Record = tuple[int, list[float]]  # (the clock a pull was made at, every worker's counter)


def counters_history(ps: dynaps.PS, clocks: int, slow: int, pause: float) -> list[Record]:
    """Run ``clocks`` clocks; record what each pull saw of every worker's counter."""
    counters = ps.table("H")
    everyone = np.arange(counters.num_keys)
    mine = np.array([ps.rank])
    one = np.ones((1, 1), dtype=np.float32)
    history: list[Record] = []
    # all start together: a worker started late on a loaded machine found the others done
    # with every clock before its first pull, and the histories showed no lag at all
    ps.barrier()
    for c in range(clocks):
        history.append((c, counters.pull(everyone)[:, 0].tolist()))
        if ps.rank == slow:
            time.sleep(pause)
        counters.push(mine, one)  # this clock's update, the last thing the clock does
        assert ps.clock() == c + 1
    history.append((clocks, counters.pull(everyone)[:, 0].tolist()))
    return history


def lag_of(history: list[Record], me: int, other: int) -> int:
    """How many clocks ``other``'s visible updates trailed ``me``'s clock, at worst.

    A worker at clock c that sees v of ``other``'s updates misses those of clocks v .. c-1:
    the lag is c - v, and bounded staleness s promises c - v <= s.
    """
    return max(c - int(seen[other]) for c, seen in history)


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[str, dynaps.LocalCluster]]:
    """One job per consistency model, made when a test first asks for it."""
    made: dict[str, dynaps.LocalCluster] = {}
    yield made
    for cluster in made.values():
        cluster.close()


def cluster_for(made: dict[str, dynaps.LocalCluster], model: str, staleness: int) -> dynaps.LocalCluster:
    name = f"{model}{staleness}"
    if name not in made:
        tables = {
            "H": dynaps.TableSpec(num_keys=WORKERS, dim=1),
            "A": dynaps.TableSpec(num_keys=ASYNC_KEYS, dim=4),
        }
        made[name] = dynaps.LocalCluster(
            servers=1, workers=WORKERS, tables=tables, consistency=model, staleness=staleness
        )
    return made[name]


@pytest.mark.parametrize(("model", "staleness"), [("bsp", 0), ("ssp", 1), ("ssp", 2)])
def test_a_pull_at_clock_c_sees_every_update_of_clocks_up_to_c_minus_s_minus_1(
    clusters: dict[str, dynaps.LocalCluster], model: str, staleness: int
) -> None:
    cluster = cluster_for(clusters, model, staleness)
    histories = cluster.run(counters_history, CLOCKS, SLOW, PAUSE)
    for me, history in enumerate(histories):
        assert [c for c, _ in history] == list(range(CLOCKS + 1))
        for c, seen in history:
            assert seen[me] == c, "a worker's pull missed its own earlier pushes"
        for other in range(WORKERS):
            assert lag_of(history, me, other) <= staleness, (me, other, history)
    # The bound is not met by waiting longer than it allows: the fast workers did run
    # ``staleness`` clocks ahead of the slow one (it sleeps ``PAUSE`` in each clock, which
    # is ages next to a fast worker's clock).
    for me in range(WORKERS):
        if me != SLOW:
            assert lag_of(histories[me], me, SLOW) == staleness, histories[me]


def test_under_asp_clock_does_not_wait_for_the_slow_worker(clusters: dict[str, dynaps.LocalCluster]) -> None:
    cluster = cluster_for(clusters, "async", 0)
    histories = cluster.run(counters_history, CLOCKS, SLOW, PAUSE)
    for me in range(WORKERS):
        if me != SLOW:
            # it finished all its clocks while the slow worker was still far behind
            assert lag_of(histories[me], me, SLOW) > 2, histories[me]


def async_pushes_then_clock(ps: dynaps.PS, clocks: int) -> list[tuple[int, float, bool]]:
    """Each clock: pull, push +1 to every key without waiting, clock().  Returns, per clock,
    (the clock, the smallest value pulled, whether the push was complete when clock() returned)."""
    table = ps.table("A")
    keys = np.arange(table.num_keys)
    ones = np.ones((len(keys), table.dim), dtype=np.float32)
    ps.barrier()
    start = ps.clock()  # the clocks other runs on this cluster left behind
    base = float(table.pull(keys).min())
    ps.barrier()  # every worker read ``base`` before anyone pushes
    out = []
    for c in range(start, start + clocks):
        low = float(table.pull(keys).min()) - base
        handle = table.push(keys, ones, wait=False)
        assert isinstance(handle, dynaps.Handle)
        assert ps.clock() == c + 1
        out.append((c - start, low, handle.done()))
    ps.barrier()
    return out


@pytest.mark.parametrize(("model", "staleness"), [("bsp", 0), ("ssp", 1), ("async", 0)])
def test_clock_completes_the_workers_own_asynchronous_pushes(
    clusters: dict[str, dynaps.LocalCluster], model: str, staleness: int
) -> None:
    cluster = cluster_for(clusters, model, staleness)
    results = cluster.run(async_pushes_then_clock, 4)
    for per_clock in results:
        # clock() returned only after the push it followed was applied (under asp too,
        # where clock() sends nothing and would otherwise not even read the reply)
        assert all(done for _, _, done in per_clock)
        if model != "async":
            # and so a worker at clock c sees every worker's asynchronous pushes of the
            # clocks up to c - s - 1, one per worker and clock
            for c, low, _ in per_clock:
                assert low >= WORKERS * max(0, c - staleness), per_clock


# ---------------------------------------------------------------- the coordinator's traffic


@pytest.mark.parametrize("workers", [2, 8, 32])
def test_clock_traffic_is_two_messages_per_worker_and_clock(workers: int) -> None:
    """CLOCK in, CLOCK_MIN out: at most one each per worker and clock, whatever the skew.

    The coordinator keeps one number per worker and publishes the minimum only when it
    moves, so a clock costs O(workers) messages in all, never O(workers^2) or per key.
    """
    job = Job(servers=1, workers=workers, consistency={"model": "ssp", "staleness": 1})
    _, nodes = job.start()
    rng = np.random.default_rng(workers)
    clocks = 20
    reported = dict.fromkeys(nodes, 0)
    sent_in = 0
    while min(reported.values()) < clocks:  # workers advance in a random, skewed order
        node = nodes[int(rng.integers(len(nodes)))]
        if reported[node] < clocks:
            reported[node] += 1
            job.tell(client_of(node), MsgType.CLOCK, {"clock": reported[node]})
            sent_in += 1
    published = job.wire.take(MsgType.CLOCK_MIN)
    assert sent_in == workers * clocks
    assert 0 < len(published) <= workers * clocks
    assert [body["clock"] for _, body in published][-1] == clocks
    # each published minimum goes to each worker once
    by_value: dict[int, list[int]] = {}
    for endpoint, body in published:
        by_value.setdefault(body["clock"], []).append(endpoint)
    assert all(sorted(e) == sorted(client_of(n) for n in nodes) for e in by_value.values())
    assert job.wire.sent == [] or {k for _, k, _ in job.wire.sent} <= {MsgType.CLOCK_MIN}


def test_a_program_joining_a_running_job_starts_at_the_slowest_workers_clock() -> None:
    job = Job(servers=1, workers=2, consistency={"model": "bsp"})
    _, (w1, w2) = job.start()
    for clock in (1, 2, 3):
        job.tell(client_of(w1), MsgType.CLOCK, {"clock": clock})
        job.tell(client_of(w2), MsgType.CLOCK, {"clock": clock})
    assert job.wire.take(MsgType.CLOCK_MIN)[-1][1] == {"clock": 3}
    job.coordinator.run_command("scale", {"workers": 3})
    w3 = job.register("worker", "w2")
    job.tell(w3, MsgType.READY, {"version": 1})
    body = {
        "role": "client",
        "address": "tcp://w2-program",
        "nonce": "client-w2",
        "config_digest": control.config_digest(job.config),
        "node": w3,
    }
    job.tell(client_of(w3), MsgType.REGISTER, body)
    [(_, welcome)] = job.wire.take(MsgType.WELCOME)
    assert welcome["clock"] == 3  # the program's clock() will report 4 first
    # the newcomer's first clock() reports 4, not 1: the others' next minimum is 4 at once
    job.tell(client_of(w1), MsgType.CLOCK, {"clock": 4})
    job.tell(client_of(w2), MsgType.CLOCK, {"clock": 4})
    assert job.wire.take(MsgType.CLOCK_MIN) == []  # w3 is in the job, at clock 3
    job.tell(client_of(w3), MsgType.CLOCK, {"clock": 4})
    assert {body["clock"] for _, body in job.wire.take(MsgType.CLOCK_MIN)} == {4}


def clocks_of_a_run(ps: dynaps.PS, clocks: int) -> list[int]:
    return [ps.clock() for _ in range(clocks)]


def test_a_worker_that_joins_under_bsp_takes_up_the_others_clock() -> None:
    """Without it, the newcomer starts at 0 and the others wait for it forever."""
    tables = {"H": dynaps.TableSpec(num_keys=4, dim=1)}
    with dynaps.LocalCluster(servers=1, workers=1, tables=tables, consistency="bsp", request_timeout=20) as c:
        assert c.run(clocks_of_a_run, 5) == [[1, 2, 3, 4, 5]]
        c.scale(workers=2)
        assert c.run(clocks_of_a_run, 2) == [[6, 7], [6, 7]]
