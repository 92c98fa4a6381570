"""The relocation protocol, in-process, under every message interleaving Hypothesis finds.

Five NodeServers (two servers, three workers) exchange real encoded messages through a
simulated network that keeps each sender->receiver channel FIFO (as ZeroMQ does) but
delivers across channels in an order Hypothesis chooses.  Workers' training processes
are emulated exactly as the client does it: local keys are updated in place, other
requests go to the cached owner (or the worker's own node while a key is incoming).

Invariants checked at quiescence: every key is owned by exactly one node and is nowhere
in transfer; its value equals the number of increments pushed; every request got exactly
the replies it needed; synchronous pulls of one worker never go backwards.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynaps.contract import NamedTable
from dynaps.node import NodeServer
from dynaps.protocol import Message, MsgType, client_of, decode, encode, node_of
from dynaps.shardmap import ShardMap
from dynaps.shm import NullLock
from dynaps.store import INCOMING, TableStore

SERVERS = [1, 2]
WORKERS = [3, 4, 5]
NUM_KEYS = 6  # few keys, so random operations collide on them


@dataclass
class Network:
    """Per-channel FIFO queues of encoded frames."""

    channels: dict[tuple[int, int], collections.deque[list[bytes]]] = field(
        default_factory=lambda: collections.defaultdict(collections.deque)
    )

    def busy(self) -> list[tuple[int, int]]:
        return [key for key, queue in self.channels.items() if queue]


class SimTransport:
    def __init__(self, network: Network, endpoint: int) -> None:
        self.network = network
        self.endpoint = endpoint
        self.address = f"sim://{endpoint}"

    def connect(self, endpoint: int, address: str) -> None: ...

    def forget(self, endpoint: int, linger: float = 0.0) -> None: ...

    def knows(self, endpoint: int) -> bool:
        return True

    def send(self, endpoint: int, frames: Any) -> None:
        self.network.channels[(self.endpoint, endpoint)].append([bytes(memoryview(f)) for f in frames])

    def recv(self, timeout: float | None = None) -> list[Any] | None:
        return None

    def close(self, linger: float = 0.0) -> None: ...


@dataclass
class Request:
    kind: MsgType
    keys: np.ndarray
    remaining: int
    values: np.ndarray | None = None


class Cluster:
    def __init__(self) -> None:
        self.network = Network()
        spec = NamedTable(name="W", num_keys=NUM_KEYS, dim=1)
        self.shard_map = ShardMap.initial(4, "range", SERVERS)
        self.nodes: dict[int, NodeServer] = {}
        everyone = set(SERVERS + WORKERS) | {client_of(w) for w in WORKERS}
        for node in SERVERS + WORKERS:
            store = TableStore.create(
                0, spec, self.shard_map, home=node if node in SERVERS else None, shared=False
            )
            server = NodeServer(node, SimTransport(self.network, node), [store], self.shard_map, NullLock())
            server.peers |= everyone
            self.nodes[node] = server
        self.clients = {w: SimTransport(self.network, client_of(w)) for w in WORKERS}
        self.requests: dict[int, dict[int, Request]] = {w: {} for w in WORKERS}
        self.next_id = 1
        self.pushed = np.zeros(NUM_KEYS)
        self.last_seen = {w: np.zeros(NUM_KEYS) for w in WORKERS}

    def store(self, node: int) -> TableStore:
        return self.nodes[node].stores[0]

    # ---------------------------------------------------------------- emulated client

    def _dest(self, worker: int, key: int) -> int:
        owner = int(self.store(worker).loc[key])
        return worker if owner == INCOMING else owner

    def push(self, worker: int, key: int) -> None:
        store = self.store(worker)
        self.pushed[key] += 1
        if store.loc[key] == worker:
            store.values[key] += 1
            return
        self._request(worker, MsgType.PUSH, key, np.ones((1, 1), dtype=np.float32))

    def pull(self, worker: int, key: int) -> None:
        store = self.store(worker)
        if store.loc[key] == worker:
            self._observe(worker, key, float(store.values[key, 0]))
            return
        self._request(worker, MsgType.PULL, key, None)

    def localize(self, worker: int, key: int) -> None:
        store = self.store(worker)
        if store.loc[key] == worker:
            return
        req_id = self._new_request(worker, MsgType.LOCALIZE, key)
        keys = np.array([key], dtype=np.int64)
        if store.loc[key] == INCOMING:  # already requested: ask our node to tell us when it is here
            msg = Message(MsgType.HANDOFF, client_of(worker), client_of(worker), req_id, 0, 1, aux=worker,
                          keys=keys)
            self.clients[worker].send(worker, encode(msg))
            return
        store.loc[key] = INCOMING
        home = int(self.shard_map.home_of(keys, NUM_KEYS)[0])
        msg = Message(MsgType.LOCALIZE, client_of(worker), client_of(worker), req_id, 0, 1, keys=keys)
        self.clients[worker].send(home, encode(msg))

    def _new_request(self, worker: int, kind: MsgType, key: int) -> int:
        req_id = self.next_id
        self.next_id += 1
        self.requests[worker][req_id] = Request(kind, np.array([key]), 1)
        return req_id

    def _request(self, worker: int, kind: MsgType, key: int, values: np.ndarray | None) -> None:
        req_id = self._new_request(worker, kind, key)
        msg = Message(kind, client_of(worker), client_of(worker), req_id, 0, 1,
                      keys=np.array([key], dtype=np.int64), values=values)
        self.clients[worker].send(self._dest(worker, key), encode(msg))

    def _observe(self, worker: int, key: int, value: float) -> None:
        # Synchronous reads of one worker never go backwards (counters only grow).
        assert value >= self.last_seen[worker][key], (worker, key, value, self.last_seen[worker][key])
        self.last_seen[worker][key] = value

    # ---------------------------------------------------------------- delivery

    def deliver(self, channel: tuple[int, int]) -> None:
        source, dest = channel
        frames = self.network.channels[channel].popleft()
        if dest in self.nodes:
            assert self.nodes[dest].receive(frames) is None
            return
        worker = node_of(dest)
        msg = decode(frames, self.nodes[worker].layouts)
        request = self.requests[worker][msg.req_id]
        assert msg.type is not MsgType.ERROR, msg.text
        assert msg.count <= request.remaining
        if msg.type is MsgType.PULL_REPLY:
            assert msg.values is not None
            self._observe(worker, int(request.keys[0]), float(msg.values[0, 0]))
        request.remaining -= msg.count
        if request.remaining == 0:
            del self.requests[worker][msg.req_id]

    def settle(self, data: st.DataObject | None) -> None:
        while busy := sorted(self.network.busy()):
            choice = data.draw(st.sampled_from(busy)) if data is not None else busy[0]
            self.deliver(choice)

    # ---------------------------------------------------------------- invariants

    def check(self) -> None:
        for worker in WORKERS:
            assert not self.requests[worker], f"unanswered requests of worker {worker}"
        owners = np.zeros(NUM_KEYS, dtype=int)
        total = np.zeros(NUM_KEYS)
        for node, server in self.nodes.items():
            store = server.stores[0]
            assert not (store.loc == INCOMING).any(), f"node {node} still expects keys"
            assert not any(server.pending), f"node {node} has queued requests"
            assert server.stats["anomalies"] == 0
            assert server.stats["malformed"] == 0
            mine = store.loc == node
            owners += mine
            total[mine] += store.values[mine, 0]
        assert (owners == 1).all(), f"keys with owner count != 1: {np.flatnonzero(owners != 1)}"
        np.testing.assert_array_equal(total, self.pushed)
        for server in SERVERS:
            store = self.store(server)
            assert store.owner is not None
            homed = self.shard_map.home_of(np.arange(NUM_KEYS), NUM_KEYS) == server
            for key in np.flatnonzero(homed):
                owner = int(store.owner[key])
                assert self.store(owner).loc[key] == owner, f"directory wrong for key {key}"


OPS = st.tuples(
    st.sampled_from(["push", "pull", "localize", "deliver"]),
    st.sampled_from(WORKERS),
    st.integers(0, NUM_KEYS - 1),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=60), data=st.data())
def test_relocation_keeps_every_update_under_any_interleaving(ops: list[Any], data: st.DataObject) -> None:
    cluster = Cluster()
    for op, worker, key in ops:
        if op == "deliver":
            busy = sorted(cluster.network.busy())
            if busy:
                cluster.deliver(data.draw(st.sampled_from(busy)))
        else:
            getattr(cluster, op)(worker, key)
    cluster.settle(data)
    cluster.check()


def test_concurrent_localizes_of_one_key_chain() -> None:
    cluster = Cluster()
    for worker in WORKERS:
        cluster.push(worker, 0)
        cluster.localize(worker, 0)
        cluster.push(worker, 0)
    cluster.settle(None)
    cluster.check()
    assert cluster.store(WORKERS[-1]).loc[0] == WORKERS[-1], "the last localize wins"
    assert cluster.store(WORKERS[-1]).values[0, 0] == 6


def test_handoff_that_overtakes_the_transfer_waits_for_it() -> None:
    cluster = Cluster()
    first, second, third = WORKERS
    home = int(cluster.shard_map.home_of(np.array([0]), NUM_KEYS)[0])
    cluster.localize(first, 0)
    cluster.settle(None)
    cluster.localize(second, 0)
    cluster.deliver((client_of(second), home))  # home: HANDOFF(0 -> second) to first
    cluster.localize(third, 0)
    cluster.deliver((client_of(third), home))  # home: HANDOFF(0 -> third) to second
    cluster.deliver((home, second))  # second does not have key 0 yet: it must wait
    assert cluster.nodes[second].pending[0], "the early handoff was not queued"
    cluster.push(third, 0)
    cluster.settle(None)
    cluster.check()
    assert cluster.store(third).loc[0] == third
    assert cluster.store(third).values[0, 0] == 1


def test_release_returns_keys_to_their_home() -> None:
    cluster = Cluster()
    worker = WORKERS[0]
    for key in range(NUM_KEYS):
        cluster.localize(worker, key)
        cluster.push(worker, key)
    cluster.settle(None)
    assert (cluster.store(worker).loc == worker).all()
    for server in SERVERS:
        homed = np.flatnonzero(cluster.shard_map.home_of(np.arange(NUM_KEYS), NUM_KEYS) == server)
        msg = Message(MsgType.RELEASE, worker, worker, 1, 0, len(homed), keys=homed.astype(np.int64))
        cluster.nodes[worker].transport.send(server, encode(msg))
    cluster.settle(None)
    cluster.check()
    assert not (cluster.store(worker).loc == worker).any()
    assert cluster.nodes[worker].stats["keys_sent"] == NUM_KEYS
