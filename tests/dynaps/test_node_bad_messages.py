"""A node drops messages it cannot act on, counts them, and keeps serving."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dynaps.contract import NamedTable, Partition
from dynaps.node import server as node_server
from dynaps.node.server import NodeServer
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock
from dynaps.store.table_store import TableStore
from dynaps.wire import messages
from dynaps.wire.codec import decode, encode
from dynaps.wire.protocol import FINAL, Message, MsgType, client_of

SERVER, WORKER = 1, 3


class Outbox:
    """A transport that keeps what is sent."""

    endpoint = WORKER
    address = "test://3"
    rejected = 0
    last_rejected = ""

    def __init__(self) -> None:
        self.sent: list[tuple[int, list[Any]]] = []

    def connect(self, endpoint: int, address: str) -> None: ...

    def forget(self, endpoint: int, linger: float = 0.0) -> None: ...

    def knows(self, endpoint: int) -> bool:
        return True

    def send(self, endpoint: int, frames: Any) -> None:
        self.sent.append((endpoint, list(frames)))

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        return None

    def close(self, linger: float = 0.0) -> None: ...


def worker_node() -> tuple[NodeServer, Outbox]:
    shard_map = ShardMap.initial(2, Partition.RANGE, [SERVER])
    store = TableStore.create(0, NamedTable(name="W", num_keys=8, dim=2), shard_map, home=None, shared=False)
    outbox = Outbox()
    server = NodeServer(WORKER, outbox, [store], shard_map, NullLock())
    server.peers.add(SERVER)
    return server, outbox


def test_shard_copy_to_a_node_that_homes_nothing_is_counted_and_dropped() -> None:
    server, outbox = worker_node()
    keys = np.array([0, 1], dtype=np.int64)
    copy = Message(
        MsgType.SHARD_COPY,
        SERVER,
        SERVER,
        7,
        0,
        len(keys),
        flags=FINAL,
        keys=keys,
        dir_owner=np.array([SERVER, SERVER], dtype=np.int16),
        dir_moving=np.array([-1, -1], dtype=np.int16),
        values=np.ones((2, 2), dtype=np.float32),
        states=(),
    )
    assert server.receive(encode(copy)) is None  # no exception escapes to the node's loop
    assert server.stats["malformed"] == 1
    assert not server.migrations.incoming
    assert not outbox.sent  # in particular no MIGRATE_READY
    # and the node still serves
    pull = Message(MsgType.PULL, SERVER, SERVER, 8, 0, 1, keys=np.array([0], dtype=np.int64))
    server.stores[0].loc[0] = WORKER
    server.receive(encode(pull))
    assert [decode(frames, server.layouts).type for _, frames in outbox.sent] == [MsgType.PULL_REPLY]


def test_a_request_from_an_epoch_far_ahead_is_dropped_not_parked() -> None:
    """Epoch 2**32-1 was never issued: waiting for it would keep the request for ever."""
    server, _ = worker_node()
    keys = np.array([0], dtype=np.int64)
    push = messages.request(
        MsgType.PUSH, SERVER, 1, 0, keys, values=np.ones((1, 2), np.float32), epoch=2**32 - 1
    )
    for _ in range(3):
        server.receive(encode(push))
    assert server.future == []
    assert server.stats["malformed"] == 3
    push.epoch = server.shard_map.epoch + 1  # one ahead: a lag, it waits for that epoch
    server.receive(encode(push))
    assert len(server.future) == 1


def test_requests_ahead_of_the_node_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = worker_node()
    monkeypatch.setattr(node_server, "MAX_FUTURE", 5)
    keys = np.array([0], dtype=np.int64)
    pull = messages.request(MsgType.PULL, SERVER, 1, 0, keys, epoch=server.shard_map.epoch + 1)
    for _ in range(8):
        server.receive(encode(pull))
    assert len(server.future) == 5
    assert server.stats["malformed"] == 3


def test_a_request_of_a_member_s_program_not_announced_yet_is_served() -> None:
    """A program that just attached sends at once; the membership naming it may reach a node
    after its push (or a server's forwarded copy): served, and its answer waits for the
    address. A program of a node that is no member is still dropped."""
    server, outbox = worker_node()
    server.stores[0].loc[0] = WORKER
    keys = np.array([0], dtype=np.int64)
    newcomer = client_of(SERVER)  # node 1 is a member; its program is not announced here yet
    assert newcomer not in server.peers
    pull = Message(MsgType.PULL, newcomer, newcomer, 9, 0, 1, keys=keys)
    server.receive(encode(pull))
    assert [(dest, decode(frames, server.layouts).type) for dest, frames in outbox.sent] == [
        (newcomer, MsgType.PULL_REPLY)
    ]
    stranger = client_of(42)
    server.receive(encode(Message(MsgType.PULL, stranger, stranger, 10, 0, 1, keys=keys)))
    assert server.stats["malformed"] == 1
    assert len(outbox.sent) == 1
