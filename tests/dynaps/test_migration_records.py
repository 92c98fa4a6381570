"""A shard migration moves everything the old home knows of its keys (issue 13, audit F1 and F4).

In one process, on NodeServer objects: old home A homes both shards of a two-shard table
(keys 0-3, 4-7) and moves shard 1 to the new home B; R backs up both shards.  A worker W
holds key 5 (it localized it) and writes its rows back to the home.

* The copy carries the home's row of every key of the shard, also of keys a worker holds
  (the write-back copy), so that the new home can take them back when that worker dies
  and does not overwrite its backups with a row it never had.
* Write-backs reach the new home whenever they arrive: before the copy of their chunk,
  during the pre-copy (the final delta carries them), or while the shard is frozen (the
  worker writes its held keys back to their new home).
* The records of the updates applied to the shard's keys go with the final part, so a
  retry that reaches the new home is answered, not applied again, and the new home's
  replica sync hands them on to its backups.
"""

from __future__ import annotations

import numpy as np
import pytest

from dynaps.contract import NamedTable, Partition
from dynaps.node import migration
from dynaps.node.server import NodeServer
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock
from dynaps.store.table_store import TableStore
from dynaps.wire import messages
from dynaps.wire.codec import decode
from dynaps.wire.control import MigrateOut
from dynaps.wire.protocol import FINAL, NO_ENDPOINT, RETRY, Message, MsgType, client_of
from tests.dynaps.test_node_bad_messages import Outbox

A, B, W, R = 1, 2, 3, 4  # old home, new home, worker, backup
CLIENT = client_of(6)  # a training process whose push reaches the shard
KEY = 5  # in shard 1, the shard that moves
NUM_KEYS = 8


def rows(value: float, count: int) -> np.ndarray:
    """Rows of the table's dtype, as a message off the wire carries them."""
    return np.full((count, 2), value, dtype=np.float32)


def shard_map(epoch: int, homes: list[int], replicated: bool) -> ShardMap:
    backups = np.full((2, 1), R, dtype=np.int16) if replicated else None
    return ShardMap(epoch, 2, Partition.RANGE, np.asarray(homes, dtype=np.int16), backups)


class Job:
    """The three servers of the table, and what each sent."""

    def __init__(self, replicated: bool, worker_flush_ms: int = 100) -> None:
        self.replicated = replicated
        first = shard_map(1, [A, A], replicated)
        table = NamedTable(name="T", num_keys=NUM_KEYS, dim=2)
        self.nodes: dict[int, NodeServer] = {}
        self.outboxes: dict[int, Outbox] = {}
        for node in (A, B, R):
            store = TableStore.create(0, table, first, home=node, shared=False)
            outbox = Outbox()
            server = NodeServer(
                node, outbox, [store], first, NullLock(), flush_interval_ms=100 if replicated else None
            )
            server.peers.update({A, B, W, R, client_of(W), CLIENT})
            self.nodes[node] = server
            self.outboxes[node] = outbox
        # the worker's node: it holds KEY (the rows its training process updates in place)
        held = TableStore.create(0, table, first, home=None, shared=False, track_changes=replicated)
        held.loc[KEY] = W
        self.outboxes[W] = Outbox()
        flush = worker_flush_ms if replicated else None
        self.nodes[W] = NodeServer(W, self.outboxes[W], [held], first, NullLock(), flush_interval_ms=flush)
        self.cursor = dict.fromkeys(self.nodes, 0)

    def store(self, node: int) -> TableStore:
        return self.nodes[node].stores[0]

    def sent(self, node: int, kind: MsgType, dest: int | None = None) -> list[Message]:
        """What ``node`` sent (to ``dest``) since the last call to :meth:`deliver` or this one."""
        found = []
        outbox = self.outboxes[node]
        for to, frames in outbox.sent[self.cursor[node] :]:
            msg = decode([bytes(memoryview(f)) for f in frames], self.nodes[node].layouts)
            if msg.type == kind and (dest is None or to == dest):
                found.append(msg)
        return found

    def deliver(self, source: int, dest: int) -> list[MsgType]:
        """Hand the data messages ``source`` sent to ``dest`` to it, in order; their types."""
        outbox = self.outboxes[source]
        pending, self.cursor[source] = outbox.sent[self.cursor[source] :], len(outbox.sent)
        kinds = []
        for to, frames in pending:
            if to == dest:
                msg = decode([bytes(memoryview(f)) for f in frames], self.nodes[source].layouts)
                kinds.append(msg.type)
                self.nodes[dest].receive([bytes(memoryview(f)) for f in frames])
        return kinds

    def worker_holds_key(self, value: float) -> None:
        """W localized KEY and wrote it back once: the home keeps (and replicates) its rows."""
        home = self.store(A)
        assert home.owner is not None
        home.owner[KEY] = home.loc[KEY] = W
        self.write_back(value)
        assert self.store(A).values[KEY].tolist() == [value, value]

    def write_back(self, value: float) -> None:
        """The worker's training process set KEY to ``value``, and the node's flush sent it
        to the home (in the shard map it has: the old home)."""
        self.store(W).values[KEY] = value
        keys = np.array([KEY], dtype=np.int64)
        written = messages.rows(MsgType.WRITEBACK, W, NO_ENDPOINT, 0, 0, keys, rows(value, 1), ())
        self.nodes[A].dispatch(written)

    def start_move(self) -> None:
        self.nodes[A].migrations.start(MigrateOut(id=1, shards=[1], target=B, epoch=1))

    def step(self) -> None:
        self.nodes[A].migrations.step()

    def frozen(self) -> bool:
        return self.nodes[A].gate.blocks is not None

    def commit(self) -> None:
        """The coordinator commits the move: every server applies epoch 2."""
        second = shard_map(2, [A, B], self.replicated)
        for node in (A, B, R, W):
            self.nodes[node].set_shard_map(second)

    def move_shard(self) -> None:
        self.start_move()
        while not self.frozen():
            self.step()
        assert MsgType.SHARD_COPY in self.deliver(A, B)
        self.commit()


