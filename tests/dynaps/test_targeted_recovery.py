"""Targeted recovery, in-process: a rebuild asks only the nodes that may hold its shards' keys.

The coordinator names them in RECOVER (``dynaps.coordinator.holders``): the workers whose
programs said, before their first localize of a key of a shard, that they may hold keys of
it (HOLDING, answered by HOLDING_NOTED before the LOCALIZE leaves), and the servers a shard
migrated away from.  These tests run the real coordinator, nodes and clients on the simulated
network (tests/dynaps/simnet.py), also with the HOLDING still in flight when the home dies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynaps.coordinator.holders import Holders
from dynaps.wire import control
from dynaps.wire.codec import decode, peek
from dynaps.wire.protocol import COORDINATOR, MsgType, client_of
from tests.dynaps.simnet import NUM_KEYS, WORKERS, Cluster, rebalanced_after_a_loss


def spy_on_queries(cluster: Cluster) -> list[int]:
    """The nodes every OWNERS_QUERY goes to from now on (the list grows as they are sent)."""
    asked: list[int] = []

    def note(source: int, dest: int, frames: Sequence[Any]) -> bool:
        peeked = peek(frames)
        if peeked is not None and peeked[0] is MsgType.OWNERS_QUERY:
            asked.append(dest)
        return False  # nothing is lost

    cluster.network.lose = note
    return asked


def home_of(cluster: Cluster, key: int) -> int:
    return int(cluster.shard_map.home_of(np.array([key]), NUM_KEYS)[0])


def test_a_recovery_asks_the_worker_that_holds_keys_and_not_the_others() -> None:
    cluster = Cluster(replicated=True)
    holder, idle, other = WORKERS
    home = home_of(cluster, 0)
    cluster.start("localize", holder, [0])
    cluster.settle(None)
    for worker in (holder, idle, other):  # the others' pushes are forwarded to the holder
        cluster.start("push", worker, [0])
        cluster.settle(None)
    asked = spy_on_queries(cluster)
    cluster.kill(home, True)
    cluster.settle(None)
    cluster.check()  # one owner per key, every acknowledged increment there once
    assert holder in asked
    assert idle not in asked, asked
    assert other not in asked, asked
    assert cluster.store(holder).loc[0] == holder, "the holder keeps its key"
    assert cluster.store(holder).values[0, 0] == 3


def test_a_recovery_with_nobody_holding_keys_asks_no_worker() -> None:
    cluster = Cluster(replicated=True)
    home = home_of(cluster, 1)
    for worker in WORKERS:
        cluster.start("push", worker, [1, 2])
        cluster.settle(None)
    asked = spy_on_queries(cluster)
    cluster.kill(home, True)
    cluster.settle(None)
    cluster.check()
    assert not set(asked) & set(WORKERS), asked


def test_a_localize_noted_after_the_loss_is_not_asked_and_ends_with_one_owner() -> None:
    """The race: the program's HOLDING is still on its way when the key's home dies, so the
    coordinator orders the rebuild without it; its LOCALIZE has not left (it waits for the
    note), so nothing of the key moved towards it, and it goes to the new home later."""
    cluster = Cluster(replicated=True)
    worker = WORKERS[0]
    home = home_of(cluster, 0)
    cluster.start("push", worker, [0])
    cluster.settle(None)
    cluster.start("localize", worker, [0])
    assert cluster.network.channels[(client_of(worker), COORDINATOR)], "HOLDING is on its way"
    assert not cluster.network.channels[(client_of(worker), home)], "LOCALIZE waits for the note"
    asked = spy_on_queries(cluster)
    cluster.kill(home, True)  # the coordinator decides before the HOLDING arrives
    cluster.settle(None)
    assert worker not in asked
    cluster.start("push", worker, [0])
    cluster.settle(None)
    cluster.check()
    assert cluster.store(worker).loc[0] == worker
    assert cluster.store(worker).values[0, 0] == 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), keep_sent=st.booleans(), keys=st.lists(st.integers(0, NUM_KEYS - 1), min_size=1))
def test_a_loss_at_any_step_of_a_first_localize_loses_no_update(
    data: st.DataObject, keep_sent: bool, keys: list[int]
) -> None:
    """The home dies at a random step of a worker's first localize (HOLDING, its note, the
    LOCALIZE, the hand-off, the transfer) while others push the same keys."""
    cluster = Cluster(replicated=True)
    mover, pusher, _ = WORKERS
    home = home_of(cluster, keys[0])
    cluster.start("push", pusher, keys)
    cluster.settle(None)
    cluster.start("localize", mover, keys)
    cluster.start("push", pusher, keys)
    for _ in range(data.draw(st.integers(0, 12))):
        busy = sorted(cluster.network.busy())
        if busy:
            cluster.deliver(data.draw(st.sampled_from(busy)))
    cluster.kill(home, keep_sent)
    cluster.settle(data)
    cluster.check()


def test_a_rebuild_names_the_server_its_shard_migrated_away_from() -> None:
    """Keys released to a home while it migrates a shard away stay with it
    (``Migrations.commit``), so the commit names the old home and a later rebuild of the
    shard asks it: here the first loss's rebalance moves shards, the second loss takes
    their new home."""
    cluster = rebalanced_after_a_loss()
    named = {
        shard: nodes - set(WORKERS)
        for shard, nodes in cluster.coordinator.homes.holders.nodes.items()
        if nodes - set(WORKERS)
    }
    assert named, "the migration's commit named no old home"
    shard, (former,) = min(named.items())
    home = int(cluster.shard_map.homes[shard])
    assert former != home, "named: the server the shard moved away from"
    orders: list[control.Recover] = []

    def note(source: int, dest: int, frames: Sequence[Any]) -> bool:
        peeked = peek(frames)
        if peeked is not None and peeked[0] is MsgType.RECOVER:
            orders.append(control.body_of(decode(list(frames), []), control.Recover))
        return False

    cluster.network.lose = note
    cluster.kill(home, True)
    cluster.settle(None)
    order = next(o for o in orders if shard in o.shards)
    assert order.holders is not None
    assert former in order.holders, (former, order)
    for worker in WORKERS:
        cluster.start("push", worker, list(range(NUM_KEYS)))
        cluster.settle(None)
    cluster.check()


def test_the_coordinator_names_live_holders_and_after_an_adoption_nobody() -> None:
    holders = Holders(num_shards=8)
    holders.note(5, [1, 2])
    holders.former_home(3, [2])
    holders.note(7, [4])
    alive = {3, 5, 7}
    assert holders.of([2], alive.__contains__) == [3, 5]
    assert holders.of([0], alive.__contains__) == []
    alive.discard(5)  # lost: never asked again
    assert holders.of([1, 2, 4], alive.__contains__) == [3, 7]
    holders.forget_all()  # a restarted coordinator adopted the job: who holds what is unknown
    assert holders.of([1], alive.__contains__) is None
