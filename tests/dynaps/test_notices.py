"""A worker node's localize notices to its training process (dynaps.store.notices): the ring
in shared memory, its eventfd, and the transport's wait that wakes on it."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from dynaps.contract import NamedTable, Partition
from dynaps.node.server import NodeServer
from dynaps.store.notices import CAPACITY, Notices
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock, SharedLock
from dynaps.store.table_store import TableStore
from dynaps.wire import messages
from dynaps.wire.codec import decode
from dynaps.wire.protocol import MsgType, client_of
from dynaps.wire.zmq_transport import ZmqTransport
from tests.dynaps.test_node_bad_messages import SERVER, WORKER, Outbox

KEY = bytes(range(32))


@pytest.fixture
def lock() -> Iterator[SharedLock]:
    shared = SharedLock.create()
    yield shared
    shared.unlink()


@pytest.fixture
def ends(lock: SharedLock) -> Iterator[tuple[Notices, Notices]]:
    """The node's end and the training process's end of one ring (two mappings)."""
    node = Notices.create(lock)
    segment_fd, event_fd = node.fds()
    client = Notices.attach(os.dup(segment_fd), os.dup(event_fd), lock)
    yield node, client
    client.close()
    node.close()


def test_notices_arrive_in_order_across_the_ring_end(ends: tuple[Notices, Notices]) -> None:
    node, client = ends
    assert client.take() == []
    taken = []
    for round_ in range(3):  # past the ring's end twice
        for i in range(CAPACITY - 1):
            assert node.post(round_ * CAPACITY + i, 0, i + 1)
        assert client.waiting()
        taken.extend(client.take())
        assert not client.waiting()
    assert taken == [(r * CAPACITY + i, 0, i + 1) for r in range(3) for i in range(CAPACITY - 1)]


def test_a_full_ring_refuses_and_loses_nothing(ends: tuple[Notices, Notices]) -> None:
    node, client = ends
    for i in range(CAPACITY):
        assert node.post(i, 1, 1)
    assert not node.post(CAPACITY, 1, 1), "a full ring must make the node send the message"
    assert [req for req, _table, _count in client.take()] == list(range(CAPACITY))
    assert node.post(CAPACITY, 1, 1)
    assert client.take() == [(CAPACITY, 1, 1)]


def _post_later(segment_fd: int, event_fd: int, lock_name: str, delay: float) -> None:
    time.sleep(delay)
    lock = SharedLock.open(lock_name)
    Notices.attach(segment_fd, event_fd, lock).post(7, 0, 3)


def test_a_wait_wakes_when_another_process_posts(ends: tuple[Notices, Notices], lock: SharedLock) -> None:
    node, client = ends
    transport = ZmqTransport(5, KEY, spin=100e-6)
    transport.wake_on(client.event_fd, client.waiting)
    segment_fd, event_fd = node.fds()
    poster = multiprocessing.get_context("fork").Process(
        target=_post_later, args=(segment_fd, event_fd, lock.name, 0.2)
    )
    try:
        poster.start()
        started = time.monotonic()
        assert transport.recv(timeout=20.0, spin=1e-3) is None
        assert time.monotonic() - started < 10.0, "the wait did not wake on the notice"
        assert client.take() == [(7, 0, 3)]
    finally:
        poster.join(10)
        if poster.is_alive():
            poster.kill()
        transport.close()


def test_a_stale_wake_up_is_cleared_and_the_wait_blocks_again(ends: tuple[Notices, Notices]) -> None:
    """A post that lands while the training process reads the ring leaves the eventfd set
    with nothing to read: take() clears it, so the next wait sleeps instead of spinning."""
    node, client = ends
    transport = ZmqTransport(5, KEY)
    transport.wake_on(client.event_fd, client.waiting)
    try:
        assert node.post(1, 0, 1)
        assert client.take() == [(1, 0, 1)]
        os.eventfd_write(node.event_fd, 1)  # as if posted after the ring was read
        assert transport.recv(timeout=5.0) is None  # woken at once
        assert client.take() == []
        cpu = time.process_time()
        started = time.monotonic()
        assert transport.recv(timeout=0.3) is None
        assert time.monotonic() - started >= 0.25
        assert time.process_time() - cpu < 0.15, "the wait spun instead of blocking"
    finally:
        transport.close()


def test_messages_still_arrive_while_waiting_on_notices(ends: tuple[Notices, Notices]) -> None:
    _node, client = ends
    receiver = ZmqTransport(5, KEY)
    receiver.wake_on(client.event_fd, client.waiting)
    sender = ZmqTransport(6, KEY)
    sender.connect(5, receiver.address)
    try:
        header = bytes(6) + (6).to_bytes(2, "little")  # bytes 6-8 name the sender (dynaps.wire.auth)
        timer = threading.Timer(0.1, lambda: sender.send(5, [header]))
        timer.start()
        frames = receiver.recv(timeout=20.0)
        timer.join()
        assert frames is not None
        assert bytes(frames[0]) == header
    finally:
        sender.close()
        receiver.close()


def test_a_node_posts_its_own_clients_localize_and_sends_when_the_ring_is_full() -> None:
    shard_map = ShardMap.initial(2, Partition.RANGE, [SERVER])
    store = TableStore.create(0, NamedTable(name="W", num_keys=8, dim=2), shard_map, home=None, shared=False)
    outbox = Outbox()
    notices = Notices.create(NullLock())
    reader = Notices.attach(os.dup(notices.fds()[0]), os.dup(notices.fds()[1]), NullLock())
    node = NodeServer(WORKER, outbox, [store], shard_map, NullLock(), notices=notices)
    node.peers |= {SERVER, client_of(WORKER)}
    rows = np.ones((2, 2), dtype=np.float32)

    def arrive(req_id: int, first: int) -> list[MsgType]:
        outbox.sent.clear()
        keys = np.array([first, first + 1], dtype=np.int64)
        node.dispatch(messages.transfer(SERVER, client_of(WORKER), req_id, 0, keys, rows, ()))
        return [decode(frames, node.layouts).type for _dest, frames in outbox.sent]

    try:
        assert arrive(1, 0) == [MsgType.TRANSFER_DONE]  # no LOCALIZED message: a notice
        assert reader.take() == [(1, 0, 2)]
        for i in range(CAPACITY):
            assert notices.post(100 + i, 0, 1)
        assert arrive(2, 2) == [MsgType.LOCALIZED, MsgType.TRANSFER_DONE]  # the ring is full
        assert len(reader.take()) == CAPACITY
        assert arrive(3, 4) == [MsgType.TRANSFER_DONE]
        assert reader.take() == [(3, 0, 2)]
    finally:
        reader.close()
        notices.close()
