"""Rows written back (and written through) bring the records of the updates they include, so a
retry after a holder died is applied once; keys that move under write-through are never
acknowledged before their home has them (audit findings F5, F7, F9 of issue 13).

One process, NodeServer objects joined by hand: each message a node sends is decoded from
its outbox and dispatched at the node it was sent to, in the order a test chooses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dynaps.contract import FaultTolerance, NamedTable, Partition
from dynaps.node.server import NodeServer
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.wire import messages
from dynaps.wire.codec import decode
from dynaps.wire.protocol import NO_ENDPOINT, RETRY, Message, MsgType, client_of
from tests.dynaps import test_client_requests as client_requests
from tests.dynaps.test_exactly_once import server_node
from tests.dynaps.test_node_bad_messages import Outbox

HOME, HOLDER, NEW_OWNER = 1, 3, 5
CLIENT = client_of(6)  # a training process whose pushes other nodes serve
ONES = np.ones((1, 2), dtype=np.float32)  # the table's dtype, as a decoded message has it
KEY = np.array([5], dtype=np.int64)


def worker_node(me: int, flush_interval_ms: int, homes: list[int] | None = None) -> tuple[NodeServer, Outbox]:
    """A worker node of a job whose keys are homed on ``homes`` (a 2-shard map)."""
    shard_map = ShardMap.initial(2, Partition.RANGE, homes or [HOME])
    table = NamedTable(name="W", num_keys=8, dim=2)
    store = TableStore.create(0, table, shard_map, home=None, shared=False, track_changes=True)
    outbox = Outbox()
    node = NodeServer(me, outbox, [store], shard_map, NullLock(), flush_interval_ms=flush_interval_ms)
    return node, outbox


def sent(node: NodeServer, outbox: Outbox) -> list[tuple[int, Message]]:
    """What ``node`` sent since the last call, decoded, with each destination."""
    found = [
        (dest, decode([bytes(memoryview(f)) for f in frames], node.layouts)) for dest, frames in outbox.sent
    ]
    outbox.sent.clear()
    return found


def of_type(found: list[tuple[int, Message]], kind: MsgType) -> list[tuple[int, Message]]:
    return [(dest, msg) for dest, msg in found if msg.type == kind]


def push(requester: int, req_id: int, keys: Any, flags: int = 0, positions: Any = None) -> Message:
    keys = np.asarray(keys, dtype=np.int64)
    rows = np.ones((len(keys), 2), dtype=np.float32)
    return messages.request(
        MsgType.PUSH, requester, req_id, 0, keys, values=rows, flags=flags, positions=positions
    )


def write_back(sender: int, requester: int, req_id: int, rows: Any, positions: Any = None) -> Message:
    rows = np.asarray(rows, dtype=np.float32).reshape(1, 2)
    return messages.rows(MsgType.WRITEBACK, sender, requester, req_id, 0, KEY, rows, (), positions=positions)


def held_by(server: NodeServer, key: int, holder: int) -> None:
    store = server.stores[0]
    assert store.owner is not None
    store.owner[key] = store.loc[key] = holder


# ------------------------------------------------------------------ F5: records of written-back rows


@pytest.mark.parametrize("flush_interval_ms", [0, 100], ids=["write-through", "write-back"])
def test_a_retry_after_the_holder_died_is_not_applied_again_on_the_rows_it_wrote_back(
    flush_interval_ms: int,
) -> None:
    """The home kept rows a holder wrote back on a client's behalf, then took the key back
    from the dead holder: the client's retry of that push is answered, not applied again."""
    server, outbox = server_node(flush_interval_ms)
    held_by(server, 5, HOLDER)
    server.dispatch(write_back(HOLDER, CLIENT, 7, ONES, positions=np.array([0], dtype=np.int32)))
    server.take_back_from_lost({HOLDER})
    sent(server, outbox)
    server.dispatch(push(CLIENT, 7, [5], flags=RETRY))
    np.testing.assert_array_equal(server.stores[0].values[5], [1, 1])
    acks = of_type(sent(server, outbox), MsgType.ACK)
    assert [(dest, msg.req_id, msg.count) for dest, msg in acks] == [(CLIENT, 7, 1)]


