"""Requests sent more than once, followed from the client through in-process nodes: a retry
after a loss must leave every update applied once (issue 13, audit findings F2 and F6).

The client is the one of :mod:`tests.dynaps.test_client_requests` (its node's store in this
process); the nodes are real :class:`NodeServer` objects whose messages the test carries by
hand, so it chooses which copy of a request arrives first.
"""

from __future__ import annotations

import numpy as np
import pytest

from dynaps.client import retries, retry_holds
from dynaps.client.handles import Handle
from dynaps.contract import FaultTolerance
from dynaps.node import drain
from dynaps.node.server import NodeServer
from dynaps.store.shm import NullLock
from dynaps.store.table_store import TableStore
from dynaps.wire.codec import decode
from dynaps.wire.protocol import RETRY, Message, MsgType
from tests.dynaps.test_client_requests import SPEC, WORKER, Client, membership, shard_map
from tests.dynaps.test_node_bad_messages import Outbox

HOME = 2  # homes keys [4, 8) of SPEC (server 1 homes [0, 4))
KEY = 5
OTHER = 4  # another worker, which holds KEY in the watermark test
ONE = np.ones((1, SPEC.dim))


def home_node(owner: int) -> NodeServer:
    """Server HOME at epoch 2, whose directory says ``owner`` holds KEY."""
    store = TableStore.create(0, SPEC, shard_map(2, [1, HOME]), home=HOME, shared=False, track_changes=True)
    assert store.owner is not None
    store.owner[KEY] = store.loc[KEY] = owner
    return NodeServer(HOME, Outbox(), [store], shard_map(2, [1, HOME]), NullLock(), flush_interval_ms=0)


def worker_node(node: int, store: TableStore | None = None) -> NodeServer:
    """Worker ``node`` at epoch 2 that holds KEY (``store``: its store, default a new one)."""
    if store is None:
        store = TableStore.create(0, SPEC, shard_map(2, [1, HOME]), home=None, shared=False)
        store.loc[KEY] = node
    return NodeServer(node, Outbox(), [store], shard_map(2, [1, HOME]), NullLock(), flush_interval_ms=0)


def sent_by(node: NodeServer) -> list[tuple[int, Message]]:
    """What ``node`` sent since last asked, decoded."""
    outbox = node.transport
    assert isinstance(outbox, Outbox)
    sent, outbox.sent = outbox.sent, []
    return [(dest, decode([bytes(memoryview(f)) for f in frames], node.layouts)) for dest, frames in sent]


def deliver(client: Client, nodes: dict[int, NodeServer], pending: list[tuple[int, Message]]) -> None:
    """Carry ``pending`` and everything it causes until nothing moves (replies to the client)."""
    while pending:
        dest, msg = pending.pop(0)
        if dest == client.requests.endpoint:
            client.requests._absorb(msg)
            continue
        node = nodes[dest]
        node.dispatch(msg)
        pending += sent_by(node)


def test_a_write_through_push_in_flight_is_sent_again_as_rows_not_as_its_delta() -> None:
    """F2: under write-through the program applied its push to a key its node holds (in
    shared memory; the node never saw it) and waits for the home to have the new row.  A
    loss anywhere makes it send what is unanswered again: the rows as they are now (a
    write-back, which changes nothing when it arrives twice), never the delta, which the
    home would forward to our node to be applied a second time."""
    client = Client(tolerance=FaultTolerance(replication=1, flush_interval_ms=0))
    client.store.loc[:] = WORKER
    handle = client.table.push([KEY], ONE, wait=False)
    assert client.store.values[KEY].tolist() == [1.0]
    [(dest, first)] = client.transport.take()
    assert (dest, first.type) == (WORKER, MsgType.WRITEBACK)  # by way of our node, on its path
    client.membership.apply(membership(2, [1, HOME], lost=(9,)))  # node 9, unrelated to KEY
    resent = client.transport.take()
    assert [(dest, msg.type, msg.req_id) for dest, msg in resent] == [
        (WORKER, MsgType.WRITEBACK, handle.req_id)
    ]
    retry = resent[0][1]
    assert retry.values is not None
    assert retry.positions is not None
    assert (retry.values.tolist(), retry.positions.tolist()) == ([[1.0]], [0])
    # through real nodes: the home keeps our node's row, forwards nothing, and acknowledges
    home, ours = home_node(owner=WORKER), worker_node(WORKER, client.store)
    deliver(client, {HOME: home, WORKER: ours}, [(WORKER, first), *resent])
    assert handle.done()
    assert handle.error is None
    assert client.store.values[KEY].tolist() == [1.0]
    assert home.stores[0].values[KEY].tolist() == [1.0]


