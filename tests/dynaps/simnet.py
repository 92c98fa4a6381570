"""A simulated network for protocol tests: the real runtime in one process, no sockets.

Each sender->receiver channel is FIFO (as ZeroMQ's are); tests choose the order across
channels.  Every participant is the real thing, fed by the network instead of a socket:

* endpoint 0 is the real :class:`~dynaps.coordinator.core.Coordinator` (on a test clock);
* each node is a real :class:`~dynaps.node.server.NodeServer` whose control messages go
  to its real :class:`~dynaps.node.control_plane.ControlPlane`, as in the node process;
  a node joins as the process does (REGISTER, WELCOME, MEMBERSHIP, build the store, READY);
* each worker's training process is a real :class:`~dynaps.client.ps.PS` sharing its
  node's store, issuing one operation at a time (synchronous semantics) with
  ``wait=False`` so the test can deliver its messages.

What remains of the processes' shells is here: the join above, removing a node that
stopped, and time.  Time is the coordinator's and control planes' test clock; the other
timers of a node (flush, re-send, relocation fence) run on the monotonic clock and the
test fires them explicitly (:meth:`Cluster.flush`, :meth:`Cluster.resend`,
:meth:`Cluster.lift_fences`).  Nodes send no heartbeats: the heartbeat interval is long
enough that no node falls silent within a test, and a crash is the coordinator seeing
the connection drop (:meth:`Cluster.kill`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from dynaps.client.handles import Handle
from dynaps.client.ps import PS
from dynaps.contract import NamedTable, RuntimeConfig
from dynaps.coordinator.core import Coordinator, JobPhase
from dynaps.node.control_plane import ControlPlane
from dynaps.node.server import NodeServer
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.wire import control, messages
from dynaps.wire.codec import decode
from dynaps.wire.protocol import COORDINATOR, NO_ENDPOINT, MsgType, client_of, node_of
from tests.dynaps.harness import Clock, FakeShell, RecordingTransport

SERVERS = [1, 2]
WORKERS = [3, 4, 5]
SPARE = 6  # the third server: homes shards from the start under replication, else joins later
NUM_KEYS = 6  # few keys, so random operations collide on them
NUM_SHARDS = 4
HEARTBEAT_MS = 1_000_000  # no node falls silent for long enough to be declared lost in a test
TICK = 1.0  # seconds of test clock per tick
FLUSHED_BY_TEST = 1_000_000  # ms: replication flushes only when the test says
ALWAYS = 1e18  # a monotonic time after every deadline a node sets itself
SETTLE_LIMIT = 100_000  # steps before settle gives up (something never converges)


@dataclass
class Network:
    """Per-channel FIFO queues of encoded frames; what is sent to ``dead`` endpoints is lost,
    and what ``lose`` picks (source, destination, frames): a message a test makes vanish."""

    channels: dict[tuple[int, int], collections.deque[list[bytes]]] = field(
        default_factory=lambda: collections.defaultdict(collections.deque)
    )
    dead: set[int] = field(default_factory=set)
    lose: Callable[[int, int, Sequence[Any]], bool] | None = None

    def send(self, source: int, dest: int, frames: Sequence[Any]) -> None:
        if node_of(dest) in self.dead or (self.lose is not None and self.lose(source, dest, frames)):
            return
        self.channels[(source, dest)].append([bytes(memoryview(f)) for f in frames])

    def busy(self) -> list[tuple[int, int]]:
        return [key for key, queue in self.channels.items() if queue]

    def addressed_to(self, node: int) -> bool:
        """Whether anything is on its way to ``node`` (or its training process)."""
        return any(queue and node_of(dest) == node for (_, dest), queue in self.channels.items())


class SimTransport:
    spin = 0.0  # never spins: time is the test's

    def __init__(self, network: Network, endpoint: int) -> None:
        self.network = network
        self.endpoint = endpoint
        self.address = f"sim://{endpoint}"
        self.rejected = 0
        self.last_rejected = ""

    def connect(self, endpoint: int, address: str) -> None: ...

    def forget(self, endpoint: int, linger: float = 0.0) -> None: ...

    def knows(self, endpoint: int) -> bool:
        return True

    def send(self, endpoint: int, frames: Any) -> None:
        self.network.send(self.endpoint, endpoint, frames)

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        return None

    def close(self, linger: float = 0.0) -> None: ...


class CoordinatorWire(RecordingTransport):
    """The coordinator's transport: what it sends goes into the simulated network."""

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network

    def send(self, endpoint: int, frames: Sequence[Any]) -> None:
        self.network.send(COORDINATOR, endpoint, frames)