def test_a_flush_brings_the_records_of_the_updates_it_writes_back() -> None:
    """Write-back mode: a worker applied a client's push and acknowledged it; its flush is all
    the home has of it when the worker dies, and the retry must find it there."""
    worker, worker_out = worker_node(HOLDER, 100)
    worker.stores[0].loc[5] = HOLDER
    worker.dispatch(push(CLIENT, 7, [5]))
    assert of_type(sent(worker, worker_out), MsgType.ACK)
    assert worker.writeback is not None
    worker.writeback.flush(now=1000.0)
    written = of_type(sent(worker, worker_out), MsgType.WRITEBACK)
    assert [dest for dest, _ in written] == [HOME]
    server, _ = server_node(100)
    held_by(server, 5, HOLDER)
    server.dispatch(written[0][1])
    server.take_back_from_lost({HOLDER})
    server.dispatch(push(CLIENT, 7, [5], flags=RETRY))
    np.testing.assert_array_equal(server.stores[0].values[5], [1, 1])


def test_a_write_through_split_over_homes_claims_only_its_own_positions() -> None:
    """A worker writes a whole push through to two homes: each home's record names the
    positions it got, so a retry of the whole request there is answered for those only."""
    homes = [1, 2]  # keys 0..3 homed on 1, 4..7 on 2
    worker, worker_out = worker_node(HOLDER, 0, homes)
    worker.stores[0].loc[[1, 5]] = HOLDER
    worker.dispatch(push(CLIENT, 7, [1, 5]))  # whole: no positions
    written = dict(of_type(sent(worker, worker_out), MsgType.WRITEBACK))
    assert sorted(written) == homes
    shard_map = ShardMap.initial(2, Partition.RANGE, homes)
    table = NamedTable(name="W", num_keys=8, dim=2)
    store = TableStore.create(0, table, shard_map, home=1, shared=False)
    outbox = Outbox()
    home = NodeServer(1, outbox, [store], shard_map, NullLock(), flush_interval_ms=0)
    held_by(home, 1, HOLDER)
    home.dispatch(written[1])
    sent(home, outbox)
    home.dispatch(push(CLIENT, 7, [1, 5], flags=RETRY, positions=np.array([0, 1], dtype=np.int32)))
    np.testing.assert_array_equal(store.values[1], [1, 1])  # not applied again
    found = sent(home, outbox)
    assert [
        (m.count, m.positions.tolist()) for _, m in of_type(found, MsgType.ACK) if m.positions is not None
    ] == [(1, [0])]
    forwarded = of_type(found, MsgType.PUSH)
    assert [(dest, m.keys.tolist()) for dest, m in forwarded if m.keys is not None] == [(2, [5])]


def test_a_recovery_copy_brings_the_homes_records() -> None:
    """A key was on its way from a holder that died to a new owner: the home re-sends its own
    copy (with the holder's written-back rows), and the records of what that copy includes."""
    server, outbox = server_node(100)
    held_by(server, 5, HOLDER)
    server.dispatch(write_back(HOLDER, CLIENT, 7, ONES, positions=np.array([0], dtype=np.int32)))
    server.dispatch(messages.request(MsgType.LOCALIZE, client_of(NEW_OWNER), 1, 0, KEY))
    sent(server, outbox)
    server.take_back_from_lost({HOLDER})
    copies = of_type(sent(server, outbox), MsgType.TRANSFER)
    assert [dest for dest, _ in copies] == [NEW_OWNER]
    worker, _ = worker_node(NEW_OWNER, 100)
    worker.stores[0].loc[5] = INCOMING
    worker.dispatch(copies[0][1])
    np.testing.assert_array_equal(worker.stores[0].values[5], [1, 1])
    worker.dispatch(push(CLIENT, 7, [5], flags=RETRY))
    np.testing.assert_array_equal(worker.stores[0].values[5], [1, 1])


