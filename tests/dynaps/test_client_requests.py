"""The client's request paths without processes: routing around gone nodes, parking,
retries after a loss, and what a restarted coordinator is asked again."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dynaps.client.barriers import Barriers
from dynaps.client.handles import Handle
from dynaps.client.holdings import Holdings
from dynaps.client.membership import Membership
from dynaps.client.requests import Requests
from dynaps.client.table import Table
from dynaps.contract import Consistency, ConsistencyModel, NamedTable, Partition, RuntimeConfig
from dynaps.errors import Drained
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock
from dynaps.store.table_store import TableStore
from dynaps.wire import control
from dynaps.wire.codec import decode, encode_reply
from dynaps.wire.protocol import COORDINATOR, RETRY, Message, MsgType, client_of

WORKER = 3  # our node; servers 1 and 2 home keys [0, 4) and [4, 8)
NUM_KEYS = 8


class Recorder:
    """A transport that keeps what is sent."""

    def __init__(self) -> None:
        self.endpoint = client_of(WORKER)
        self.address = "sim://client"
        self.sent: list[tuple[int, Message]] = []
        self.forgotten: set[int] = set()

    def connect(self, endpoint: int, address: str) -> None: ...

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        self.forgotten.add(endpoint)

    def knows(self, endpoint: int) -> bool:
        return True

    def send(self, endpoint: int, frames: Any) -> None:
        self.sent.append((endpoint, decode([bytes(memoryview(f)) for f in frames], LAYOUTS)))

    def recv(self, timeout: float | None = None, spin: bool = False) -> list[Any] | None:
        return None

    def close(self, linger: float = 0.0) -> None: ...

    def take(self) -> list[tuple[int, Message]]:
        sent, self.sent = self.sent, []
        return sent


SPEC = NamedTable(name="W", num_keys=NUM_KEYS, dim=1)
LAYOUTS = [
    TableStore.create(0, SPEC, ShardMap.initial(2, Partition.RANGE, [1, 2]), home=None, shared=False).layout
]


def shard_map(epoch: int, homes: list[int]) -> ShardMap:
    return ShardMap(epoch, 2, Partition.RANGE, np.array(homes, dtype=np.int16))


def membership(
    epoch: int, homes: list[int], lost: tuple[int, ...] = (), incarnation: str = "a"
) -> control.Membership:
    return control.Membership(
        version=epoch,
        incarnation=incarnation,
        phase=control.Phase.RUNNING,
        nodes=[],
        shard_map=shard_map(epoch, homes).to_json(),
        num_workers=1,
        lost=list(lost),
    )


class Client:
    def __init__(self) -> None:
        self.transport = Recorder()
        self.store = TableStore.create(0, SPEC, shard_map(1, [1, 2]), home=None, shared=False)
        bsp = Consistency(model=ConsistencyModel.BSP)
        config = RuntimeConfig(tables=[SPEC], servers=2, workers=1, consistency=bsp)
        control_block = np.zeros(1, dtype=np.uint8)
        self.requests = Requests(
            config,
            WORKER,
            0,
            self.transport,
            [self.store],
            NullLock(),
            control_block,
            self.control,
        )
        self.barriers = Barriers(self.requests)
        self.membership = Membership(self.transport, self.requests, 1, self.barriers.repeat)
        self.membership.apply(membership(1, [1, 2]))
        self.table = Table(self.requests, 0, self.store, Holdings(self.requests))
        self.controls: list[Message] = []

    def control(self, msg: Message) -> None:
        self.controls.append(msg)


def test_a_pull_from_an_owner_that_left_goes_to_the_home() -> None:
    client = Client()
    client.store.loc[:] = 7  # cached owner: a worker node that has since left
    client.requests.apply_membership(shard_map(2, [1, 2]), gone={7}, lost=set())
    handle = client.table.pull([5], wait=False)
    assert isinstance(handle, Handle)
    [(dest, msg)] = client.transport.take()
    assert (dest, msg.type, msg.keys.tolist()) == (2, MsgType.PULL, [5])  # type: ignore[union-attr]


def test_a_request_for_a_gone_home_is_parked_until_the_next_membership() -> None:
    client = Client()
    client.store.loc[:] = 2
    client.requests.apply_membership(shard_map(1, [1, 2]), gone={2}, lost=set())
    client.table.pull([5, 6], wait=False)
    assert client.transport.take() == []  # its keys have no home yet
    client.membership.apply(membership(2, [1, 1]))  # the keys' shard moved to server 1
    [(dest, msg)] = client.transport.take()
    assert (dest, msg.type, msg.keys.tolist()) == (1, MsgType.PULL, [5, 6])  # type: ignore[union-attr]


def test_a_lost_node_gets_the_unanswered_part_of_requests_sent_again() -> None:
    client = Client()
    client.store.loc[:] = 2
    client.table.pull([4, 5], wait=False)
    [(_, sent)] = client.transport.take()
    answer = Message(
        MsgType.PULL_REPLY, sender=2, req_id=sent.req_id, count=1, positions=np.array([0], np.int32)
    )
    answer.values = np.ones((1, 1), dtype=np.float32)
    client.requests.handles[sent.req_id].absorb(answer)
    client.membership.apply(membership(2, [1, 1], lost=(2,)))
    assert {2, client_of(2)} <= client.transport.forgotten
    [(dest, retry)] = client.transport.take()
    assert dest == 1
    assert retry.flags & RETRY
    assert retry.keys is not None
    assert retry.keys.tolist() == [5]
    assert retry.positions is not None
    assert retry.positions.tolist() == [1]


def test_a_restarted_coordinator_is_asked_again_for_the_clock() -> None:
    client = Client()
    client.barriers.clock_min(5)
    client.barriers.clock()  # under bsp: the others are ahead, no wait
    assert [m.type for _, m in client.transport.take()] == [MsgType.CLOCK]
    client.membership.apply(membership(1, [1, 2], incarnation="b"))
    [(dest, msg)] = client.transport.take()
    assert (dest, msg.type, msg.body) == (COORDINATOR, MsgType.CLOCK, control.Clock(clock=1))


def test_a_drained_node_stops_the_table() -> None:
    client = Client()
    client.requests.control[0] = 1
    with pytest.raises(Drained):
        client.table.pull([0])


def test_a_reply_of_the_wrong_kind_or_from_a_non_node_is_refused() -> None:
    """An ACK for a pull would complete it with rows never written (NaN from np.empty)."""
    client = Client()
    client.store.loc[:] = 2
    handle = client.table.pull([5], wait=False)
    assert isinstance(handle, Handle)
    [(_, msg)] = client.transport.take()
    ack = encode_reply(MsgType.ACK, 2, msg.requester, msg.req_id, 0, 1, 0, None, None)
    client.requests.receive(ack)
    assert not handle.done()
    rows = np.ones((1, SPEC.dim), np.float32)
    from_a_client = encode_reply(
        MsgType.PULL_REPLY, client_of(2), msg.requester, msg.req_id, 0, 1, 0, None, rows
    )
    client.requests.receive(from_a_client)
    assert not handle.done()
    client.requests.receive(
        encode_reply(MsgType.PULL_REPLY, 2, msg.requester, msg.req_id, 0, 1, 0, None, rows)
    )
    assert handle.done()
    assert handle.result() is not None


def test_request_ids_do_not_start_at_one() -> None:
    ids = {Client().requests.new_id() for _ in range(4)}
    assert len(ids) == 4
    assert min(ids) > 1 << 20
