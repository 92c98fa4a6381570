"""Shard migration, in-process, under every interleaving Hypothesis finds.

Shards move between three servers (tests/dynaps/simnet.py) while workers push, pull and
localize; the simulated coordinator commits each migration with a new epoch, whose
membership reaches every node and client at a different moment.  At quiescence every
key is owned once, equals the increments pushed, and every request was answered.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dynaps.simnet import NUM_KEYS, SPARE, WORKERS, Cluster

OPS = st.one_of(
    st.tuples(
        st.sampled_from(["push", "pull", "localize", "deliver", "deliver", "deliver", "step", "retire"]),
        st.sampled_from(WORKERS),
        st.lists(st.integers(0, NUM_KEYS - 1), min_size=1, max_size=3),
    ),
    st.tuples(st.just("migrate"), st.integers(0, 3), st.sampled_from([1, 2, SPARE])),
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
        elif op == "retire":
            cluster.retire_spare()
        elif op == "migrate":
            cluster.migrate(a, b)
        else:
            cluster.start(op, a, b)
    cluster.settle(data)
    cluster.check()


def test_a_shard_moves_to_the_spare_server_and_back_and_the_spare_leaves() -> None:
    cluster = Cluster()
    for worker in WORKERS:
        cluster.start("push", worker, [0, 1])
        cluster.settle(None)
    cluster.migrate(0, SPARE)
    cluster.settle(None)
    assert cluster.shard_map.homes[0] == SPARE
    cluster.start("localize", WORKERS[0], [0])
    cluster.settle(None)
    cluster.migrate(0, 1)
    cluster.settle(None)
    cluster.retire_spare()
    for worker in WORKERS:
        cluster.start("push", worker, [0, 1])
        cluster.settle(None)
    cluster.check()
