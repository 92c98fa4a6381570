"""Shard migration, in-process, under every interleaving Hypothesis finds.

Servers join and drain while workers push, pull and localize (tests/dynaps/simnet.py):
the real coordinator decides which shards move where, commits each migration with a new
epoch, whose membership reaches every node and client at a different moment, and a
drained server leaves once its shards moved away.  At quiescence every key is owned
once, equals the increments pushed, and every request was answered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dynaps.simnet import NUM_KEYS, SERVERS, SPARE, WORKERS, Cluster

OPS: st.SearchStrategy[tuple[str, int, list[int]]] = st.one_of(
    st.tuples(
        st.sampled_from(
            ["push", "pull", "localize", "deliver", "deliver", "deliver", "step", "tick", "silence"]
        ),
        st.sampled_from(WORKERS),
        st.lists(st.integers(0, NUM_KEYS - 1), min_size=1, max_size=3),
    ),
    st.tuples(st.sampled_from(["join", "drain"]), st.sampled_from([*SERVERS, SPARE]), st.just([])),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=80), data=st.data())
def test_migrations_keep_every_update_under_any_interleaving(ops: list[Any], data: st.DataObject) -> None:
    cluster = Cluster()
    for op, a, b in ops:
        if op == "deliver":
            busy = sorted(cluster.network.busy())
            if busy:
                cluster.deliver(data.draw(st.sampled_from(busy)))
        elif op == "step":
            cluster.step()
        elif op == "silence":
            cluster.silence()
        elif op == "tick":
            cluster.tick()
        elif op == "join":
            cluster.join_spare()
        elif op == "drain":
            cluster.drain(a)
        else:
            cluster.start(op, a, b)
    cluster.settle(data)
    cluster.check()


def test_a_shard_moves_to_a_server_that_joins_and_back_when_it_drains() -> None:
    cluster = Cluster()
    for worker in WORKERS:
        cluster.start("push", worker, [0, 1, 5])
        cluster.settle(None)
    cluster.join_spare()
    cluster.settle(None)
    assert SPARE in cluster.shard_map.homes
    key = int(np.flatnonzero(cluster.shard_map.home_of(np.arange(NUM_KEYS), NUM_KEYS) == SPARE)[0])
    cluster.start("localize", WORKERS[0], [key])
    cluster.settle(None)
    cluster.drain(SPARE)
    cluster.settle(None)
    assert SPARE not in cluster.shard_map.homes
    assert SPARE in cluster.stopped
    for worker in WORKERS:
        cluster.start("push", worker, [0, 1, key])
        cluster.settle(None)
    cluster.check()