def test_a_write_through_push_with_remote_keys_sends_each_part_again_its_own_way() -> None:
    """A push to a key held here and a key held elsewhere: after a loss the local part goes
    again as rows, the remote part as the delta marked RETRY (its node keeps a record)."""
    client = Client(tolerance=FaultTolerance(replication=1, flush_interval_ms=0))
    client.store.loc[:] = WORKER
    client.store.loc[6] = HOME
    handle = client.table.push([KEY, 6], np.ones((2, SPEC.dim)), wait=False)
    assert sorted(msg.type.name for _, msg in client.transport.take()) == ["PUSH", "WRITEBACK"]
    client.membership.apply(membership(2, [1, HOME], lost=(9,)))
    resent = {msg.type: msg for _, msg in client.transport.take()}
    assert set(resent) == {MsgType.WRITEBACK, MsgType.PUSH}
    written, pushed = resent[MsgType.WRITEBACK], resent[MsgType.PUSH]
    assert written.keys is not None
    assert written.positions is not None
    assert (written.keys.tolist(), written.positions.tolist()) == ([KEY], [0])
    assert pushed.keys is not None
    assert pushed.positions is not None
    assert (pushed.keys.tolist(), pushed.positions.tolist(), bool(pushed.flags & RETRY)) == ([6], [1], True)
    assert all(msg.req_id == handle.req_id for msg in resent.values())


def pushed_at_other() -> tuple[Client, NodeServer, dict[int, NodeServer], Handle, tuple[int, Message]]:
    """Push p of ONE to KEY, held by worker OTHER (KEY's home is HOME), applied there: the
    client, OTHER, both nodes by id, p's handle, and OTHER's ACK to the client (not yet read)."""
    client = Client()
    client.store.loc[KEY] = OTHER
    home, other = home_node(owner=OTHER), worker_node(OTHER)
    p = client.table.push([KEY], ONE, wait=False)
    [(dest, first)] = client.transport.take()
    assert dest == OTHER
    other.dispatch(first)
    [ack] = sent_by(other)
    return client, other, {HOME: home, OTHER: other}, p, ack


def test_a_record_outlives_the_answer_while_a_retry_may_still_arrive() -> None:
    """F6: push p reaches worker OTHER, which holds KEY, and is applied; its ACK is unread
    when a loss makes the client send p again, to KEY's home.  The home is slow to take the
    retry (it waits there for the new shard map).  The client then reads the ACK (p is
    answered) and sends push q to OTHER: q's watermark must not let OTHER forget p, or the
    retry the home forwards later is applied a second time."""
    client, other, nodes, p, (to_client, ack) = pushed_at_other()  # its ACK not read yet
    client.membership.apply(membership(2, [1, HOME], lost=(9,)))
    [(dest, retry)] = client.transport.take()
    assert (dest, retry.req_id, bool(retry.flags & RETRY)) == (HOME, p.req_id, True)
    deliver(client, nodes, [(to_client, ack)])
    assert p.done()
    q = client.table.push([KEY], ONE, wait=False)
    [(dest, second)] = client.transport.take()
    assert (dest, second.req_id) == (OTHER, q.req_id)
    assert second.aux <= p.req_id & 0xFFFFFFFF  # p's copy may still arrive
    deliver(client, nodes, [(OTHER, second), (HOME, retry)])
    assert q.done()
    assert other.stores[0].values[KEY].tolist() == [2.0]  # p and q, each once


def test_the_hold_outlasts_what_a_node_that_left_still_forwards() -> None:
    """A node that left forwards stragglers for LEAVE_LINGER; a copy it forwards then takes
    a hop or two more before it arrives."""
    assert retry_holds.RESENT_HOLD_SECONDS >= drain.LEAVE_LINGER + 2.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_id_sent_again_is_held_back_from_the_watermark_for_the_hold_time() -> None:
    """A request sent twice stays below the watermark until RESENT_HOLD_SECONDS after its
    answer (or its last send, if later), then no longer holds nodes' records back."""
    clock = Clock()
    client = Client()
    client.requests.retries.resent.clock = clock
    client.store.loc[:] = HOME
    p = client.table.push([KEY], ONE, wait=False)
    [(_, first)] = client.transport.take()
    client.membership.apply(membership(2, [1, HOME], lost=(9,)))
    client.transport.take()
    clock.now += 1.0
    ack = Message(MsgType.ACK, sender=HOME, requester=client.requests.endpoint, req_id=p.req_id, count=1)
    client.requests._absorb(ack)
    assert p.done()
    held = p.req_id & 0xFFFFFFFF
    clock.now += retry_holds.RESENT_HOLD_SECONDS - 0.5
    client.table.push([KEY], ONE, wait=False)
    [(_, q)] = client.transport.take()
    assert q.aux == held
    clock.now += 1.0  # the hold has passed since p was answered
    client.requests._absorb(Message(MsgType.ACK, sender=HOME, req_id=q.req_id, count=1))
    client.table.push([KEY], ONE, wait=False)
    [(_, r)] = client.transport.take()
    assert r.aux == r.req_id & 0xFFFFFFFF  # nothing older is unanswered or held any more
    assert first.aux == first.req_id & 0xFFFFFFFF


