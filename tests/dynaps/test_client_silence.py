"""A request whose message or answer was dropped without a membership change is sent again
after a silence, not left to fail the program at its timeout; a copy applied twice would be
a silent error, so every case goes through real nodes and checks what they hold.

The client and the nodes are those of :mod:`tests.dynaps.test_client_retries`; the test
carries the messages by hand and drops the ones it chooses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dynaps.client.handles import Handle
from dynaps.client.requests import Requests
from dynaps.client.retries import SILENCE_SECONDS
from dynaps.client.stages import StageFollower
from dynaps.contract import RuntimeConfig, StageSpec
from dynaps.errors import DynapsTimeoutError
from dynaps.store.shm import NullLock
from dynaps.wire import control
from dynaps.wire.protocol import RETRY, Message, MsgType, TableLayout
from tests.dynaps.simnet import NUM_KEYS, WORKERS, Cluster
from tests.dynaps.test_client_requests import SPEC, WORKER, Client, Recorder, membership
from tests.dynaps.test_client_retries import HOME, KEY, ONE, deliver, home_node, sent_by

SILENCE_NS = int(SILENCE_SECONDS * 1e9)


def client_at_epoch_2() -> Client:
    """A client whose shard map is the nodes' (epoch 2), with KEY cached at its home."""
    client = Client()
    client.membership.apply(membership(2, [1, HOME]))
    client.store.loc[KEY] = HOME
    client.transport.take()
    return client


def silent_for(client: Client, handle: Handle, seconds: float) -> None:
    """What the client does when ``handle`` has had no answer for ``seconds``."""
    requests = client.requests
    requests.retries.resend_silent(handle.started + int(seconds * 1e9), requests.shard_map, requests.epoch)


def the_copy(client: Client, handle: Handle, kind: MsgType) -> Message:
    """The one message the client sent since last asked: ``handle``'s ``kind`` again, marked
    RETRY, to the key's home."""
    [(dest, again)] = client.transport.take()
    assert (dest, again.type, again.req_id, bool(again.flags & RETRY)) == (HOME, kind, handle.req_id, True)
    return again


def test_a_push_whose_message_was_dropped_is_sent_again_after_the_silence_and_applied_once() -> None:
    client = client_at_epoch_2()
    handle = client.table.push([KEY], ONE, wait=False)
    assert isinstance(handle, Handle)
    [(dest, original)] = client.transport.take()  # dropped on its way
    assert (dest, original.type) == (HOME, MsgType.PUSH)
    silent_for(client, handle, SILENCE_SECONDS - 0.5)
    assert client.transport.take() == []  # not yet
    silent_for(client, handle, SILENCE_SECONDS)
    again = the_copy(client, handle, MsgType.PUSH)
    home = home_node(owner=HOME)
    deliver(client, {HOME: home}, [(HOME, again)])
    assert handle.done()
    assert handle.error is None
    assert home.stores[0].values[KEY].tolist() == [1.0]
    assert client.requests.counters["requests_retried"] == 1
    resent = client.requests.usage.totals()  # what the node's /metrics reads, by cause
    assert (resent["requests_resent_silence"], resent["requests_resent_membership"]) == (1, 0)


def test_a_push_applied_whose_answer_was_dropped_is_not_applied_again() -> None:
    """The original reached the home and was applied; its ACK was lost.  The copy sent after
    the silence finds the home's record of it: acknowledged, not applied a second time."""
    client = client_at_epoch_2()
    handle = client.table.push([KEY], ONE, wait=False)
    assert isinstance(handle, Handle)
    [(_, original)] = client.transport.take()
    home = home_node(owner=HOME)
    home.dispatch(original)
    [(_, ack)] = sent_by(home)  # dropped on its way back
    assert ack.type is MsgType.ACK
    silent_for(client, handle, SILENCE_SECONDS)
    deliver(client, {HOME: home}, client.transport.take())
    assert handle.done()
    assert handle.error is None
    assert home.stores[0].values[KEY].tolist() == [1.0]  # once


def test_a_pull_is_sent_again_at_growing_intervals_and_no_more_once_answered() -> None:
    client = client_at_epoch_2()
    home = home_node(owner=HOME)
    home.stores[0].values[KEY] = 7.0
    handle = client.table.pull([KEY], wait=False)
    assert isinstance(handle, Handle)
    client.transport.take()  # the original, dropped
    silent_for(client, handle, SILENCE_SECONDS)
    assert len(client.transport.take()) == 1  # the first copy, dropped too
    # the next copy twice the silence after the first, the one after it four times...
    silent_for(client, handle, 2 * SILENCE_SECONDS)
    silent_for(client, handle, 3 * SILENCE_SECONDS - 0.5)
    assert client.transport.take() == []
    silent_for(client, handle, 3 * SILENCE_SECONDS)
    second = client.transport.take()
    assert [(dest, msg.type, bool(msg.flags & RETRY)) for dest, msg in second] == [(HOME, MsgType.PULL, True)]
    silent_for(client, handle, 7 * SILENCE_SECONDS - 0.5)
    assert client.transport.take() == []
    silent_for(client, handle, 7 * SILENCE_SECONDS)  # four silences after the second
    third = client.transport.take()
    assert len(third) == 1
    deliver(client, {HOME: home}, second + third)  # both copies answered: counted once
    assert handle.done()
    assert handle.result() is not None
    assert np.asarray(handle.result()).tolist() == [[7.0]]
    assert client.requests.retries.silent == {}
    silent_for(client, handle, 100 * SILENCE_SECONDS)
    assert client.transport.take() == []