# ------------------------------------------------------------------ F7, F9: keys that move


@pytest.mark.parametrize("flush_interval_ms", [0, 100], ids=["write-through", "write-back"])
def test_keys_that_arrive_are_written_back_before_their_arrival_is_confirmed(flush_interval_ms: int) -> None:
    """The new holder writes back what it received (with the records that came with it)
    before it tells the home that the keys arrived: the home's copy then has every update
    the old holder made, whoever of the two dies next."""
    worker, outbox = worker_node(NEW_OWNER, flush_interval_ms)
    worker.stores[0].loc[5] = INCOMING
    records = {"records": [[CLIENT, 7, [0], [5]]]}
    transfer = messages.transfer(HOLDER, client_of(NEW_OWNER), 9, 0, KEY, 3 * ONES, (), records=records)
    worker.dispatch(transfer)
    found = sent(worker, outbox)
    kinds = [
        (dest, msg.type) for dest, msg in found if msg.type in (MsgType.WRITEBACK, MsgType.TRANSFER_DONE)
    ]
    assert kinds == [(HOME, MsgType.WRITEBACK), (HOME, MsgType.TRANSFER_DONE)]
    written = of_type(found, MsgType.WRITEBACK)[0][1]
    assert written.keys is not None
    assert written.keys.tolist() == [5]
    np.testing.assert_array_equal(written.values, 3 * ONES)
    assert written.records == records


def test_a_row_written_through_by_a_key_on_its_way_is_acknowledged_once_the_new_owner_wrote_it_back() -> None:
    """The old holder's row reaches the home after the key was redirected: the home keeps
    the new owner's rows only, so it acknowledges the update once the new owner's write-back
    (which includes it) is in, at the arrival notice behind it."""
    server, outbox = server_node(0)
    held_by(server, 5, HOLDER)
    server.dispatch(messages.request(MsgType.LOCALIZE, client_of(NEW_OWNER), 1, 0, KEY))
    sent(server, outbox)
    server.dispatch(write_back(HOLDER, CLIENT, 7, ONES, positions=np.array([0], dtype=np.int32)))
    assert not of_type(sent(server, outbox), MsgType.ACK), "acknowledged before the home has the update"
    server.dispatch(write_back(NEW_OWNER, NO_ENDPOINT, 0, ONES))  # the new owner's arrival
    server.dispatch(messages.transfer_done(NEW_OWNER, 1, 0, KEY))
    acks = of_type(sent(server, outbox), MsgType.ACK)
    assert [(dest, msg.req_id, msg.count) for dest, msg in acks] == [(CLIENT, 7, 1)]
    np.testing.assert_array_equal(server.stores[0].values[5], [1, 1])


def test_a_row_written_through_by_a_key_on_its_way_is_not_acknowledged_if_the_new_owner_dies() -> None:
    """The new owner dies before its write-back: the home takes the key back without the
    update, never acknowledges it, and applies the client's retry once."""
    server, outbox = server_node(0)
    held_by(server, 5, HOLDER)
    server.dispatch(messages.request(MsgType.LOCALIZE, client_of(NEW_OWNER), 1, 0, KEY))
    server.dispatch(write_back(HOLDER, CLIENT, 7, ONES, positions=np.array([0], dtype=np.int32)))
    server.take_back_from_lost({NEW_OWNER})
    server.dispatch(messages.transfer_done(HOLDER, 1, 0, np.array([4], dtype=np.int64)))  # another key's
    assert not of_type(sent(server, outbox), MsgType.ACK)
    np.testing.assert_array_equal(server.stores[0].values[5], [0, 0])
    server.dispatch(push(CLIENT, 7, [5], flags=RETRY, positions=np.array([0], dtype=np.int32)))
    np.testing.assert_array_equal(server.stores[0].values[5], [1, 1])
    assert [m.req_id for _, m in of_type(sent(server, outbox), MsgType.ACK)] == [7]


