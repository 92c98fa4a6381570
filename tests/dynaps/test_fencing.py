"""Fencing and patience: the decisions, driven without processes (a clock the test moves).

* The coordinator waits longer for a silent (still connected) node whose loss would lose
  data, says so in /status, and still loses a crashed or replicated node at once.
* A node declared lost that speaks again is refused; a node told it is lost stops.
"""

from __future__ import annotations

import pytest

from dynaps.coordinator.liveness import Liveness
from dynaps.coordinator.outbox import REFUSED_ENDPOINT
from dynaps.coordinator.roster import Member, MemberState, Roster
from dynaps.node.drain import Drain
from dynaps.wire import control
from dynaps.wire.protocol import MsgType, client_of
from tests.dynaps.samples import SAMPLE_BODIES
from tests.dynaps.test_coordinator_core import Job
from tests.dynaps.test_node_control_plane import WORKER, initial_map, make_node, membership, order

# ---------------------------------------------------------------------- liveness alone


def ready_members(count: int) -> list[Member]:
    roster = Roster(count, 0, clock=lambda: 0.0)
    members = []
    for i in range(count):
        member = roster.admit("server", f"s{i}", f"s{i}", 0, None)
        assert not isinstance(member, str)
        member.state = MemberState.READY
        members.append(member)
    return members


def test_a_silent_node_that_would_lose_data_is_waited_for_the_long_timeout() -> None:
    precious, replicated = ready_members(2)
    liveness = Liveness.for_heartbeat(0.1, silent_node_timeout=30, loses_data=lambda m: m is precious)
    members = [precious, replicated]
    assert liveness.overdue(members, liveness.lost_after + 0.01) == [replicated]
    assert set(liveness.waiting) == {precious.id}
    [line] = liveness.report(10.0)
    assert (line["node"], line["name"], line["silentSeconds"], line["lostInSeconds"]) == (
        precious.id,
        "s0",
        10,
        20,
    )
    assert "waiting for server" in line["message"]
    assert liveness.overdue([precious], 29.9) == []
    assert liveness.overdue([precious], 30.01) == [precious]
    assert not liveness.waiting


def test_a_waited_for_node_that_speaks_again_is_no_longer_waited_for() -> None:
    [precious] = ready_members(1)
    liveness = Liveness.for_heartbeat(0.1, silent_node_timeout=30, loses_data=lambda m: True)
    assert liveness.overdue([precious], 5.0) == []
    assert liveness.waiting
    precious.heard(6.0)
    assert liveness.overdue([precious], 6.1) == []
    assert not liveness.waiting
    assert liveness.report(6.1) == []


def test_a_dropped_connection_is_lost_fast_even_when_it_loses_data() -> None:
    [crashed] = ready_members(1)
    liveness = Liveness.for_heartbeat(0.1, silent_node_timeout=30, loses_data=lambda m: True)
    crashed.disconnected(1.0)
    assert liveness.overdue([crashed], 1.0 + liveness.grace_after_disconnect + 0.01) == [crashed]


def test_the_long_timeout_is_never_shorter_than_the_short_one() -> None:
    liveness = Liveness.for_heartbeat(1.0, silent_node_timeout=1)
    assert liveness.silent_node_timeout == liveness.lost_after == 10.0


# ---------------------------------------------------------------------- the coordinator


def silence(job: Job, speakers: list[int], seconds: float) -> None:
    """``seconds`` pass; only ``speakers`` heartbeat (the others are stopped)."""
    step = 0.5
    elapsed = 0.0
    while elapsed < seconds:
        job.clock.now += min(step, seconds - elapsed)
        elapsed += step
        for node in speakers:
            job.tell(node, MsgType.HEARTBEAT, {"role": "server", "address": f"tcp://{job.names[node]}"})
        job.coordinator.tick()


