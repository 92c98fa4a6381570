"""What a block's move costs the nodes' handlers alone: a home and two worker nodes in one
process, messages handed from one to the next with no transport (no MAC, no socket, no
wake-up), a block of ``--keys`` rows localized by the two workers in turn.  Prints the
thread CPU of handling each message type (median), so that it can be set against the same
messages' cost inside a running job (bench/README.md, "What a message costs a node at 8
nodes"): what is left there is the transport's and the machine's.

    PYTHONPATH=.:runtime python -P bench/relocation_handlers.py [--keys 625 --dim 50 --moves 400]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
from tests.dynaps.test_node_bad_messages import Outbox  # a transport that keeps what is sent

from dynaps.contract import NamedTable, Partition
from dynaps.node.server import NodeServer
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock
from dynaps.store.table_store import TableStore
from dynaps.wire import messages
from dynaps.wire.codec import decode, encode
from dynaps.wire.protocol import MsgType, client_of

HOME, FIRST, SECOND = 1, 2, 3
NUM_KEYS = 5_000
WARM_UP = 20


class Nodes:
    """A home of every key and two worker nodes; the thread CPU of each message they handle."""

    def __init__(self, dim: int) -> None:
        table = NamedTable(name="T", num_keys=NUM_KEYS, dim=dim)
        shard_map = ShardMap(1, 8, Partition.RANGE, np.full(8, HOME, dtype=np.int16), None)
        self.servers: dict[int, NodeServer] = {}
        self.outboxes: dict[int, Outbox] = {}
        self.read = dict.fromkeys((HOME, FIRST, SECOND), 0)
        for node in self.read:
            store = TableStore.create(0, table, shard_map, home=HOME if node == HOME else None, shared=False)
            outbox = Outbox()
            server = NodeServer(node, outbox, [store], shard_map, NullLock(), flush_interval_ms=None)
            server.peers.update({HOME, FIRST, SECOND, client_of(FIRST), client_of(SECOND)})
            self.servers[node], self.outboxes[node] = server, outbox
        self.took: dict[str, list[int]] = {}

    def handle(self, node: int, frames: list[Any]) -> None:
        data = [bytes(memoryview(frame)) for frame in frames]  # as they come off a socket
        kind = decode(data, self.servers[node].layouts).type.name
        started = time.thread_time_ns()
        self.servers[node].receive(data)
        self.took.setdefault(kind, []).append(time.thread_time_ns() - started)

    def deliver_all(self) -> None:
        """Hand every message sent to a node of the three on, until none is left."""
        moved = True
        while moved:
            moved = False
            for source, outbox in self.outboxes.items():
                pending, self.read[source] = outbox.sent[self.read[source] :], len(outbox.sent)
                for dest, frames in pending:
                    if dest in self.servers:
                        self.handle(dest, frames)
                        moved = True

    def localize(self, node: int, req_id: int, keys: Any) -> None:
        """``node``'s program localizes ``keys``: its LOCALIZE, and all that follows."""
        self.handle(HOME, encode(messages.request(MsgType.LOCALIZE, client_of(node), req_id, 0, keys)))
        self.deliver_all()


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--keys", type=int, default=625, help="keys per block (MF's at 8 nodes)")
    parser.add_argument("--dim", type=int, default=50, help="values per key")
    parser.add_argument("--moves", type=int, default=400, help="measured moves")
    args = parser.parse_args()
    if not 1 <= args.keys <= NUM_KEYS or args.dim < 1 or args.moves < 1:
        parser.error(f"--keys takes 1 to {NUM_KEYS}; --dim and --moves positive numbers")
    nodes = Nodes(args.dim)
    keys = np.arange(args.keys, dtype=np.int64)
    for move in range(WARM_UP + args.moves):
        if move == WARM_UP:
            nodes.took.clear()
        nodes.localize(FIRST if move % 2 == 0 else SECOND, move + 1, keys)
    print(f"a block of {args.keys} keys x {args.dim} float32 between two worker nodes, {args.moves} moves:")
    for kind, took in nodes.took.items():
        median = statistics.median(took) / 1e3
        print(f"  {kind:14s} {len(took):5d} handled, median {median:6.1f} us of thread CPU")


if __name__ == "__main__":
    main()