def test_a_late_row_of_the_old_owner_never_replaces_the_new_owners() -> None:
    """The old holder's rows may reach the home on either side of the new owner's arrival
    notice (they take different paths): none of them replaces the newer row the new owner
    wrote back, and every update is acknowledged."""
    server, outbox = server_node(0)
    held_by(server, 5, HOLDER)
    server.dispatch(messages.request(MsgType.LOCALIZE, client_of(NEW_OWNER), 1, 0, KEY))
    at = np.array([0], dtype=np.int32)
    server.dispatch(write_back(NEW_OWNER, NO_ENDPOINT, 0, 2 * ONES))  # arrival: both updates
    server.dispatch(write_back(HOLDER, CLIENT, 7, ONES, positions=at))  # the first, late
    server.dispatch(messages.transfer_done(NEW_OWNER, 1, 0, KEY))
    server.dispatch(write_back(HOLDER, CLIENT, 8, 2 * ONES, positions=at))  # the second, later
    np.testing.assert_array_equal(server.stores[0].values[5], [2, 2])
    assert sorted(m.req_id for _, m in of_type(sent(server, outbox), MsgType.ACK)) == [7, 8]


def test_a_retry_a_worker_applied_is_written_through_again() -> None:
    """Write-through: a worker answers a retry it applied before by writing the key through
    again, for the home's chain to acknowledge; the first write-through may have died with
    its home."""
    worker, outbox = worker_node(HOLDER, 0)
    worker.stores[0].loc[5] = HOLDER
    worker.dispatch(push(CLIENT, 7, [5]))
    first = sent(worker, outbox)
    assert not of_type(first, MsgType.ACK)
    assert [(dest, m.requester, m.req_id) for dest, m in of_type(first, MsgType.WRITEBACK)] == [
        (HOME, CLIENT, 7)
    ]
    worker.dispatch(push(CLIENT, 7, [5], flags=RETRY, positions=np.array([0], dtype=np.int32)))
    again = sent(worker, outbox)
    assert not of_type(again, MsgType.ACK), "acknowledged without the home having it"
    written = of_type(again, MsgType.WRITEBACK)
    assert [(dest, m.requester, m.req_id) for dest, m in written] == [(HOME, CLIENT, 7)]
    np.testing.assert_array_equal(worker.stores[0].values[5], [1, 1])


def test_a_server_writes_through_updates_of_keys_it_holds_for_another_home() -> None:
    """A server may hold keys homed elsewhere (given back to it during a migration): under
    write-through their updates go to their home, which acknowledges them."""
    homes = [1, 2]
    shard_map = ShardMap.initial(2, Partition.RANGE, homes)
    table = NamedTable(name="W", num_keys=8, dim=2)
    store = TableStore.create(0, table, shard_map, home=1, shared=False)
    outbox = Outbox()
    server = NodeServer(1, outbox, [store], shard_map, NullLock(), flush_interval_ms=0)
    store.loc[5] = 1  # homed on 2, held here
    server.dispatch(push(CLIENT, 7, [5]))
    found = sent(server, outbox)
    assert not of_type(found, MsgType.ACK)
    assert [(dest, m.requester, m.req_id) for dest, m in of_type(found, MsgType.WRITEBACK)] == [
        (2, CLIENT, 7)
    ]