def test_a_late_answer_to_a_request_sent_again_after_a_departure_is_ignored_quietly() -> None:
    """A pull in flight when its node left is sent again to the new home; the first node
    may still answer (it forwards for a while): that answer is a duplicate, not an error."""
    client = Client()
    client.store.loc[:] = HOME
    handle = client.table.pull([KEY], wait=False)
    [(_, first)] = client.transport.take()
    client.requests.apply_membership(shard_map(2, [1, 1]), gone={HOME}, lost=set())  # HOME left
    [(dest, retry)] = client.transport.take()
    assert (dest, retry.req_id) == (1, first.req_id)
    rows = np.ones((1, SPEC.dim), np.float32)
    for sender in (1, HOME):  # the retry's answer, then the original's, forwarded late
        answer = Message(MsgType.PULL_REPLY, sender=sender, req_id=first.req_id, count=1)
        answer.values = rows
        client.requests._absorb(answer)  # the second raised "reply for unknown request"
    assert handle.done()


# ----------------------------------------------------------------------------- departures
# Updates in flight when a node leaves are sent again with RESEND_UPDATES_AFTER_DEPARTURE (on
# since the node side hands records on along every route a key leaves by).


def test_without_the_switch_a_departure_sends_no_update_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retries, "RESEND_UPDATES_AFTER_DEPARTURE", False)
    client = Client()
    client.store.loc[:] = HOME
    client.table.push([KEY], ONE, wait=False)
    client.transport.take()
    client.requests.apply_membership(shard_map(2, [1, 1]), gone={HOME}, lost=set())
    assert client.transport.take() == []


def test_a_departure_sends_updates_in_flight_again_as_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the switch on (the default since 2026-12-06), e7effb5's restriction is gone: a push
    in flight to a node that left goes again, marked RETRY, to the keys' home now, like a pull
    or a localize."""
    assert retries.RESEND_UPDATES_AFTER_DEPARTURE
    client = Client()
    client.store.loc[:] = HOME
    pushed = client.table.push([KEY], ONE, wait=False)
    client.table.set([6], ONE, wait=False)
    client.transport.take()
    client.requests.apply_membership(shard_map(2, [1, 1]), gone={HOME}, lost=set())  # HOME left
    resent = client.transport.take()
    assert sorted((dest, msg.type.name, bool(msg.flags & RETRY)) for dest, msg in resent) == [
        (1, "PUSH", True),
        (1, "SET", True),
    ]
    assert pushed.req_id in client.requests.retries.resent
    assert client.requests.usage.totals()["requests_resent_membership"] == 2


def test_a_push_resent_after_a_departure_is_applied_once_where_its_key_went(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The route that carries records today: worker OTHER applied push p to KEY (its ACK
    still unread), released KEY to its home while draining (the TRANSFER carries OTHER's
    records), and left.  The client sends p again to the home, which answers it from the
    record; the original's late ACK is a duplicate."""
    client, other, nodes, p, (to_client, ack) = pushed_at_other()  # its ACK read only at the end
    home = nodes[HOME]
    assert other.departures.release_owned() == 1  # OTHER drains: KEY goes back to HOME
    deliver(client, nodes, sent_by(other))
    assert home.stores[0].loc[KEY] == HOME
    assert home.stores[0].values[KEY].tolist() == [1.0]
    client.requests.apply_membership(shard_map(2, [1, HOME]), gone={OTHER}, lost=set())  # OTHER left
    [(dest, retry)] = client.transport.take()
    assert (dest, retry.type, retry.req_id, bool(retry.flags & RETRY)) == (HOME, MsgType.PUSH, p.req_id, True)
    deliver(client, nodes, [(dest, retry)])
    assert p.done()
    assert home.stores[0].values[KEY].tolist() == [1.0]
    deliver(client, nodes, [(to_client, ack)])  # the original's answer, late
