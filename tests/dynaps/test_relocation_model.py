"""The relocation protocol, in-process, under every message interleaving Hypothesis finds.

Five NodeServers (two servers, three workers), their clients and the coordinator exchange
real encoded messages through a simulated network (tests/dynaps/simnet.py) that keeps
each sender->receiver channel FIFO (as ZeroMQ does) but delivers across channels in an
order Hypothesis chooses.

Invariants checked at quiescence: every key is owned by exactly one node and is nowhere
in transfer; its value equals the number of increments pushed; every request got exactly
the replies it needed; synchronous pulls of one worker never go backwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynaps.wire.codec import encode
from dynaps.wire.protocol import Message, MsgType, client_of
from tests.dynaps.simnet import NUM_KEYS, SERVERS, WORKERS, Cluster

OPS = st.tuples(
    st.sampled_from(["push", "pull", "localize", "deliver", "deliver", "silence"]),
    st.sampled_from(WORKERS),
    st.lists(st.integers(0, NUM_KEYS - 1), min_size=1, max_size=3),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=60), data=st.data())
def test_relocation_keeps_every_update_under_any_interleaving(ops: list[Any], data: st.DataObject) -> None:
    cluster = Cluster()
    for op, worker, keys in ops:
        if op == "deliver":
            busy = sorted(cluster.network.busy())
            if busy:
                cluster.deliver(data.draw(st.sampled_from(busy)))
        elif op == "silence":
            cluster.silence()
        else:
            cluster.start(op, worker, keys)
    cluster.settle(data)
    cluster.check()


def test_concurrent_localizes_of_one_key_chain() -> None:
    cluster = Cluster()
    for worker in WORKERS:
        cluster.start("push", worker, [0])
        cluster.settle(None)
    for worker in WORKERS:
        cluster.start("localize", worker, [0])
    cluster.settle(None)
    for worker in WORKERS:
        cluster.start("push", worker, [0])
        cluster.settle(None)
    cluster.check()
    assert sum(cluster.store(w).loc[0] == w for w in WORKERS) == 1
    assert sum(cluster.store(n).values[0, 0] for n in SERVERS + WORKERS if cluster.store(n).loc[0] == n) == 6


def test_a_second_relocation_waits_at_the_home_until_the_first_arrives() -> None:
    cluster = Cluster()
    first, second, third = WORKERS
    home = int(cluster.shard_map.home_of(np.array([0]), NUM_KEYS)[0])
    cluster.start("localize", first, [0])
    cluster.settle(None)
    cluster.start("localize", second, [0])
    cluster.noted(second)
    cluster.deliver((client_of(second), home))  # home: HANDOFF(0 -> second) to first
    cluster.start("localize", third, [0])
    cluster.noted(third)
    cluster.deliver((client_of(third), home))  # key 0 is still moving: the home holds this one
    assert cluster.nodes[home].relocations.waiting[0], "the second relocation was not held back"
    assert not cluster.network.channels[(home, second)], "no handoff may reach a node before its key"
    cluster.settle(None)
    cluster.start("push", third, [0])
    cluster.settle(None)
    cluster.check()
    assert cluster.store(third).loc[0] == third
    assert cluster.store(third).values[0, 0] == 1


def test_an_asynchronous_push_to_a_stale_owner_completes_after_a_later_one_once() -> None:
    """Asynchronous operations complete in any order (docs/consistency.md): a push sent to
    the owner a worker's cache names, after the key moved on, is forwarded, and a later
    push of the worker that localized the key meanwhile is applied first; both once."""
    cluster = Cluster()
    first, worker, third = WORKERS
    table = cluster.clients[worker].table("W")
    key, one = np.array([0], dtype=np.int64), np.ones((1, 1))
    for who, op in ((first, "localize"), (worker, "pull"), (third, "localize")):
        cluster.start(op, who, [0])  # the worker's cache names the first, the third holds it
        cluster.settle(None)
    early = table.push(key, one, wait=False)
    stale = (client_of(worker), first)
    assert stale in cluster.network.busy(), "the push did not go to the stale owner"
    moved = table.localize(key, wait=False)
    later = table.push(key, one, wait=False)
    for _ in range(1_000):
        channels = [c for c in sorted(cluster.network.busy()) if c != stale]
        if not channels:
            break
        cluster.deliver(channels[0])
    assert moved.done()
    assert later.done()
    assert not early.done()
    assert cluster.store(worker).values[0, 0] == 1  # the later push alone, so far
    cluster.settle(None)
    assert early.done()
    assert cluster.store(worker).values[0, 0] == 2


def test_release_returns_keys_to_their_home() -> None:
    cluster = Cluster()
    worker = WORKERS[0]
    cluster.start("localize", worker, list(range(NUM_KEYS)))
    cluster.settle(None)
    cluster.start("push", worker, list(range(NUM_KEYS)))
    cluster.settle(None)
    assert (cluster.store(worker).loc == worker).all()
    for server in SERVERS:
        homed = np.flatnonzero(cluster.shard_map.home_of(np.arange(NUM_KEYS), NUM_KEYS) == server)
        msg = Message(MsgType.RELEASE, worker, worker, 1, 0, len(homed), keys=homed.astype(np.int64))
        cluster.nodes[worker].transport.send(server, encode(msg))
    cluster.settle(None)
    cluster.check()
    assert not (cluster.store(worker).loc == worker).any()
    assert cluster.nodes[worker].counters()["keys_sent"] == NUM_KEYS  # summed over tables
    assert cluster.nodes[worker].stats["keys_released"] == NUM_KEYS
