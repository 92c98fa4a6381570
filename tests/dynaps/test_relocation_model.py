"""The relocation protocol, in-process, under every message interleaving Hypothesis finds.

Five NodeServers (two servers, three workers) exchange real encoded messages through a
simulated network that keeps each sender->receiver channel FIFO (as ZeroMQ does) but
delivers across channels in an order Hypothesis chooses.  Workers' training processes
are real :class:`~dynaps.client.PS` objects sharing their node's store, issuing one
operation at a time (synchronous semantics) with ``wait=False`` so the test can deliver
their messages.

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

from dynaps.client import PS, Handle
from dynaps.contract import NamedTable, RuntimeConfig
from dynaps.node import NodeServer
from dynaps.protocol import Message, MsgType, client_of, encode, node_of
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


class Cluster:
    """Two servers and three worker nodes; each worker's training process is a real ``PS``."""

    def __init__(self) -> None:
        self.network = Network()
        self.spec = NamedTable(name="W", num_keys=NUM_KEYS, dim=1)
        self.shard_map = ShardMap.initial(4, "range", SERVERS)
        self.nodes: dict[int, NodeServer] = {}
        everyone = set(SERVERS + WORKERS) | {client_of(w) for w in WORKERS}
        for node in SERVERS + WORKERS:
            store = TableStore.create(
                0, self.spec, self.shard_map, home=node if node in SERVERS else None, shared=False
            )
            server = NodeServer(node, SimTransport(self.network, node), [store], self.shard_map, NullLock())
            server.peers |= everyone
            self.nodes[node] = server
        config = RuntimeConfig(tables=[self.spec], servers=len(SERVERS), workers=len(WORKERS))
        self.clients: dict[int, PS] = {}
        for rank, worker in enumerate(WORKERS):
            # The training process shares its node's store, exactly as through shared memory.
            ps = PS(
                config,
                worker,
                rank,
                [self.store(worker)],
                NullLock(),  # type: ignore[arg-type]
                SimTransport(self.network, client_of(worker)),
            )  # type: ignore[arg-type]
            ps.shard_map = self.shard_map
            self.clients[worker] = ps
        self.busy: dict[int, tuple[str, Handle, np.ndarray]] = {}
        self.pushed = np.zeros(NUM_KEYS)
        self.last_seen = {w: np.zeros(NUM_KEYS) for w in WORKERS}

    def store(self, node: int) -> TableStore:
        return self.nodes[node].stores[0]

    # ---------------------------------------------------------------- operations

    def start(self, op: str, worker: int, keys: list[int]) -> None:
        """Issue ``op`` from ``worker`` unless it waits for its previous (synchronous) one."""
        if worker in self.busy:
            return
        table = self.clients[worker].table("W")
        key_array = np.asarray(keys, dtype=np.int64)
        if op == "push":
            np.add.at(self.pushed, key_array, 1)
            handle = table.push(key_array, np.ones((len(keys), 1)), wait=False)
        elif op == "pull":
            handle = table.pull(key_array, wait=False)
        else:
            handle = table.localize(key_array, wait=False)
        assert handle is not None
        self.busy[worker] = (op, handle, key_array)
        self._finish(worker)

    def _finish(self, worker: int) -> None:
        op, handle, keys = self.busy[worker]
        if not handle.done():
            return
        del self.busy[worker]
        values = handle.result()
        if op == "pull":
            assert values is not None
            for key, value in zip(keys, values[:, 0], strict=True):
                # Synchronous reads of one worker never go backwards (counters only grow).
                assert value >= self.last_seen[worker][key], (worker, key, value)
                self.last_seen[worker][key] = value

    # ---------------------------------------------------------------- delivery

    def deliver(self, channel: tuple[int, int]) -> None:
        _source, dest = channel
        frames = self.network.channels[channel].popleft()
        if dest in self.nodes:
            assert self.nodes[dest].receive(frames) is None
            return
        worker = node_of(dest)
        self.clients[worker]._receive(frames)
        if worker in self.busy:
            self._finish(worker)

    def settle(self, data: st.DataObject | None) -> None:
        while busy := sorted(self.network.busy()):
            choice = data.draw(st.sampled_from(busy)) if data is not None else busy[0]
            self.deliver(choice)

    # ---------------------------------------------------------------- invariants

    def check(self) -> None:
        assert not self.busy, f"operations that never completed: {self.busy}"
        for worker, ps in self.clients.items():
            assert not ps._handles, f"worker {worker} has requests in flight"
        owners = np.zeros(NUM_KEYS, dtype=int)
        total = np.zeros(NUM_KEYS)
        for node, server in self.nodes.items():
            store = server.stores[0]
            assert not (store.loc == INCOMING).any(), f"node {node} still expects keys"
            assert not any(server.pending), f"node {node} has queued requests"
            assert not any(server.waiting), f"node {node} has relocations waiting"
            if store.moving_from is not None:
                assert (store.moving_from == -1).all(), f"node {node} thinks keys are still moving"
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
    st.sampled_from(["push", "pull", "localize", "deliver", "deliver"]),
    st.sampled_from(WORKERS),
    st.lists(st.integers(0, NUM_KEYS - 1), min_size=1, max_size=3),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=60), data=st.data())
def test_relocation_keeps_every_update_under_any_interleaving(ops: list[Any], data: st.DataObject) -> None:
    cluster = Cluster()
    for op, worker, keys in ops:
        if op == "deliver":
            busy = sorted(cluster.network.busy())
            if busy:
                cluster.deliver(data.draw(st.sampled_from(busy)))
        else:
            cluster.start(op, worker, keys)
    cluster.settle(data)
    cluster.check()


def test_concurrent_localizes_of_one_key_chain() -> None:
    cluster = Cluster()
    for worker in WORKERS:
        cluster.start("push", worker, [0])
        cluster.settle(None)
    for worker in WORKERS:
        cluster.start("localize", worker, [0])
    cluster.settle(None)
    for worker in WORKERS:
        cluster.start("push", worker, [0])
        cluster.settle(None)
    cluster.check()
    assert sum(cluster.store(w).loc[0] == w for w in WORKERS) == 1
    assert sum(cluster.store(n).values[0, 0] for n in SERVERS + WORKERS if cluster.store(n).loc[0] == n) == 6


def test_a_second_relocation_waits_at_the_home_until_the_first_arrives() -> None:
    cluster = Cluster()
    first, second, third = WORKERS
    home = int(cluster.shard_map.home_of(np.array([0]), NUM_KEYS)[0])
    cluster.start("localize", first, [0])
    cluster.settle(None)
    cluster.start("localize", second, [0])
    cluster.deliver((client_of(second), home))  # home: HANDOFF(0 -> second) to first
    cluster.start("localize", third, [0])
    cluster.deliver((client_of(third), home))  # key 0 is still moving: the home holds this one
    assert cluster.nodes[home].waiting[0], "the second relocation was not held back"
    assert not cluster.network.channels[(home, second)], "no handoff may reach a node before its key"
    cluster.settle(None)
    cluster.start("push", third, [0])
    cluster.settle(None)
    cluster.check()
    assert cluster.store(third).loc[0] == third
    assert cluster.store(third).values[0, 0] == 1


def test_release_returns_keys_to_their_home() -> None:
    cluster = Cluster()
    worker = WORKERS[0]
    cluster.start("localize", worker, list(range(NUM_KEYS)))
    cluster.settle(None)
    cluster.start("push", worker, list(range(NUM_KEYS)))
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
    assert cluster.nodes[worker].stats["keys_released"] == NUM_KEYS