def test_the_copy_carries_the_write_back_copy_of_a_key_a_worker_holds() -> None:
    job = Job(replicated=True)
    job.worker_holds_key(7.0)
    job.move_shard()
    new_home = job.store(B)
    assert new_home.owner is not None
    assert new_home.owner[KEY] == W  # the worker still holds it
    assert new_home.values[KEY].tolist() == [7.0, 7.0]
    # the new home's replica sync sends its own rows down the chain: they must be the good ones
    synced = [m for m in job.sent(B, MsgType.REPLICATE, R) if m.keys is not None and KEY in m.keys]
    assert synced
    for msg in synced:
        assert msg.keys is not None
        assert msg.values is not None
        assert msg.values[list(msg.keys).index(KEY)].tolist() == [7.0, 7.0]
    # the worker dies: its home takes the key back with what it wrote back
    job.nodes[B].take_back_from_lost({W})
    assert new_home.owner[KEY] == B
    assert new_home.values[KEY].tolist() == [7.0, 7.0]


def test_a_write_back_during_the_pre_copy_reaches_the_new_home_in_the_final_delta() -> None:
    job = Job(replicated=True)
    job.worker_holds_key(7.0)
    job.start_move()
    job.step()  # the shard's only chunk: the row 7 went
    assert not job.frozen()
    job.write_back(9.0)  # the worker's next flush
    while not job.frozen():
        job.step()
    job.deliver(A, B)
    job.commit()
    assert job.store(B).values[KEY].tolist() == [9.0, 9.0]


@pytest.mark.parametrize("flush_interval_ms", [100, 0], ids=["write-back", "write-through"])
def test_a_write_back_that_reaches_the_frozen_home_is_written_back_again(flush_interval_ms: int) -> None:
    """The final delta went before it: the worker writes the key back to its new home."""
    job = Job(replicated=True, worker_flush_ms=flush_interval_ms)
    worker = job.nodes[W].writeback
    assert worker is not None
    job.worker_holds_key(7.0)
    job.start_move()
    while not job.frozen():
        job.step()
    job.write_back(11.0)  # the worker's flush, while the copy waits for the commit
    job.deliver(A, B)
    job.commit()
    job.deliver(A, B)  # whatever the old home sends on
    worker.flush(now=1000.0)
    assert job.deliver(W, B) == [MsgType.WRITEBACK]
    assert job.store(B).values[KEY].tolist() == [11.0, 11.0]
    job.nodes[B].take_back_from_lost({W})
    assert job.store(B).values[KEY].tolist() == [11.0, 11.0]