def test_without_replication_a_silent_server_is_waited_for_and_shown_in_status() -> None:
    job = Job(servers=2, workers=1, fault_tolerance={"silent_node_timeout_seconds": 20})
    (s1, s2), (w1,) = job.start()
    lost_after = job.coordinator.liveness.lost_after
    silence(job, [s1, w1], lost_after + 2)
    status = job.status()
    assert status["lost"] == []
    [waiting] = status["waitingFor"]
    assert (waiting["node"], waiting["name"]) == (s2, "s1")
    assert waiting["silentSeconds"] >= lost_after + 2
    assert not job.memberships(), "nothing changes while the job waits"
    job.tell(s2, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s1"})  # SIGCONT
    job.coordinator.tick()
    assert job.status()["waitingFor"] == []
    assert job.status()["lost"] == []


def test_without_replication_a_server_silent_past_the_long_timeout_is_lost() -> None:
    job = Job(servers=2, workers=1, fault_tolerance={"silent_node_timeout_seconds": 20})
    (s1, s2), (w1,) = job.start()
    silence(job, [s1, w1], 19)
    assert job.status()["lost"] == []
    silence(job, [s1, w1], 1.5)
    assert job.status()["lost"] == [s2]
    assert job.status()["waitingFor"] == []


def test_with_replication_a_silent_server_is_lost_on_the_short_timeout() -> None:
    job = Job(servers=3, workers=1, fault_tolerance={"replication": 1, "silent_node_timeout_seconds": 20})
    (s1, s2, s3), (w1,) = job.start()
    silence(job, [s1, s2, w1], job.coordinator.liveness.lost_after + 0.5)
    assert job.status()["lost"] == [s3]


def test_without_replication_a_crashed_server_is_lost_at_once() -> None:
    job = Job(servers=2, workers=1, fault_tolerance={"silent_node_timeout_seconds": 20})
    (s1, s2), (w1,) = job.start()
    job.clock.now += 0.1
    job.wire.dropped.append(s2)
    silence(job, [s1, w1], job.coordinator.liveness.grace_after_disconnect + 0.5)
    assert job.status()["lost"] == [s2]


@pytest.mark.parametrize(("allocation", "waited"), [("dynamic", True), ("static", False)])
def test_a_silent_worker_is_waited_for_only_if_it_may_hold_keys(allocation: str, waited: bool) -> None:
    job = Job(
        servers=1, workers=2, allocation=allocation, fault_tolerance={"silent_node_timeout_seconds": 20}
    )
    (s1,), (w1, w2) = job.start()
    silence(job, [s1, w1], job.coordinator.liveness.lost_after + 0.5)
    assert job.status()["lost"] == ([] if waited else [w2])


def test_a_lost_node_that_speaks_again_is_refused_and_what_it_says_is_ignored() -> None:
    job = Job(servers=3, workers=2, fault_tolerance={"replication": 1})
    (s1, s2, s3), (w1, w2) = job.start()
    silence(job, [s1, s2, w1], job.coordinator.liveness.lost_after + 0.5)
    assert job.status()["lost"] == [s3, w2]
    job.wire.clear()
    job.tell(s3, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s2"})
    [(endpoint, body)] = job.wire.take(MsgType.REFUSED)
    assert endpoint == REFUSED_ENDPOINT
    assert f"node {s3} was declared lost" in body["reason"]
    assert REFUSED_ENDPOINT not in job.wire.addresses, "the connection is closed after the answer"
    # late words of the lost worker change nothing: its program "finishing" ends no job
    job.tell(client_of(w2), MsgType.WORKER_DONE, {"exit_code": 3})
    job.tell(w2, MsgType.LEAVE, {"reason": "late"})
    assert job.phase().value == "running"
    assert job.coordinator.exit_code is None
    assert not job.wire.sent


def test_a_node_that_left_is_not_refused() -> None:
    job = Job(servers=1, workers=2)
    _, (_, w2) = job.start()
    job.tell(w2, MsgType.LEAVE, {"reason": "scale down"})
    job.tell(w2, MsgType.LEFT)
    job.wire.clear()
    job.tell(w2, MsgType.HEARTBEAT, {"role": "worker", "address": "tcp://w1"})  # lingering
    assert not job.wire.take(MsgType.REFUSED)


# ---------------------------------------------------------------------- the node


def test_a_refused_heartbeat_fences_the_node() -> None:
    plane, shell, outbox = make_node(1)
    plane.on_message(order(MsgType.REFUSED, {"nonce": "", "node": 1, "reason": "node 1 was declared lost"}))
    assert plane.fenced == "node 1 was declared lost"
    assert shell.calls == ["stop_loop"]
    # no longer a member: later orders are ignored
    plane.on_message(order(MsgType.CHECKPOINT, SAMPLE_BODIES[MsgType.CHECKPOINT]))
    plane.on_message(order(MsgType.DRAIN, SAMPLE_BODIES[MsgType.DRAIN]))
    assert plane.checkpoint is None
    assert plane.drain is None
    assert not outbox.sent
    assert shell.calls == ["stop_loop"]


def test_a_fence_replayed_to_another_node_does_not_fence_it() -> None:
    """Security audit, finding 2: the REFUSED that fences a lost node goes to a temporary
    endpoint, which every receiver accepts, and its MAC holds wherever it is replayed. The
    one the coordinator sends must name the node it fences: replayed to another, it is
    dropped and counted; the lost node itself still stops on it."""
    job = Job(servers=3, workers=2, fault_tolerance={"replication": 1})
    (s1, s2, s3), (w1, _) = job.start()
    silence(job, [s1, s2, w1], job.coordinator.liveness.lost_after + 0.5)
    job.wire.clear()
    job.tell(s3, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s2"})
    [(_, fence)] = job.wire.take(MsgType.REFUSED)
    bystander, shell, _ = make_node(s1)
    bystander.on_message(order(MsgType.REFUSED, fence))
    assert not bystander.fenced
    assert not shell.calls
    assert bystander.server.stats["malformed"] == 1
    lost, shell, _ = make_node(s3)
    lost.on_message(order(MsgType.REFUSED, fence))
    assert lost.fenced
    assert shell.calls == ["stop_loop"]


def test_a_refusal_from_another_node_is_dropped() -> None:
    plane, shell, _ = make_node(1)
    plane.server.peers.add(2)
    plane.on_message(order(MsgType.REFUSED, {"nonce": "", "node": 1, "reason": "forged"}, sender=2))
    assert not plane.fenced
    assert plane.server.stats["malformed"] == 1
    assert not shell.calls


def test_a_membership_that_lists_the_node_as_lost_fences_it() -> None:
    plane, shell, _ = make_node(1)
    plane.on_message(order(MsgType.MEMBERSHIP, membership(initial_map(), [1, 2, WORKER])))
    newer = initial_map()
    newer.epoch += 1
    newer.homes[:] = 2
    plane.on_message(order(MsgType.MEMBERSHIP, membership(newer, [2, WORKER], lost=[1])))
    assert "lists it as lost" in plane.fenced
    assert shell.calls == ["stop_loop"]
    assert plane.server.shard_map.epoch == initial_map().epoch, "the fenced node applies nothing"


def test_a_membership_without_the_node_fences_it_unless_it_left() -> None:
    plane, shell, _ = make_node(WORKER)
    plane.apply_membership(control.Membership.model_validate(membership(initial_map(), [1, 2])))
    assert "does not list it" in plane.fenced
    assert shell.calls == ["stop_loop"]

    plane, shell, _ = make_node(WORKER)
    plane.drain = Drain.LEFT  # it left and lingers to forward stragglers
    plane.apply_membership(control.Membership.model_validate(membership(initial_map(), [1, 2])))
    assert not plane.fenced
    assert not shell.calls


def test_fencing_happens_once() -> None:
    plane, shell, _ = make_node(1)
    plane.fence("first")
    plane.fence("second")
    assert plane.fenced == "first"
    assert shell.calls == ["stop_loop"]