def test_a_waiting_program_looks_for_silent_requests_and_a_short_timeout_shortens_the_silence() -> None:
    client = client_at_epoch_2()
    requests = client.requests
    handle = client.table.pull([KEY], wait=False)
    assert isinstance(handle, Handle)
    client.transport.take()
    handle.started -= SILENCE_NS  # sent a silence ago
    requests.pump_until(requests.deadline(5.0), lambda: "test")
    the_copy(client, handle, MsgType.PULL)
    requests.pump_until(requests.deadline(5.0), lambda: "test")
    assert client.transport.take() == []  # looked at most once a second, and not yet due anyway
    with pytest.raises(DynapsTimeoutError):
        requests.wait(handle, timeout=0.01)  # the program gives up on it
    silent_for(client, handle, 10 * SILENCE_SECONDS)
    assert (client.transport.take(), requests.retries.silent) == ([], {})  # nothing kept for it

    short = RuntimeConfig(tables=[SPEC], servers=2, workers=1, request_timeout_seconds=8)
    other = Requests(short, WORKER, 0, Recorder(), [client.store], NullLock(), np.zeros(1, np.uint8), print)
    assert other.retries.silence_seconds == 2.0  # a quarter of the timeout, when that is shorter


def test_requests_sent_again_while_keys_move_leave_every_update_applied_once() -> None:
    """Through the simulated job (tests/dynaps/simnet.py): pushes and localizes in flight
    are all sent again at once, copies and originals race, and at the end every key holds
    exactly the increments pushed (the model tests draw ``silence`` at random moments too)."""
    cluster = Cluster()
    for worker in WORKERS:  # each worker's first localize of a shard waits for the coordinator
        cluster.start("localize", worker, list(range(NUM_KEYS)))
        cluster.settle(None)
        cluster.start("push", worker, [0, 1, 5])
        cluster.settle(None)
    # the last worker holds every key now: the others' requests go to it
    cluster.start("localize", WORKERS[0], [0, 5])
    cluster.start("push", WORKERS[1], [0, 5])
    cluster.silence()  # both go again, marked RETRY, to the keys' homes
    retried = sum(ps._requests.counters["requests_retried"] for ps in cluster.clients.values())
    assert retried == 2
    cluster.settle(None)
    cluster.check()  # every key owned once, equal to the increments pushed; all answered


# ----------------------------------------------------------------------------- the coordinator
# A BARRIER, CLOCK or LEASE (or its answer) lost on the way is asked again after a silence;
# the coordinator answers a question asked again as it did the first time
# (test_coordinator_core.py::test_a_question_asked_again_gets_the_first_answer_again).


class Answering(Recorder):
    """A Recorder whose ``recv`` first runs ``on_recv`` (the test's coordinator)."""

    def __init__(self, layouts: list[TableLayout] | None = None) -> None:
        super().__init__(layouts)
        self.on_recv: Callable[[], None] = lambda: None

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        self.on_recv()
        return None


def asked(client: Client, kind: MsgType) -> list[dict[str, Any]]:
    """The bodies of the ``kind`` messages the client sent so far (kept for the next call)."""
    return [msg.body.model_dump() for _, msg in client.transport.sent if msg.type is kind and msg.body]


def answer_the_second(client: Client, kind: MsgType, answer: Callable[[], None]) -> None:
    """The coordinator answers once ``kind`` was asked twice (the first answer was lost)."""
    transport = client.transport
    assert isinstance(transport, Answering)
    transport.on_recv = lambda: answer() if len(asked(client, kind)) == 2 else None


def quiet_client() -> tuple[Client, Answering]:
    client = Client(transport=Answering)
    client.requests.retries.silence_seconds = 0.05
    assert isinstance(client.transport, Answering)
    return client, client.transport


def test_a_barrier_whose_answer_was_lost_is_asked_again_and_passes() -> None:
    client, _ = quiet_client()
    answer_the_second(client, MsgType.BARRIER, lambda: client.barriers.barrier_done(0))
    client.barriers.barrier(timeout=5.0)
    assert [b["generation"] for b in asked(client, MsgType.BARRIER)] == [0, 0]


def test_a_clock_and_a_lease_whose_answers_were_lost_are_asked_again() -> None:
    client, _ = quiet_client()
    answer_the_second(client, MsgType.CLOCK, lambda: client.barriers.clock_min(1))
    assert client.barriers.clock(timeout=5.0) == 1  # under bsp: waits for the slowest clock
    assert [c["clock"] for c in asked(client, MsgType.CLOCK)] == [1, 1]
    answer_the_second(client, MsgType.LEASE, lambda: client.barriers.leased(0, 2))
    shards = client.barriers.data_shards(3, epoch=0, timeout=5.0)
    assert next(shards) == 2
    assert [(b["epoch"], b["finished"]) for b in asked(client, MsgType.LEASE)] == [(0, None), (0, None)]


def test_a_barrier_never_answered_is_asked_at_growing_intervals_until_the_timeout() -> None:
    client, _ = quiet_client()
    with pytest.raises(DynapsTimeoutError):
        client.barriers.barrier(timeout=0.5)
    # asked at 0 s, then after 0.05, 0.1 and 0.2 s more (0.35 s): four at most, however slow
    assert 2 <= len(asked(client, MsgType.BARRIER)) <= 4


def test_a_stage_unit_whose_answer_was_lost_is_reported_again() -> None:
    client, _ = quiet_client()
    follower = StageFollower(client.requests, [StageSpec(name="only", epochs=2, workers=1)])
    answer = control.StageDone(done=0, index=0)
    answer_the_second(client, MsgType.STAGE, lambda: follower.answered(answer))
    units = follower.units(timeout=5.0)
    assert next(units)[1] == 0
    assert [s["done"] for s in asked(client, MsgType.STAGE)] == [None, None]  # where is the job
