"""A lost worker's keys count as data loss (issue 13, "Loss is counted and shown"; audit F8).

The homes take back the keys a lost node held: with their last write-back under replication
(what the worker updated since its last flush is lost), with their own copy from before the
localize without (everything it updated is lost), with every acknowledged update under
write-through (nothing is lost).  Each home tells the coordinator how many keys it took back
(TOOK_BACK); the coordinator lists that in ``/status`` ``dataLoss`` beside lost servers'
recoveries, and ``faultTolerance.onDataLoss: Fail`` ends the job.  The real Coordinator and
a real NodeServer in-process; the test plays the rest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dynaps.contract import DATA_LOSS_EXIT_CODE
from dynaps.coordinator.core import JobPhase
from dynaps.node.rejoining import recent_losses
from dynaps.wire import control
from dynaps.wire.protocol import COORDINATOR, MsgType, client_of
from tests.dynaps.samples import shard_map_doc
from tests.dynaps.test_coordinator_core import Job
from tests.dynaps.test_coordinator_replicas import lose
from tests.dynaps.test_node_control_plane import WORKER, initial_map, make_node, membership

WRITE_BACK: dict[str, Any] = {"fault_tolerance": {"replication": 1, "flush_interval_ms": 100}}
WRITE_THROUGH: dict[str, Any] = {"fault_tolerance": {"replication": 1, "flush_interval_ms": 0}}


# ---------------------------------------------------------------------- the homes


def test_a_home_reports_the_keys_it_took_back_from_a_lost_worker_once() -> None:
    plane, _, outbox = make_node(1)
    server = plane.server
    store = server.stores[0]
    plane.apply_membership(control.Membership.model_validate(membership(initial_map(), [1, 2, WORKER])))
    assert store.owner is not None
    assert store.moving_from is not None
    homed = np.flatnonzero(server.homed(0))
    held, sending = homed[0], homed[-1]
    store.owner[held] = store.loc[held] = WORKER  # localized by the worker
    store.owner[sending] = 2  # the worker was handing it on to node 2
    store.moving_from[sending] = WORKER
    outbox.take([store.layout])
    lost = control.Membership.model_validate(membership(initial_map(), [1, 2], lost=[WORKER]))
    plane.apply_membership(lost)
    reports = [(dest, msg) for dest, msg in outbox.take([store.layout]) if msg.type is MsgType.TOOK_BACK]
    [(dest, msg)] = reports
    shards = sorted(
        {int(s) for s in server.shard_map.shard_of(np.array([held, sending]), store.spec.num_keys)}
    )
    assert dest == COORDINATOR
    epoch = server.shard_map.epoch  # the loss is known by it, when said again to a new coordinator
    took = control.TookBack(node=WORKER, keys=2, shards=shards, epoch=epoch)
    assert control.body_of(msg, control.TookBack) == took
    plane.apply_membership(lost)  # the same loss again (a repeated membership): no second report
    assert not [m for _, m in outbox.take([store.layout]) if m.type is MsgType.TOOK_BACK]
    assert list(server.loss_reports) == [took]  # kept for a replacement coordinator (REJOIN)


def test_a_home_that_took_nothing_back_reports_nothing() -> None:
    plane, _, outbox = make_node(1)
    store = plane.server.stores[0]
    plane.apply_membership(control.Membership.model_validate(membership(initial_map(), [1, 2, WORKER])))
    outbox.take([store.layout])
    plane.apply_membership(
        control.Membership.model_validate(membership(initial_map(), [1, 2], lost=[WORKER]))
    )
    assert not [m for _, m in outbox.take([store.layout]) if m.type is MsgType.TOOK_BACK]


# ---------------------------------------------------------------------- the coordinator


@pytest.mark.parametrize(
    ("settings", "cause", "says"),
    [
        (WRITE_BACK, "write-back", "flush interval (100 ms)"),
        ({}, "home-copy", "before they were localized"),
    ],
    ids=["replicated", "not-replicated"],
)
def test_keys_taken_back_from_a_lost_worker_are_listed_as_data_loss(
    settings: dict[str, Any], cause: str, says: str
) -> None:
    job = Job(servers=2, workers=2, num_shards=4, **settings)
    (s1, s2), (_, w2) = job.start()
    lose(job, w2)
    assert job.status()["dataLoss"] == [], "nothing is known lost before a home says so"
    job.tell(s1, MsgType.TOOK_BACK, {"node": w2, "keys": 7, "shards": [0, 1]})
    job.tell(s2, MsgType.TOOK_BACK, {"node": w2, "keys": 3, "shards": [2]})
    status = job.status()
    losses = status["dataLoss"]
    assert [(e["cause"], e["server"], e["shards"], e["keys"], e["keysCounted"]) for e in losses] == [
        (cause, w2, [0, 1], 7, True),
        (cause, w2, [2], 3, True),
    ]
    assert f"lost worker {w2}" in losses[0]["message"]
    assert says in losses[0]["message"]
    assert status["dataLossTotal"] == {"entries": 2, "keys": 10}
    assert job.phase() is JobPhase.RUNNING  # onDataLoss: Continue by default


def test_a_loss_reported_to_a_coordinator_that_died_is_recorded_by_its_replacement() -> None:
    """A home's TOOK_BACK may reach a coordinator that dies before it records it (or before the
    operator reads it): the home says it again in its REJOIN, with its epoch, so the entry is
    the one the operator may have seen (it knows an entry by cause, node, epoch, shards)."""
    job = Job(servers=1, workers=1, num_shards=4, **WRITE_BACK)
    shard_map = shard_map_doc([1, 1, 1, 1], epoch=6)
    server = {"role": "server", "address": "tcp://s0", "name": "s0"}
    worker = {"role": "worker", "address": "tcp://w1", "name": "w1", "rank": 0, "client": "tcp://p"}
    job.tell(1, MsgType.HEARTBEAT, server)
    job.tell(4, MsgType.HEARTBEAT, worker)
    took = {"node": 3, "keys": 7, "shards": [0, 1], "epoch": 5}  # worker 3, lost under the last one
    known = {"members": [[1, None], [4, 0]], "members_version": 9, "lost": [3]}
    job.tell(1, MsgType.REJOIN, {"heartbeat": server, "shard_map": shard_map, **known, "took_back": [took]})
    job.tell(4, MsgType.REJOIN, {"heartbeat": worker, "shard_map": shard_map, **known})
    job.clock.now += 1.5
    job.coordinator.tick()
    assert job.phase() is JobPhase.RUNNING
    [loss] = job.status()["dataLoss"]
    assert (loss["cause"], loss["server"], loss["epoch"], loss["shards"], loss["keys"]) == (
        "write-back",
        3,
        5,
        [0, 1],
        7,
    )


def test_under_write_through_a_lost_worker_loses_nothing() -> None:
    job = Job(servers=2, workers=2, num_shards=4, **WRITE_THROUGH)
    (s1, _), (_, w2) = job.start()
    lose(job, w2)
    job.tell(s1, MsgType.TOOK_BACK, {"node": w2, "keys": 7, "shards": [0, 1]})
    assert job.status()["dataLoss"] == []


def test_a_report_about_a_node_that_is_not_lost_or_from_a_non_server_is_dropped() -> None:
    job = Job(servers=2, workers=2, num_shards=4, **WRITE_BACK)
    (s1, _), (w1, w2) = job.start()
    job.tell(s1, MsgType.TOOK_BACK, {"node": w2, "keys": 7, "shards": [0]})  # w2 is alive
    lose(job, w2)
    job.tell(w1, MsgType.TOOK_BACK, {"node": w2, "keys": 7, "shards": [0]})  # a worker homes nothing
    job.tell(s1, MsgType.TOOK_BACK, {"node": w2, "keys": 7, "shards": [99]})  # no such shard
    assert job.status()["dataLoss"] == []


def test_on_data_loss_fail_ends_the_job_when_a_lost_worker_s_keys_lost_updates() -> None:
    job = Job(servers=2, workers=2, num_shards=4, fault_tolerance={"on_data_loss": "Fail"})
    (s1, _), (_, w2) = job.start()
    lose(job, w2)
    job.tell(s1, MsgType.TOOK_BACK, {"node": w2, "keys": 5, "shards": [0]})
    status = job.status()
    assert status["exitCode"] == DATA_LOSS_EXIT_CODE
    assert f"lost worker {w2}" in status["reason"]
    assert job.phase() is JobPhase.STOPPING


def test_the_program_of_a_lost_worker_is_told() -> None:
    """Its node may be stopped, not dead: the program must not go on acknowledging updates
    of keys the homes have taken back (see test_client_node_loss.py)."""
    job = Job(servers=2, workers=2, num_shards=4, **WRITE_BACK)
    _, (_, w2) = job.start()
    lose(job, w2)
    refused = [(e, b) for e, b in job.wire.take(MsgType.REFUSED) if e == client_of(w2)]
    [(_, body)] = refused
    assert f"node {w2} was declared lost" in body["reason"]
    assert body["node"] == w2, "named inside, under the MAC: a program fences only on its own node's"
    assert client_of(w2) not in job.wire.addresses, "its connection is closed after the message"


# ------------------------------------------------------- keys given back to a home that died


def test_keys_given_back_to_a_home_that_died_are_listed_as_data_loss() -> None:
    """HANDOFF_LOST (docs/architecture.md, Known limits): a draining worker gave keys back to
    their home, which died before it confirmed them; under write-back the new home rebuilt
    them from their last write-back, so the worker's updates since are counted lost."""
    job = Job(servers=2, workers=2, num_shards=4, **WRITE_BACK)
    (s1, _), (w1, _) = job.start()
    lose(job, s1)
    job.tell(w1, MsgType.HANDOFF_LOST, {"node": s1, "keys": 4, "shards": [0, 2]})
    losses = [e for e in job.status()["dataLoss"] if f"worker {w1} was giving back" in e["message"]]
    [entry] = losses
    assert (entry["cause"], entry["server"], entry["shards"], entry["keys"], entry["keysCounted"]) == (
        "write-back",
        s1,
        [0, 2],
        4,
        True,
    )
    assert "flush interval (100 ms)" in entry["message"]