def test_rows_written_back_to_a_former_home_are_kept_by_the_new_one() -> None:
    """A holder that has not seen the shard map of a migration writes back to the former
    home, which sends the rows on: the new home keeps them (they come from the key's holder)
    and its chain acknowledges them."""
    homes = [1, 2]  # key 5 is homed on 2 now
    shard_map = ShardMap.initial(2, Partition.RANGE, homes)
    table = NamedTable(name="W", num_keys=8, dim=2)
    stores = [TableStore.create(0, table, shard_map, home=me, shared=False) for me in homes]
    outboxes = [Outbox(), Outbox()]
    former, new = (
        NodeServer(me, outbox, [store], shard_map, NullLock(), flush_interval_ms=0)
        for me, outbox, store in zip(homes, outboxes, stores, strict=True)
    )
    held_by(new, 5, HOLDER)
    former.dispatch(write_back(HOLDER, CLIENT, 7, ONES, positions=np.array([0], dtype=np.int32)))
    forwarded = of_type(sent(former, outboxes[0]), MsgType.WRITEBACK)
    assert [dest for dest, _ in forwarded] == [2]
    new.dispatch(forwarded[0][1])
    np.testing.assert_array_equal(stores[1].values[5], [1, 1])
    acks = of_type(sent(new, outboxes[1]), MsgType.ACK)
    assert [(dest, msg.req_id, msg.count) for dest, msg in acks] == [(CLIENT, 7, 1)]


def test_a_training_process_writes_through_on_its_nodes_path() -> None:
    """The training process's written-through rows go to the homes through its node, which
    writes the same keys through for the updates it serves: on one path, so a home never
    keeps an older row of the holder after a newer one it acknowledged."""
    client = client_requests.Client(tolerance=FaultTolerance(replication=1, flush_interval_ms=0))
    client.store.loc[:] = client_requests.WORKER  # every key held by the client's node
    client.table.push([1, 5], np.ones((2, 1)), wait=False)  # homed on 1 and on 2
    sent_by_client = client.transport.take()
    assert [(dest, msg.type) for dest, msg in sent_by_client] == [(client_requests.WORKER, MsgType.WRITEBACK)]
    shard_map = ShardMap.initial(2, Partition.RANGE, [1, 2])
    outbox = Outbox()
    node = NodeServer(
        client_requests.WORKER, outbox, [client.store], shard_map, NullLock(), flush_interval_ms=0
    )
    client.store.values[5] += 1  # applied by the node meanwhile: its rows include it
    node.dispatch(sent_by_client[0][1])
    written = sorted(
        (dest, msg.sender, msg.requester, msg.keys.tolist(), msg.positions.tolist(), msg.values.tolist())
        for dest, msg in of_type(sent(node, outbox), MsgType.WRITEBACK)
        if msg.keys is not None and msg.positions is not None and msg.values is not None
    )
    me, client_id = client_requests.WORKER, client_of(client_requests.WORKER)
    assert written == [(1, me, client_id, [1], [0], [[1.0]]), (2, me, client_id, [5], [1], [[2.0]])]


def test_a_worker_refuses_rows_written_back_by_another_endpoint() -> None:
    worker, outbox = worker_node(HOLDER, 0)
    worker.dispatch(write_back(NEW_OWNER, CLIENT, 7, ONES, positions=np.array([0], dtype=np.int32)))
    assert worker.stats["malformed"] == 1
    assert not sent(worker, outbox)


def test_rows_written_through_for_a_key_on_its_way_back_wait_for_it() -> None:
    """The program updated a key, which then left and is on its way back (localized again):
    its node writes the update through once the key is back, from the rows that came with
    it, not from the stale rows it has meanwhile (its home already counts it as the owner)."""
    worker, outbox = worker_node(HOLDER, 0)
    worker.stores[0].loc[5] = INCOMING
    own = client_of(HOLDER)
    worker.dispatch(write_back(own, own, 7, ONES, positions=np.array([0], dtype=np.int32)))
    assert not sent(worker, outbox)
    worker.dispatch(messages.transfer(NEW_OWNER, own, 9, 0, KEY, 3 * ONES, ()))
    found = [
        (dest, msg.type, msg.requester)
        for dest, msg in sent(worker, outbox)
        if msg.type in (MsgType.WRITEBACK, MsgType.TRANSFER_DONE)
    ]
    assert found == [
        (HOME, MsgType.WRITEBACK, NO_ENDPOINT),  # the arrival
        (HOME, MsgType.TRANSFER_DONE, HOLDER),
        (HOME, MsgType.WRITEBACK, own),  # the program's update, in the rows that came
    ]
