"""A push sent again (a client retries what was in flight when any node was lost) is applied
once, with or without replication; the retry is acknowledged again."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from dynaps.contract import NamedTable, Partition
from dynaps.node.server import NodeServer
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock
from dynaps.store.table_store import TableStore
from dynaps.wire import messages
from dynaps.wire.codec import decode
from dynaps.wire.protocol import RETRY, MsgType, client_of
from tests.dynaps.test_node_bad_messages import Outbox

SERVER, WORKER = 1, 3


def server_node(flush_interval_ms: int | None) -> tuple[NodeServer, Outbox]:
    shard_map = ShardMap.initial(2, Partition.RANGE, [SERVER])
    table = NamedTable(name="W", num_keys=8, dim=2)
    store = TableStore.create(0, table, shard_map, home=SERVER, shared=False)
    outbox = Outbox()
    server = NodeServer(SERVER, outbox, [store], shard_map, NullLock(), flush_interval_ms=flush_interval_ms)
    return server, outbox


def acks(server: NodeServer, outbox: Outbox) -> list[int]:
    found: list[Any] = [decode(frames, server.layouts) for _, frames in outbox.sent]
    return [msg.count for msg in found if msg.type == MsgType.ACK]


@pytest.mark.parametrize("flush_interval_ms", [None, 100], ids=["no-replication", "replication"])
def test_a_retried_push_is_applied_once_and_acknowledged_again(flush_interval_ms: int | None) -> None:
    server, outbox = server_node(flush_interval_ms)
    keys = np.array([0, 5], dtype=np.int64)
    ones = np.ones((2, 2))
    requester = client_of(WORKER)
    server.dispatch(messages.request(MsgType.PUSH, requester, 7, 0, keys, values=ones))
    again = messages.request(MsgType.PUSH, requester, 7, 0, keys, values=ones, flags=RETRY)
    server.dispatch(again)
    np.testing.assert_array_equal(server.stores[0].values[keys], ones)
    assert acks(server, outbox) == [2, 2]
    # a new request of the same client is applied
    server.dispatch(messages.request(MsgType.PUSH, requester, 8, 0, keys, values=ones))
    np.testing.assert_array_equal(server.stores[0].values[keys], 2 * ones)


def test_a_localize_naming_keys_twice_or_out_of_order_moves_each_key_once() -> None:
    """The home sorts only keys that come unsorted (a client sends them sorted and unique)."""
    server, outbox = server_node(None)
    for keys, moved in (([5, 2, 5, 0], [0, 2, 5]), ([3, 6], [3, 6]), ([7, 7], [7])):
        outbox.sent.clear()
        request = messages.request(MsgType.LOCALIZE, client_of(WORKER), 9, 0, np.array(keys, dtype=np.int64))
        server.dispatch(request)
        sent = [
            (dest, decode([bytes(memoryview(f)) for f in frames], server.layouts))
            for dest, frames in outbox.sent
        ]
        transfers = [(dest, msg) for dest, msg in sent if msg.type == MsgType.TRANSFER]
        assert len(transfers) == 1
        dest, transfer = transfers[0]
        assert dest == WORKER
        assert transfer.keys is not None
        assert transfer.keys.tolist() == moved
        owner = server.stores[0].owner
        assert owner is not None
        assert owner[moved].tolist() == [WORKER] * len(moved)


def test_a_flush_reads_marks_the_training_process_sets_meanwhile() -> None:
    """A worker's training process marks the keys it changes in an array it shares with its
    node while the node's flush reads it (another process: no lock, no GIL between them).
    numpy refuses to count nonzeros that change under it; the flush must not fail, and every
    key marked is written back by the flush after its mark."""
    shard_map = ShardMap.initial(2, Partition.RANGE, [SERVER])
    num_keys = 2_000_000  # a read long enough for marks to land in it
    table = NamedTable(name="W", num_keys=num_keys, dim=1)
    store = TableStore.create(0, table, shard_map, home=None, shared=False, track_changes=True)
    store.loc[:] = WORKER  # every key held here: a flush writes back whatever is marked
    outbox = Outbox()
    node = NodeServer(WORKER, outbox, [store], shard_map, NullLock(), flush_interval_ms=1)
    assert node.writeback is not None
    dirty = store.dirty
    assert dirty is not None
    marked = np.random.default_rng(0).integers(0, num_keys, size=200_000)
    stop = threading.Event()

    def mark() -> None:  # a fancy-indexed assignment releases the GIL: it runs beside the read
        while not stop.is_set():
            dirty[marked] = 1

    marker = threading.Thread(target=mark)
    marker.start()
    try:
        for turn in range(1, 40):
            node.writeback.flush(now=float(turn))
    finally:
        stop.set()
        marker.join()
    node.writeback.flush(now=1000.0)  # after the last mark
    written = [decode([bytes(memoryview(f)) for f in frames], node.layouts) for _, frames in outbox.sent]
    keys = np.concatenate([m.keys for m in written if m.type == MsgType.WRITEBACK and m.keys is not None])
    assert np.isin(marked, keys).all()
    assert not dirty.any()