@pytest.mark.parametrize("settings", [{}, WRITE_THROUGH], ids=["not-replicated", "write-through"])
def test_keys_given_back_are_not_counted_twice_nor_where_nothing_is_lost(settings: dict[str, Any]) -> None:
    """Without replication the lost home's recovery counts its shards already; under
    write-through the replica has every acknowledged update: no HANDOFF_LOST entry."""
    job = Job(servers=2, workers=2, num_shards=4, **settings)
    (s1, _), (w1, _) = job.start()
    lose(job, s1)
    before = job.status()["dataLoss"]
    job.tell(w1, MsgType.HANDOFF_LOST, {"node": s1, "keys": 4, "shards": [0]})
    assert job.status()["dataLoss"] == before


def test_a_handoff_report_about_a_live_node_or_an_unknown_shard_is_dropped() -> None:
    job = Job(servers=2, workers=2, num_shards=4, **WRITE_BACK)
    (s1, s2), (w1, _) = job.start()
    job.tell(w1, MsgType.HANDOFF_LOST, {"node": s2, "keys": 4, "shards": [0]})  # s2 is alive
    lose(job, s1)
    before = job.status()["dataLoss"]
    job.tell(w1, MsgType.HANDOFF_LOST, {"node": s1, "keys": 4, "shards": [99]})  # no such shard
    assert job.status()["dataLoss"] == before
    assert job.phase() is JobPhase.RUNNING


def test_a_rejoin_says_again_the_newest_loss_reports_that_fit() -> None:
    """At most LOSS_REPORT_SHARDS shards (the newest report in any case): a restarted
    coordinator hears a REJOIN from every node."""

    def took(first: int, count: int) -> control.TookBack:
        return control.TookBack(node=3, keys=count, shards=list(range(first, first + count)))

    small = [took(i, 1) for i in range(100)]
    assert recent_losses(small) == small
    big = [took(0, 3000), took(3000, 3000), took(6000, 3000)]
    assert recent_losses(big) == big[-1:]
    huge = [took(0, 1), took(0, control.LOSS_REPORT_SHARDS + 1)]
    assert recent_losses(huge) == huge[-1:]