@dataclass
class Starting:
    """A node process that registered and waits for its id and shard map."""

    role: control.Role
    node: int = 0  # from WELCOME
    rank: int | None = None


class Cluster:
    """The coordinator, servers 1 and 2, worker nodes 3, 4 and 5 with a real ``PS`` each.

    With ``replicated``, server 6 is in the job from the start (it registers last) and
    every shard has ``replication`` backups; otherwise server 6 joins when the test says
    (:meth:`join_spare`) and gets shards as the coordinator rebalances.
    """

    def __init__(self, replicated: bool = False, replication: int = 1) -> None:
        self.network = Network()
        self.spec = NamedTable(name="W", num_keys=NUM_KEYS, dim=1)
        self.replicated = replicated
        self.config = RuntimeConfig.model_validate(
            {
                "tables": [self.spec],
                "servers": len(SERVERS) + replicated,
                "workers": len(WORKERS),
                "rebalance_policy": {"num_shards": NUM_SHARDS},
                "fault_tolerance": {
                    "replication": replication if replicated else 0,
                    "heartbeat_interval_ms": HEARTBEAT_MS,
                },
            }
        )
        self.clock = Clock()
        self.started_at = self.clock.now
        self.wire = CoordinatorWire(self.network)
        self.coordinator = Coordinator(self.config, self.wire, clock=self.clock)
        self.nodes: dict[int, NodeServer] = {}
        self.planes: dict[int, ControlPlane] = {}  # each node's control plane
        self.shells: dict[int, FakeShell] = {}
        self.clients: dict[int, PS] = {}  # by worker node
        self.starting: dict[str, Starting] = {}  # by address
        self.dead: set[int] = set()  # crashed
        self.max_losses = 1
        self.stopped: set[int] = set()  # left the job and ended
        self.draining: set[int] = set()  # told to drain
        self.busy: dict[int, tuple[str, Handle, np.ndarray]] = {}
        self.pushed = np.zeros(NUM_KEYS)
        self.last_seen = {w: np.zeros(NUM_KEYS) for w in WORKERS}
        # registrations are answered in order: node ids are 1, 2, ... in this order
        launches: list[tuple[control.Role, str]] = [("server", "s1"), ("server", "s2")]
        launches += [("worker", f"w{w}") for w in WORKERS]
        if replicated:
            launches.append(("server", "spare"))
        for role, name in launches:
            self.launch(role, name)
            self.settle(None)
        assert self.coordinator.phase is JobPhase.RUNNING
        assert sorted(self.nodes) == sorted([*SERVERS, *WORKERS] + ([SPARE] if replicated else []))

    @property
    def shard_map(self) -> ShardMap:
        """The coordinator's shard map."""
        shard_map = self.coordinator.homes.shard_map
        assert shard_map is not None
        return shard_map

    def store(self, node: int) -> TableStore:
        return self.nodes[node].stores[0]

    def live(self) -> dict[int, NodeServer]:
        """The nodes that run (neither crashed nor ended)."""
        gone = self.dead | self.stopped
        return {node: server for node, server in self.nodes.items() if node not in gone}

    def servers(self) -> list[int]:
        return [node for node in self.live() if self.planes[node].role == "server"]

    # ---------------------------------------------------------------- joining, as the processes do

    def launch(self, role: control.Role, name: str) -> None:
        """A node process starts: it registers with the coordinator."""
        address = f"sim://{name}"
        self.starting[address] = Starting(role)
        register = control.Register(
            role=role,
            address=address,
            nonce=name,
            config_digest=control.config_digest(self.config),
            name=name,
        )
        self.network.send(NO_ENDPOINT, COORDINATOR, messages.control(MsgType.REGISTER, NO_ENDPOINT, register))

    def _joining(self, endpoint: int, frames: list[bytes]) -> None:
        """The coordinator's answer to a node process that is not serving yet."""
        process = self.starting[self.wire.addresses[endpoint]]
        msg = decode(frames, [])
        if msg.type is MsgType.WELCOME:
            welcome = control.body_of(msg, control.Welcome)
            process.node, process.rank = welcome.node, welcome.rank
        elif msg.type is MsgType.MEMBERSHIP:
            assert process.node == endpoint, "a membership before the welcome"
            del self.starting[self.wire.addresses[endpoint]]
            self._build(process, control.body_of(msg, control.Membership))
        else:
            raise AssertionError(f"{msg.type.name} to a node that is not serving yet")

    def _build(self, process: Starting, membership: control.Membership) -> None:
        """Build the store from the shard map, tell the coordinator READY, attach the program."""
        node = process.node
        shard_map = ShardMap.from_json(membership.shard_map)
        worker = process.role == "worker"
        store = TableStore.create(
            0,
            self.spec,
            shard_map,
            home=None if worker else node,
            shared=False,
            track_changes=self.replicated,
        )
        server = NodeServer(
            node,
            SimTransport(self.network, node),
            [store],
            shard_map,
            NullLock(),
            flush_interval_ms=FLUSHED_BY_TEST if self.replicated else None,
        )
        shell = FakeShell()
        plane = ControlPlane(server, process.role, shell, drain_timeout=60.0, clock=self.clock)
        plane.apply_membership(membership)
        self.nodes[node], self.planes[node], self.shells[node] = server, plane, shell
        plane.send_coordinator(MsgType.READY, control.Ready(version=membership.version))
        if worker:
            self._attach(node, process.rank)

    def _attach(self, worker: int, rank: int | None) -> None:
        """The worker's training process shares its node's store, as through shared memory,
        and registers with the coordinator; the running membership then reaches it."""
        assert rank is not None
        endpoint = client_of(worker)
        transport = SimTransport(self.network, endpoint)
        ps = PS(
            self.config,
            worker,
            rank,
            [self.store(worker)],
            NullLock(),  # type: ignore[arg-type]
            transport,  # type: ignore[arg-type]
        )
        self.clients[worker] = ps
        register = control.Register(
            role="client",
            address=transport.address,
            nonce=f"client-{worker}",
            config_digest=control.config_digest(self.config),
            node=worker,
        )
        transport.send(COORDINATOR, messages.control(MsgType.REGISTER, endpoint, register))

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

    def noted(self, worker: int) -> None:
        """Deliver ``worker``'s HOLDING to the coordinator and its answer back: the LOCALIZE
        it held back leaves (``dynaps.client.holdings``); for tests that deliver by hand."""
        self.deliver((client_of(worker), COORDINATOR))
        self.deliver((COORDINATOR, client_of(worker)))

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

    # ---------------------------------------------------------------- the coordinator's decisions

    def join_spare(self) -> None:
        """Server 6 joins (the job is scaled up first); the coordinator moves shards to it."""
        if SPARE in self.nodes or self.starting:
            return
        self.coordinator.run_command("scale", {"servers": len(SERVERS) + 1})
        self.launch("server", "spare")

    def drain(self, server: int) -> None:
        """Ask the coordinator to drain ``server``: its shards move away, then it leaves.

        Only while another server that stays can take its shards.
        """
        member = self.coordinator.roster.get(server)
        if member is None or member.role != "server" or member.state != "ready" or server in self.draining:
            return
        staying = [s for s in self.coordinator.roster.ready_servers() if s not in self.draining | {server}]
        if not staying:
            return
        self.draining.add(server)
        self.coordinator.run_command("drain", {"node": str(server)})

    def kill(self, server: int, keep_sent: bool, unsettled: bool = False) -> None:
        """Server ``server`` crashes; what it already sent arrives (``keep_sent``) or not.

        The coordinator sees its connection drop and, a moment later, declares it lost: its
        shards move to their backups in a new epoch, everyone learns of the loss, and each
        new home is told to rebuild.  At most ``max_losses`` in a test, one at a time (none
        while shards move: ``replication: 1`` survives one loss, not two at once; a test of
        ``replication: 2`` may kill while they move, ``unsettled``).
        """
        member = self.coordinator.roster.get(server)
        if len(self.dead) >= self.max_losses or member is None or member.role != "server":
            return
        if not self.coordinator.homes.settled and not unsettled:
            return
        self.dead.add(server)
        self.network.dead.add(server)
        for (source, dest), queue in self.network.channels.items():
            if node_of(dest) == server or (source == server and not keep_sent):
                queue.clear()
        self.clock.now += 0.01  # its last word came before the connection dropped
        self.wire.dropped.append(server)
        self.coordinator.tick()  # suspect
        self.clock.now += self.coordinator.liveness.grace_after_disconnect + 0.01
        self.coordinator.tick()  # lost
        assert server in self.coordinator.roster.lost

    # ---------------------------------------------------------------- time

    def tick(self) -> None:
        """Time passes: the coordinator's duties, the drains; a node that stopped ends."""
        self.clock.now += TICK
        assert self.clock.now - self.started_at < self.coordinator.liveness.lost_after, "nodes fell silent"
        self.coordinator.tick()
        for node in self.live():
            plane = self.planes[node]
            if plane.drain is not None:
                plane.drainer.advance(self.clock.now)
        for node in list(self.live()):
            # It lingers until nothing is addressed to it any more.
            if "stop_loop" in self.shells[node].calls and not self.network.addressed_to(node):
                self.stopped.add(node)
                self.network.dead.add(node)

    def waits_for_time(self) -> bool:
        """Whether something happens only once time passes (a drain, a delayed rebalance)."""
        drains = any(self.planes[node].drain is not None for node in self.live())
        return drains or self.coordinator.homes._rebalance_at is not None

    def flush(self) -> None:
        """Every node writes back the keys it holds that changed (one flush interval)."""
        for server in self.live().values():
            if server.writeback is not None:
                server.writeback.flush(ALWAYS)
                server.writeback.last_flush = 0.0

    def resend(self) -> None:
        """The grace period of every rebuild ended: re-send keys still expected."""
        for server in self.live().values():
            server.recoveries.tick(ALWAYS)

    def lift_fences(self) -> None:
        """The relocation fence after a loss is over (time passed)."""
        for server in self.live().values():
            server.lift_fence(ALWAYS)

    def silence(self) -> None:
        """Every client's requests in flight had no answer for long: each is sent again to its
        keys' homes, marked RETRY (dynaps.client.retries.Retries.resend_silent), whether its
        message, its answer or neither was lost."""
        for ps in self.clients.values():
            requests = ps._requests
            if requests.handles:
                later = time.perf_counter_ns() + 10**15  # past every silence limit, every time
                requests.retries.resend_silent(later, requests.shard_map, requests.epoch)

    def step(self) -> None:
        """A turn of every node's loop: the next pre-copy chunk, or the freeze."""
        for server in self.live().values():
            if server.migrations.tracking:
                server.migrations.step()

    # ---------------------------------------------------------------- delivery

    def deliver(self, channel: tuple[int, int]) -> None:
        dest = channel[1]
        frames = self.network.channels[channel].popleft()
        if dest == COORDINATOR:
            self.coordinator.receive(frames)
            self.coordinator.end_turn()
        elif dest in self.nodes:
            control_msg = self.nodes[dest].receive(frames)
            if control_msg is not None:  # as the node process does: to its control plane
                self.planes[dest].on_message(control_msg)
        elif node_of(dest) in self.clients:
            worker = node_of(dest)
            self.clients[worker]._requests.receive(frames)
            if worker in self.busy:
                self._finish(worker)
        else:
            self._joining(dest, frames)

    def settle(self, data: st.DataObject | None) -> None:
        """Deliver (in the order ``data`` draws) and let time pass until nothing happens.

        With ``data``, time may also pass between deliveries while something waits for it.
        """
        for _ in range(SETTLE_LIMIT):
            self.step()
            busy = sorted(self.network.busy())
            if busy:
                # time passes while messages are in flight, if something waits for it
                options: list[tuple[int, int] | None] = [*busy, None] if self.waits_for_time() else [*busy]
                choice = data.draw(st.sampled_from(options)) if data is not None else busy[0]
                if choice is None:
                    self.tick()
                else:
                    self.deliver(choice)
            elif any(s.migrations.tracking for s in self.live().values()):
                continue
            elif any(s.recoveries.resend for s in self.live().values()):
                self.resend()
            elif any(s.departures.fenced for s in self.live().values()):
                self.lift_fences()
            elif self.waits_for_time():
                self.tick()
            else:
                return
        raise AssertionError("the cluster never settled")

    # ---------------------------------------------------------------- invariants

    def check(self) -> None:
        assert not self.busy, f"operations that never completed: {self.busy}"
        for worker, ps in self.clients.items():
            assert not ps._requests.handles, f"worker {worker} has requests in flight"
        assert self.coordinator.homes.settled, "the coordinator has migrations or recoveries in flight"
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
            assert not server.relocations.releases.unconfirmed, f"node {node} waits for keys it gave back"
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
            store = self.store(home)
            assert store.owner is not None
            homed = self.shard_map.home_of(np.arange(NUM_KEYS), NUM_KEYS) == home
            for key in np.flatnonzero(homed):
                owner = int(store.owner[key])
                assert self.store(owner).loc[key] == owner, f"directory wrong for key {key}"


def rebalanced_after_a_loss() -> Cluster:
    """A replicated cluster (two losses allowed) whose workers pushed to every key, after the
    first server's loss: its shards rebuilt from their backups, then rebalanced (a migration)."""
    cluster = Cluster(replicated=True)
    cluster.max_losses = 2
    for worker in WORKERS:
        cluster.start("push", worker, list(range(NUM_KEYS)))
        cluster.settle(None)
    cluster.kill(SERVERS[0], True)
    cluster.settle(None)
    assert cluster.coordinator.homes.rebalancer.completed == 1
    return cluster