def test_a_worker_writes_back_only_held_keys_whose_home_changed() -> None:
    job = Job(replicated=True)
    job.store(W).loc[1] = W  # in shard 0: its home stays
    job.move_shard()
    worker = job.nodes[W].writeback
    assert worker is not None
    worker.flush(now=1000.0)
    written = job.sent(W, MsgType.WRITEBACK, B)
    assert [m.keys.tolist() for m in written if m.keys is not None] == [[KEY]]
    assert not job.sent(W, MsgType.WRITEBACK, A)


@pytest.mark.parametrize("replicated", [False, True], ids=["no-replication", "replication"])
def test_a_retry_that_reaches_the_new_home_is_answered_not_applied_again(replicated: bool) -> None:
    job = Job(replicated)
    keys = np.array([1, KEY], dtype=np.int64)  # one key stays, one moves
    ones = rows(1.0, 2)
    job.nodes[A].dispatch(messages.request(MsgType.PUSH, CLIENT, 7, 0, keys, values=ones))
    assert job.store(A).values[KEY].tolist() == [1.0, 1.0]
    job.move_shard()
    # the client read a loss: it sends the push again, under the new map, to the new home
    moved, position = np.array([KEY], dtype=np.int64), np.array([1], dtype=np.int32)
    retry = messages.request(
        MsgType.PUSH, CLIENT, 7, 0, moved, values=ones[:1], positions=position, epoch=2, flags=RETRY
    )
    job.deliver(B, R)  # the replica sync (with replication) before the retry
    job.nodes[B].dispatch(retry)
    assert job.store(B).values[KEY].tolist() == [1.0, 1.0]
    if replicated:
        # the new home's replica sync carried the record down its chain
        assert job.nodes[R].applied.already_applied(retry) is not None
        # the new home passes the rows down the chain again for the tail to acknowledge
        assert job.deliver(B, R) == [MsgType.REPLICATE]
        answered = job.sent(R, MsgType.ACK, CLIENT)
    else:
        answered = job.sent(B, MsgType.ACK, CLIENT)
    assert [(m.req_id, m.count) for m in answered] == [(7, 1)]


def test_only_the_records_of_the_moved_keys_travel() -> None:
    job = Job(replicated=False)
    stays = np.array([1], dtype=np.int64)
    job.nodes[A].dispatch(messages.request(MsgType.PUSH, CLIENT, 7, 0, stays, values=rows(1.0, 1)))
    moves = np.array([KEY], dtype=np.int64)
    job.nodes[A].dispatch(messages.request(MsgType.PUSH, CLIENT, 8, 0, moves, values=rows(1.0, 1)))
    job.move_shard()
    adopted = job.nodes[B].applied.applied[CLIENT]
    assert list(adopted) == [8]


def test_the_records_travel_in_parts_of_bounded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part carries the records of its own keys only (its JSON stays bounded, as a replica
    sync's does); the last part sent at the freeze is FINAL, and the new home has them all."""
    monkeypatch.setattr(migration, "RECORD_KEYS", 2)  # shard 1's keys 4-7 in two parts
    job = Job(replicated=False)
    for req_id, key in ((7, 4), (8, 7)):
        pushed = np.array([key], dtype=np.int64)
        job.nodes[A].dispatch(messages.request(MsgType.PUSH, CLIENT, req_id, 0, pushed, values=rows(1.0, 1)))
    job.start_move()
    while not job.frozen():
        job.step()
    copies = job.sent(A, MsgType.SHARD_COPY, B)
    assert [[r[1] for r in m.records["records"]] for m in copies if m.records] == [[7], [8]]
    assert [bool(m.flags & FINAL) for m in copies] == [False] * (len(copies) - 1) + [True]
    job.deliver(A, B)
    assert list(job.nodes[B].applied.applied[CLIENT]) == [7, 8]
