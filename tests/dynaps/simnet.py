"""A simulated network for protocol tests: real NodeServers and clients, no sockets.

Each sender->receiver channel is FIFO (as ZeroMQ's are); tests choose the order across
channels.  Workers' training processes are real :class:`~dynaps.client.ps.PS` objects that
share their node's store, issuing one operation at a time (synchronous semantics) with
``wait=False`` so the test can deliver their messages.  Endpoint 0 is a simulated
coordinator that commits migrations and announces new shard maps.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from dynaps.client.handles import Handle
from dynaps.client.ps import PS
from dynaps.contract import NamedTable, Partition, RuntimeConfig
from dynaps.node.server import NodeServer
from dynaps.store.shardmap import ShardMap, next_servers
from dynaps.store.shm import NullLock
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.wire import control as bodies
from dynaps.wire import messages
from dynaps.wire.codec import decode
from dynaps.wire.control import MigrateOut
from dynaps.wire.protocol import COORDINATOR, MsgType, client_of, node_of

SERVERS = [1, 2]
WORKERS = [3, 4, 5]
SPARE = 6  # a server that homes nothing until shards migrate to it
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

    def recv(self, timeout: float | None = None, spin: bool = False) -> list[Any] | None:
        return None

    def close(self, linger: float = 0.0) -> None: ...


class Cluster:
    """Servers 1, 2 (and 6) and three worker nodes; each training process is a real ``PS``.

    With ``replicated`` all three servers home shards from the start and each shard has a
    backup; otherwise server 6 is a spare that homes nothing until shards migrate to it.
    """

    def __init__(self, replicated: bool = False) -> None:
        self.network = Network()
        self.spec = NamedTable(name="W", num_keys=NUM_KEYS, dim=1)
        self.homing = [*SERVERS, SPARE] if replicated else SERVERS
        self.shard_map = ShardMap.initial(4, Partition.RANGE, self.homing)
        if replicated:
            self.shard_map.backups = next_servers(self.shard_map.homes, self.homing)
        self.nodes: dict[int, NodeServer] = {}
        self.dead: set[int] = set()
        self.recoveries = 0
        everyone = set(SERVERS + WORKERS + [SPARE]) | {client_of(w) for w in WORKERS}
        for node in [*SERVERS, *WORKERS, SPARE]:
            store = TableStore.create(
                0,
                self.spec,
                self.shard_map,
                home=node if node in (*SERVERS, SPARE) else None,
                shared=False,
                track_changes=replicated,
            )
            server = NodeServer(
                node,
                SimTransport(self.network, node),
                [store],
                self.shard_map,
                NullLock(),
                flush_interval_ms=1_000_000 if replicated else None,  # flushed by the test
            )
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
                SimTransport(self.network, client_of(worker)),  # type: ignore[arg-type]
            )
            ps._requests.shard_map = self.shard_map
            self.clients[worker] = ps
        self.busy: dict[int, tuple[str, Handle, np.ndarray]] = {}
        self.migrating: tuple[int, int] | None = None  # (shard, target) of the migration in flight
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

    def servers(self) -> list[int]:
        return [*SERVERS, SPARE]

    def migrate(self, shard: int, target: int) -> None:
        """As the coordinator: move ``shard`` to ``target`` (one migration at a time)."""
        source = int(self.shard_map.homes[shard])
        if self.migrating is not None or source == target:
            return
        self.migrating = (shard, target)
        order = MigrateOut(
            id=1 + self.shard_map.epoch, shards=[shard], target=target, epoch=self.shard_map.epoch
        )
        self.network.channels[(COORDINATOR, source)].append(
            [bytes(f) for f in messages.control(MsgType.MIGRATE_OUT, COORDINATOR, order)]
        )

    def retire_spare(self) -> None:
        """The spare server leaves, if it homes and holds nothing (as after a drain)."""
        spare = self.nodes[SPARE]
        if SPARE in self.shard_map.homes or (spare.stores[0].loc == SPARE).any() or self.migrating:
            return
        if self.network.busy():
            return  # it lingers until nothing is addressed to it any more
        for node, server in self.nodes.items():
            if node != SPARE:
                server.departures.forget_departed({SPARE})
        for ps in self.clients.values():
            ps._requests.gone.add(SPARE)

    def live(self) -> dict[int, NodeServer]:
        return {node: server for node, server in self.nodes.items() if node not in self.dead}

    def kill(self, server: int, keep_sent: bool) -> None:
        """Server ``server`` dies; what it already sent arrives (``keep_sent``) or not.

        As the coordinator: its shards move to their backups in a new epoch, everyone
        learns it is lost, and each new home is told to rebuild.
        """
        if self.dead or self.migrating:
            return  # one failure at a time: replication: 1 survives one, not two at once
        assert self.shard_map.backups is not None
        self.dead.add(server)
        for (source, dest), queue in self.network.channels.items():
            if dest == server or (source == server and not keep_sent):
                queue.clear()
        shards = np.flatnonzero(self.shard_map.homes == server)
        homes = self.shard_map.homes.copy()
        homes[shards] = self.shard_map.backups[shards]
        alive = [s for s in self.homing if s not in self.dead]
        self.shard_map = ShardMap(
            self.shard_map.epoch + 1,
            self.shard_map.num_shards,
            self.shard_map.partition,
            homes,
            next_servers(homes, alive),
        )
        self._announce(lost=sorted(self.dead))
        for home in sorted({int(homes[s]) for s in shards}):
            self.recoveries += 1
            body = bodies.Recover(
                id=self.recoveries,
                shards=[int(s) for s in shards if homes[s] == home],
                source=bodies.RecoverySource.REPLICA,
            )
            self.network.channels[(COORDINATOR, home)].append(
                [bytes(f) for f in messages.control(MsgType.RECOVER, COORDINATOR, body)]
            )

    def flush(self) -> None:
        """Every node writes back the keys it holds that changed (one flush interval)."""
        for server in self.live().values():
            if server.replication is not None:
                server.replication.flush(1e18)
                server.replication.last_flush = 0.0

    def resend(self) -> None:
        """The grace period of every rebuild ended: re-send keys still expected."""
        for server in self.live().values():
            server.recoveries.tick(1e18)

    def lift_fences(self) -> None:
        """The relocation fence after a loss is over (time passed)."""
        for server in self.live().values():
            server.lift_fence(1e18)

    def step(self) -> None:
        """A turn of every node's loop: the next pre-copy chunk, or the freeze."""
        for server in self.live().values():
            if server.migrations.tracking:
                server.migrations.step()

    def _commit(self, frames: list[bytes], target: int) -> None:
        msg = decode(frames, [])
        assert msg.type is MsgType.MIGRATE_READY, msg
        assert self.migrating is not None
        shard, expected = self.migrating
        assert target == expected
        homes = self.shard_map.homes.copy()
        homes[shard] = target
        backups = None if self.shard_map.backups is None else next_servers(homes, self.homing)
        self.shard_map = ShardMap(
            self.shard_map.epoch + 1, self.shard_map.num_shards, self.shard_map.partition, homes, backups
        )
        self._announce(lost=sorted(self.dead))
        self.migrating = None

    def _announce(self, lost: list[int]) -> None:
        body = bodies.Membership(
            version=self.shard_map.epoch,
            phase=bodies.Phase.RUNNING,
            nodes=[],
            num_workers=len(WORKERS),
            shard_map=self.shard_map.to_json(),
            lost=lost,
        )
        frames = [bytes(f) for f in messages.control(MsgType.MEMBERSHIP, COORDINATOR, body)]
        for endpoint in [*self.live(), *(client_of(w) for w in WORKERS)]:
            self.network.channels[(COORDINATOR, endpoint)].append(frames)

    def deliver(self, channel: tuple[int, int]) -> None:
        source, dest = channel
        frames = self.network.channels[channel].popleft()
        if dest == COORDINATOR:
            if decode(frames, []).type is MsgType.MIGRATE_READY:
                self._commit(frames, source)
            return
        if dest in self.nodes:
            server = self.nodes[dest]
            control = server.receive(frames)
            if control is None:
                return
            if control.type is MsgType.OWNERS_QUERY:  # from a rebuilding home
                query = bodies.body_of(control, bodies.OwnersQuery)
                server.recoveries.report_owners(
                    control.sender, query.id, np.asarray(query.shards, dtype=np.int64)
                )
                return
            if control.type is MsgType.REPLICA_SYNCED:  # from a home whose shards it backs up
                assert server.replication is not None
                server.replication.on_synced(bodies.body_of(control, bodies.ReplicaSynced))
                return
            assert source == COORDINATOR, control
            if control.type is MsgType.MIGRATE_OUT:
                server.migrations.start(bodies.body_of(control, MigrateOut))
            elif control.type is MsgType.MEMBERSHIP:  # as the node process applies it
                membership = bodies.body_of(control, bodies.Membership)
                if membership.lost:
                    server.take_back_from_lost(set(membership.lost))
                server.set_shard_map(ShardMap.from_json(membership.shard_map))
            elif control.type is MsgType.RECOVER:
                order = bodies.body_of(control, bodies.Recover)
                server.recoveries.start(order.id, order.shards, order.source, set(self.live()))
            return
        worker = node_of(dest)
        self.clients[worker]._requests.receive(frames)
        if worker in self.busy:
            self._finish(worker)

    def settle(self, data: st.DataObject | None) -> None:
        while True:
            self.step()
            busy = sorted(self.network.busy())
            if not busy:
                if any(s.migrations.tracking for s in self.live().values()):
                    continue
                if any(s.recoveries.resend for s in self.live().values()):
                    self.resend()
                    continue
                if any(s.departures.fenced for s in self.live().values()):
                    self.lift_fences()
                    continue
                return
            choice = data.draw(st.sampled_from(busy)) if data is not None else busy[0]
            self.deliver(choice)

    # ---------------------------------------------------------------- invariants

    def check(self) -> None:
        assert not self.busy, f"operations that never completed: {self.busy}"
        for worker, ps in self.clients.items():
            assert not ps._requests.handles, f"worker {worker} has requests in flight"
        owners = np.zeros(NUM_KEYS, dtype=int)
        total = np.zeros(NUM_KEYS)
        for node, server in self.live().items():
            store = server.stores[0]
            assert not (store.loc == INCOMING).any(), f"node {node} still expects keys"
            assert not any(server.relocations.pending), f"node {node} has queued requests"
            assert not server.gate.held, f"node {node} holds requests"
            assert not server.future, f"node {node} waits for an epoch"
            assert server.shard_map.epoch == self.shard_map.epoch
            assert not any(server.relocations.waiting), f"node {node} has relocations waiting"
            if store.moving_from is not None:
                homed = server.homed(0)
                assert (store.moving_from[homed] == -1).all(), f"node {node} thinks keys are still moving"
            assert server.stats["anomalies"] == 0
            assert server.stats["malformed"] == 0
            mine = store.loc == node
            owners += mine
            total[mine] += store.values[mine, 0]
        assert (owners == 1).all(), f"keys with owner count != 1: {np.flatnonzero(owners != 1)}"
        np.testing.assert_array_equal(total, self.pushed)
        for home in self.servers():
            if home in self.dead:
                continue
            store = self.store(home)
            assert store.owner is not None
            homed = self.shard_map.home_of(np.arange(NUM_KEYS), NUM_KEYS) == home
            for key in np.flatnonzero(homed):
                owner = int(store.owner[key])
                assert self.store(owner).loc[key] == owner, f"directory wrong for key {key}"
