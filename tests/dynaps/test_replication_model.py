"""Replication and crash recovery, in-process, under every interleaving Hypothesis finds.

Three servers home shards with backups; a server dies at a random moment (what it had
already sent arrives, or not).  The real coordinator (tests/dynaps/simnet.py) sees its
connection drop and declares it lost; its backups take over and rebuild the directory,
clients send unanswered requests again, and once the shards are rebuilt the coordinator
rebalances them over the servers left (a migration, while time passes).  The relocation
fence that follows a loss (``dynaps.node.departures``) is wall time, so it may end with
any message still in flight: it is lifted at random moments (``lift``).  At quiescence
every key equals exactly the increments pushed: no acknowledged update lost, none
applied twice.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynaps.wire.protocol import client_of
from tests.dynaps.simnet import NUM_KEYS, SERVERS, SPARE, WORKERS, Cluster, rebalanced_after_a_loss

OPS = st.one_of(
    st.tuples(
        st.sampled_from(
            ["push", "push", "pull", "localize", *["deliver"] * 3, "flush", "tick", "silence", "lift"]
        ),
        st.sampled_from(WORKERS),
        st.lists(st.integers(0, NUM_KEYS - 1), min_size=1, max_size=NUM_KEYS),
    ),
    st.tuples(st.just("kill"), st.sampled_from([*SERVERS, SPARE]), st.booleans()),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=80), data=st.data())
def test_a_lost_server_loses_no_update_and_applies_none_twice(ops: list[Any], data: st.DataObject) -> None:
    cluster = Cluster(replicated=True)
    for op, a, b in ops:
        if op == "deliver":
            busy = sorted(cluster.network.busy())
            if busy:
                cluster.deliver(data.draw(st.sampled_from(busy)))
        elif op == "flush":
            cluster.flush()
        elif op == "silence":
            cluster.silence()
        elif op == "lift":
            cluster.lift_fences()  # the fence is wall time: it may end with messages in flight
        elif op == "tick":
            cluster.tick()
        elif op == "kill":
            cluster.kill(a, b)
        else:
            cluster.start(op, a, b)
    cluster.settle(data)
    cluster.check()


def test_the_backup_takes_over_with_every_acknowledged_update() -> None:
    cluster = Cluster(replicated=True)
    for worker in WORKERS:
        cluster.start("push", worker, [0, 1, 2, 3, 4, 5])
        cluster.settle(None)
    cluster.kill(SERVERS[0], True)
    cluster.settle(None)
    for worker in WORKERS:
        cluster.start("push", worker, [0, 5])
        cluster.settle(None)
    cluster.check()


def test_a_retry_does_not_apply_the_local_part_of_a_push_again() -> None:
    cluster = Cluster(replicated=True)
    worker = WORKERS[0]
    cluster.start("localize", worker, [0])
    cluster.settle(None)
    home_of_5 = int(cluster.shard_map.homes[-1])
    cluster.start("push", worker, [0, 5])  # key 0 applied locally, key 5 sent to its home
    cluster.kill(home_of_5, False)  # the request for key 5 dies with it: sent again
    cluster.settle(None)
    cluster.check()


def test_a_retry_that_follows_its_key_to_a_new_owner_is_recognised_there() -> None:
    cluster = Cluster(replicated=True)
    first, second, third = WORKERS
    cluster.start("localize", first, [0])
    cluster.settle(None)
    home = int(cluster.shard_map.homes[0])
    cluster.start("push", second, [0])
    cluster.deliver((client_of(second), home))  # the home forwards the push to ``first``
    cluster.deliver((home, first))  # applied there; its ACK stays in flight
    cluster.start("localize", third, [0])
    cluster.noted(third)
    for channel in ((client_of(third), home), (home, first), (first, third)):
        cluster.deliver(channel)  # the key moves on to ``third``
    bystander = next(s for s in (*SERVERS, SPARE) if s != home)
    cluster.kill(bystander, True)
    cluster.deliver((0, client_of(second)))  # ``second`` learns of the loss first: sends again
    cluster.settle(None)
    cluster.check()  # applied once: ``third`` knows the request from the records that came along


def test_a_second_loss_after_the_rebalance_loses_no_update() -> None:
    cluster = rebalanced_after_a_loss()
    assert cluster.shard_map.backups is not None, "the rebalanced shards have no backups"
    cluster.kill(int(cluster.shard_map.homes[0]), True)
    cluster.settle(None)
    for worker in WORKERS:
        cluster.start("push", worker, list(range(NUM_KEYS)))
        cluster.settle(None)
    cluster.check()
