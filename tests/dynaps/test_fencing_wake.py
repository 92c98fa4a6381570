"""A node whose loop did not run for a while serves nothing until the coordinator says it is
still a member (issue 13's fencing; audit F10, "a fenced node serves its inbox").

A stopped node (SIGSTOP) may be declared lost while its inbox fills with requests; after
SIGCONT those came first, were applied to keys the homes had taken back and answered, and a
client that read the answer before the loss never sent the request again.  Now, after a
gap longer than half the coordinator's silence limit, the node holds data messages and asks
(a heartbeat: REFUSED if it was declared lost; a PING: PONG, with its id, if not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from dynaps.contract import silence_limit_seconds
from dynaps.node.control_plane import ControlPlane
from dynaps.node.waking import WAKE_LIMIT, WAKE_RETRY
from dynaps.wire import messages
from dynaps.wire.codec import decode, encode
from dynaps.wire.protocol import COORDINATOR, Message, MsgType, client_of, header
from tests.dynaps.test_coordinator_core import Job
from tests.dynaps.test_coordinator_replicas import lose
from tests.dynaps.test_node_control_plane import frames, make_node, order

GAP = 1.5  # seconds: half the coordinator's silence limit at the default heartbeat
NOW = 100.0


def waking_node() -> tuple[ControlPlane, Any]:
    plane, _, outbox = make_node(1)
    plane.wake_gap = GAP
    plane.turned(NOW)
    return plane, outbox


def push(req_id: int) -> list[Any]:
    """A PUSH from a client, as it waits in the node's inbox."""
    keys = np.array([0], dtype=np.int64)
    rows = np.ones((1, 1), dtype=np.float32)
    msg = messages.request(MsgType.PUSH, client_of(4), req_id, 0, keys, values=rows)
    return [bytes(memoryview(f)) for f in encode(msg)]


def asked(outbox: Any) -> list[tuple[int, MsgType, int]]:
    return [(dest, msg.type, msg.req_id) for dest, msg in outbox.take([])]


def pong(req_id: int) -> Any:
    return decode([header(MsgType.PONG, COORDINATOR, COORDINATOR, req_id), b"{}"], [])


def test_the_gap_is_half_the_coordinator_s_silence_limit() -> None:
    assert silence_limit_seconds(0.2) == 3.0
    assert silence_limit_seconds(1.0) == 10.0


def test_after_a_gap_data_waits_until_the_coordinator_answers_the_ping() -> None:
    plane, outbox = waking_node()
    plane.turned(NOW + GAP / 2)  # a turn of an ordinary loop: nothing held
    assert plane.admit(push(1))
    assert not outbox.sent
    plane.turned(NOW + GAP / 2 + GAP + 0.1)  # stopped for longer than the gap
    (to_1, beat, _), (to_2, ping, nonce) = asked(outbox)
    assert (to_1, beat, to_2, ping) == (COORDINATOR, MsgType.HEARTBEAT, COORDINATOR, MsgType.PING)
    first, second = push(2), push(3)
    assert not plane.admit(first)
    assert not plane.admit(second)
    assert plane.admit(frames(MsgType.MEMBERSHIP, {})), "control messages are not held"
    plane.on_message(pong(nonce + 1))  # an old answer: not to this question
    assert plane.take_released() == []
    plane.on_message(pong(nonce))
    assert plane.take_released() == [first, second], "served in the order they came"
    assert plane.admit(push(4))
    assert plane.take_released() == []


def test_a_node_declared_lost_meanwhile_serves_nothing_it_held() -> None:
    plane, outbox = waking_node()
    plane.turned(NOW + 2 * GAP)
    outbox.take([])
    assert not plane.admit(push(2))
    plane.on_message(order(MsgType.REFUSED, {"nonce": "", "reason": "node 1 was declared lost"}))
    assert plane.fenced
    assert plane.take_released() == []
    assert not plane.admit(push(3)), "a fenced node serves nothing"


def test_the_question_is_asked_again_and_given_up_on_when_the_coordinator_is_away() -> None:
    plane, outbox = waking_node()
    woke = NOW + 2 * GAP
    plane.turned(woke)
    outbox.take([])
    held = push(2)
    assert not plane.admit(held)
    plane.tick(woke + WAKE_RETRY / 2)
    assert [kind for _, kind, _ in asked(outbox)] == []
    plane.tick(woke + WAKE_RETRY + 0.01)
    assert [kind for _, kind, _ in asked(outbox)] == [MsgType.HEARTBEAT, MsgType.PING]
    plane.tick(woke + WAKE_LIMIT + 0.01)  # a coordinator that does not answer is away: serve
    assert plane.take_released() == [held]
    assert plane.admit(push(3))


def test_the_coordinator_answers_a_member_s_ping_with_its_id_and_a_lost_node_s_with_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = Job(servers=2, workers=2, num_shards=4, fault_tolerance={"replication": 1})
    (s1, s2), _ = job.start()
    answers: list[tuple[int, Message]] = []
    record = job.wire.send

    def send(endpoint: int, sent: Sequence[Any]) -> None:
        answers.append((endpoint, decode([bytes(memoryview(f)) for f in sent], [])))
        record(endpoint, sent)

    monkeypatch.setattr(job.wire, "send", send)
    job.coordinator.receive([header(MsgType.PING, s1, s1, 1234), b"{}"])
    assert [(e, m.type, m.req_id) for e, m in answers] == [(s1, MsgType.PONG, 1234)]
    lose(job, s2)
    answers.clear()
    job.coordinator.receive([header(MsgType.PING, s2, s2, 1235), b"{}"])
    assert not [m for _, m in answers if m.type is MsgType.PONG]
