"""The coordinator: rendezvous, membership, the shard map, barriers, clocks and job end.

One per job.  Start-up is two-phase so that no data message can reach a node before it
knows who may send it:

1. servers and worker nodes REGISTER and get node ids (WELCOME);
2. when all expected nodes are there, the coordinator fixes the shard map and sends
   MEMBERSHIP(phase=prepare) to the nodes, which build their stores and answer READY;
3. the training processes (clients) REGISTER with their node id; once every node is
   READY and every worker's client is registered, MEMBERSHIP(phase=running) goes to
   everyone and training starts.

The job ends when every worker node reports WORKER_DONE (its program exited): the
coordinator sends SHUTDOWN to every process and exits with the job's status.
"""

from __future__ import annotations

import logging
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynaps import control
from dynaps.contract import ConsistencyModel, RuntimeConfig
from dynaps.control import Membership, NodeInfo
from dynaps.coordinator_http import StatusServer
from dynaps.errors import ProtocolError
from dynaps.protocol import COORDINATOR, Message, MsgType, client_of, control_frames, decode
from dynaps.shardmap import ShardMap
from dynaps.transport import Transport, ZmqTransport

log = logging.getLogger(__name__)

REFUSED_ENDPOINT = -2  # a temporary endpoint id for answering a refused registration


@dataclass
class Member:
    id: int
    role: control.Role
    address: str
    name: str
    pid: int
    rank: int | None = None
    client: str | None = None
    ready: bool = False
    exit_code: int | None = None
    clock: int = 0

    def info(self) -> NodeInfo:
        return NodeInfo(
            id=self.id,
            role=self.role,
            address=self.address,
            client=self.client,
            rank=self.rank,
            name=self.name,
            ready=self.ready,
        )


class Coordinator:
    def __init__(self, config: RuntimeConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self.digest = control.config_digest(config)
        self.members: dict[int, Member] = {}
        self.next_id = 1
        self.phase = "registering"
        self.version = 0
        self.shard_map: ShardMap | None = None
        self.barrier_generation = 0
        self.barrier_arrived: set[int] = set()
        self.min_clock = 0
        self.exit_code: int | None = None
        self.reason = ""
        self.started_at = time.time()
        self.commands: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.status_doc: dict[str, Any] = {}
        self._refresh_status()

    # ------------------------------------------------------------------ helpers

    def workers(self) -> list[Member]:
        return [m for m in self.members.values() if m.role == "worker"]

    def servers(self) -> list[Member]:
        return [m for m in self.members.values() if m.role == "server"]

    def membership(self) -> Membership:
        assert self.shard_map is not None
        phase = "running" if self.phase == "running" else self.phase
        return Membership(
            version=self.version,
            phase=phase,
            nodes=[m.info() for m in sorted(self.members.values(), key=lambda m: m.id)],
            shard_map=self.shard_map.to_json(),
            num_workers=len(self.workers()),
        )

    def _send(self, endpoint: int, kind: MsgType, body: dict[str, Any]) -> None:
        self.transport.send(endpoint, _control(kind, body))

    def _broadcast(self, kind: MsgType, body: dict[str, Any], clients: bool = True) -> None:
        for member in self.members.values():
            self._send(member.id, kind, body)
            if clients and member.client is not None:
                self._send(client_of(member.id), kind, body)

    # ------------------------------------------------------------------ messages

    def receive(self, frames: list[Any]) -> None:
        try:
            msg = decode(frames, [])
            self._dispatch(msg)
        except ProtocolError as exc:
            log.warning("coordinator dropped a malformed message: %s", exc)
        self._refresh_status()

    def _dispatch(self, msg: Message) -> None:
        kind = msg.type
        if kind is MsgType.REGISTER:
            self._on_register(control.parse(control.Register, msg.body))
        elif kind is MsgType.READY:
            self._on_ready(msg.sender, control.parse(control.Ready, msg.body))
        elif kind is MsgType.BARRIER:
            self._on_barrier(msg.sender, control.parse(control.Barrier, msg.body))
        elif kind is MsgType.CLOCK:
            self._on_clock(msg.sender, int((msg.body or {}).get("clock", 0)))
        elif kind is MsgType.WORKER_DONE:
            self._on_worker_done(msg.sender, control.parse(control.WorkerDone, msg.body))
        elif kind is MsgType.STATS:
            self._send(msg.sender, MsgType.STATS_REPLY, {"counters": self.status()})
        elif kind is MsgType.PING:
            self._send(msg.sender, MsgType.PONG, {})
        else:
            raise ProtocolError(f"coordinator does not handle {kind.name}")

    def _on_register(self, reg: control.Register) -> None:
        if reg.config_digest != self.digest:
            self._refuse(reg, "its configuration (tables, shards) differs from the coordinator's")
            return
        if reg.role == "client":
            self._register_client(reg)
            return
        if self.phase != "registering":
            self._refuse(reg, f"the job is already {self.phase}; live joins need a scale request")
            return
        expected = self.config.servers if reg.role == "server" else self.config.workers
        same_role = [m for m in self.members.values() if m.role == reg.role]
        if len(same_role) >= expected:
            self._refuse(reg, f"the job expects {expected} {reg.role}s and has them all")
            return
        member = Member(self.next_id, reg.role, reg.address, reg.name, reg.pid)
        self.next_id += 1
        if reg.role == "worker":
            taken = {m.rank for m in same_role}
            if reg.rank is not None and reg.rank not in taken and reg.rank < expected:
                member.rank = reg.rank
            else:
                member.rank = min(set(range(expected)) - taken)
        self.members[member.id] = member
        self.transport.connect(member.id, member.address)
        self._send(member.id, MsgType.WELCOME, {"node": member.id, "nonce": reg.nonce, "rank": member.rank})
        log.info("registered %s %d (%s) at %s", reg.role, member.id, reg.name, reg.address)
        if len(self.servers()) == self.config.servers and len(self.workers()) == self.config.workers:
            self._prepare()

    def _register_client(self, reg: control.Register) -> None:
        member = self.members.get(reg.node or -1)
        if member is None or member.role != "worker":
            self._refuse(reg, f"node {reg.node} is not a worker of this job")
            return
        member.client = reg.address
        self.transport.connect(client_of(member.id), reg.address)
        self._send(
            client_of(member.id),
            MsgType.WELCOME,
            {"node": member.id, "nonce": reg.nonce, "rank": member.rank},
        )
        if self.phase == "running":
            self.version += 1
            self._broadcast(MsgType.MEMBERSHIP, self.membership().model_dump())
        self._maybe_start()

    def _refuse(self, reg: control.Register, reason: str) -> None:
        log.error("refused %s at %s: %s", reg.role, reg.address, reason)
        self.transport.connect(REFUSED_ENDPOINT, reg.address)
        self._send(REFUSED_ENDPOINT, MsgType.REFUSED, {"nonce": reg.nonce, "reason": reason})
        self.transport.forget(REFUSED_ENDPOINT)

    def _prepare(self) -> None:
        policy = self.config.rebalance_policy
        servers = [m.id for m in self.servers()]
        self.shard_map = ShardMap.initial(policy.num_shards, policy.partition, servers)
        self.phase = "prepare"
        self.version += 1
        log.info("all %d nodes registered; preparing epoch %d", len(self.members), self.shard_map.epoch)
        self._broadcast(MsgType.MEMBERSHIP, self.membership().model_dump(), clients=False)

    def _on_ready(self, sender: int, ready: control.Ready) -> None:
        member = self.members.get(sender)
        if member is None:
            raise ProtocolError(f"READY from unknown node {sender}")
        member.ready = True
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self.phase != "prepare":
            return
        if not all(m.ready for m in self.members.values()):
            return
        if not all(m.client is not None for m in self.workers()):
            return
        self.phase = "running"
        self.version += 1
        log.info("job running with %d servers and %d workers", len(self.servers()), len(self.workers()))
        self._broadcast(MsgType.MEMBERSHIP, self.membership().model_dump())

    def _on_barrier(self, sender: int, barrier: control.Barrier) -> None:
        if barrier.generation != self.barrier_generation:
            raise ProtocolError(f"barrier {barrier.generation} while at {self.barrier_generation}")
        self.barrier_arrived.add(sender)
        clients = {client_of(m.id) for m in self.workers() if m.exit_code is None}
        if clients <= self.barrier_arrived:
            body = {"generation": self.barrier_generation}
            self.barrier_generation += 1
            self.barrier_arrived.clear()
            for endpoint in clients:
                self._send(endpoint, MsgType.BARRIER_DONE, body)

    def _on_clock(self, sender: int, clock: int) -> None:
        member = self.members.get(sender & ~0x4000)
        if member is None:
            raise ProtocolError(f"CLOCK from unknown endpoint {sender}")
        member.clock = max(member.clock, clock)
        self._publish_min_clock()

    def _publish_min_clock(self) -> None:
        if self.config.consistency.model == ConsistencyModel.ASYNC:
            return
        active = [m.clock for m in self.workers() if m.exit_code is None and m.client is not None]
        low = min(active) if active else self.min_clock
        if low > self.min_clock:
            self.min_clock = low
            for member in self.workers():
                if member.client is not None:
                    self._send(client_of(member.id), MsgType.CLOCK_MIN, {"clock": low})

    def _on_worker_done(self, sender: int, done: control.WorkerDone) -> None:
        member = self.members.get(sender)
        if member is None or member.role != "worker":
            raise ProtocolError(f"WORKER_DONE from {sender}, which is not a worker")
        member.exit_code = done.exit_code
        log.info("worker %d (rank %s) finished with exit code %d", member.id, member.rank, done.exit_code)
        if done.exit_code != 0:
            self.finish(done.exit_code, f"worker rank {member.rank} exited with code {done.exit_code}")
        elif all(m.exit_code is not None for m in self.workers()):
            self.finish(0, "all workers finished")
        else:
            self._publish_min_clock()

    def finish(self, exit_code: int, reason: str) -> None:
        if self.exit_code is not None:
            return
        self.exit_code = exit_code
        self.reason = reason
        self.phase = "stopping"
        log.info("job ends (%s): %s", exit_code, reason)
        self._broadcast(MsgType.SHUTDOWN, {"reason": reason, "exit_code": exit_code})
        self._refresh_status()

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The /status document; computed on the coordinator's thread, read from any."""
        return self.status_doc

    def _refresh_status(self) -> None:
        per_server: dict[str, int] = {}
        if self.shard_map is not None:
            for home in self.shard_map.homes.tolist():
                per_server[str(home)] = per_server.get(str(home), 0) + 1
        workers = self.workers()
        self.status_doc = {
            "job": self.config.job,
            "phase": self.phase,
            "epoch": self.shard_map.epoch if self.shard_map else 0,
            "shardsPerServer": per_server,
            "migrationsInFlight": 0,
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "servers": {"desired": self.config.servers, "ready": sum(1 for m in self.servers() if m.ready)},
            "workers": {
                "desired": self.config.workers,
                "ready": sum(1 for m in workers if m.client is not None),
                "finished": sum(1 for m in workers if m.exit_code is not None),
            },
            "members": [
                {
                    "id": m.id,
                    "role": m.role,
                    "name": m.name,
                    "address": m.address,
                    "rank": m.rank,
                    "ready": m.ready,
                    "attached": m.client is not None,
                    "exitCode": m.exit_code,
                    "clock": m.clock,
                }
                for m in sorted(self.members.values(), key=lambda m: m.id)
            ],
        }


def _control(kind: MsgType, body: dict[str, Any]) -> list[Any]:
    return control_frames(kind, COORDINATOR, body)


def new_nonce() -> str:
    return secrets.token_hex(8)


def serve_coordinator(config: RuntimeConfig, announce: Callable[[str, int], None]) -> int:
    """Run the coordinator process until the job ends; returns the job's exit code."""
    _host, _, port_text = config.coordinator.rpartition(":")
    transport = ZmqTransport(COORDINATOR, config.bind_host, int(port_text or 0), config.advertise_host)
    coordinator = Coordinator(config, transport)
    http = StatusServer(
        config.bind_host,
        config.coordinator_http_port,
        coordinator.status,
        lambda action, body: coordinator.commands.put((action, body)),
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    announce(transport.address, http.port)
    try:
        while coordinator.exit_code is None:
            if stop.is_set():
                coordinator.finish(143, "the coordinator was asked to stop")
                break
            frames = transport.recv(timeout=0.1)
            while frames is not None:
                coordinator.receive(frames)
                frames = transport.recv_nowait()
            while not coordinator.commands.empty():
                action, _body = coordinator.commands.get_nowait()
                if action == "shutdown":
                    coordinator.finish(0, "shutdown requested")
        return coordinator.exit_code if coordinator.exit_code is not None else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        http.close()
        transport.close(linger=0.5)
