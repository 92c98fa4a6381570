"""A node's process: register, build the store, serve, and (on workers) run the program.

``dynaps server`` and ``dynaps worker [-- COMMAND ...]`` run :func:`serve_node`.  A worker
node shares its store with one training process (the client): either the COMMAND it
starts as a child, with ``DYNAPS_ATTACH`` in its environment, or a process that attaches
by token (``LocalCluster``'s runners).  When the child exits, the node reports
WORKER_DONE and keeps serving its keys until the coordinator ends the job.

SIGTERM (or a DRAIN from the coordinator) starts a graceful leave: LEAVE to the
coordinator; a worker tells its training process (``dynaps.Drained`` at its next call)
and waits for it to finish; a server waits until its shards have moved away; then the
node gives every key it still holds back to its home, sends LEFT and exits 0.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynaps.config import spin_seconds
from dynaps.contract import CONFIG_ENV, CONFIG_FILE_ENV, RuntimeConfig
from dynaps.errors import ClusterError, ProtocolError
from dynaps.node.server import NodeServer
from dynaps.store.checkpoint_files import load_keys, resolve, write_owned
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import AttachServer, NullLock, Segment, SharedLock, pid_alive
from dynaps.store.table_store import TableStore
from dynaps.wire import control
from dynaps.wire.protocol import COORDINATOR, Message, MsgType, control_frames, node_of
from dynaps.wire.transport import ZmqTransport

log = logging.getLogger(__name__)

ATTACH_ENV = "DYNAPS_ATTACH"
CHILD_GRACE_SECONDS = 10.0
CHORES_INTERVAL = 0.05  # seconds between periodic duties (heartbeat, attach, child, drain)
LEAVE_LINGER = 1.0  # seconds a node that left keeps forwarding stragglers
CONTROL_BYTES = 64  # the small segment shared with the client; byte 0: draining


def attach_address(token: str) -> str:
    return f"\0dynaps-{token}"


class NodeProcess:
    """State of a running node process (the loop is :meth:`run`)."""

    def __init__(
        self,
        role: control.Role,
        config: RuntimeConfig,
        command: Sequence[str] | None = None,
        attach_token: str | None = None,
        rank: int | None = None,
        name: str = "",
    ) -> None:
        self.role = role
        self.config = config
        self.command = list(command or [])
        self.attach_token = attach_token or secrets.token_hex(8)
        self.rank = rank
        self.name = name or f"{role}-{os.getpid()}"
        self.transport = ZmqTransport(
            -1, config.bind_host, config.data_port, config.advertise_host, spin=spin_seconds()
        )
        self.transport.connect(COORDINATOR, f"tcp://{config.coordinator}")
        self.child: subprocess.Popen[bytes] | None = None
        self.child_reported = False
        self.client_pid: int | None = None
        self.exit_code = 0
        self.stop = threading.Event()
        self.server: NodeServer | None = None
        self.attach_server: AttachServer | None = None
        self.lock: SharedLock | NullLock = NullLock()
        self.control_segment: Segment | None = None
        self.drain_state: str | None = None  # None, "client", "shards", "keys"
        self.drain_requested = ""  # set by the SIGTERM handler, acted on in the loop
        self.dump_requested = False  # SIGUSR1: log this node's state (for operators)
        self.members: set[int] = set()  # live node ids, from the last membership
        self.checkpoint: dict[str, Any] | None = None  # the checkpoint being taken, if any
        self.client_address: str | None = None
        self.drain_deadline = 0.0
        self.last_heartbeat = 0.0
        self.heartbeat_interval = config.fault_tolerance.heartbeat_interval_ms / 1000

    # ------------------------------------------------------------------ start-up

    def start(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        nonce = secrets.token_hex(8)
        body = control.Register(
            role=self.role,
            address=self.transport.address,
            nonce=nonce,
            config_digest=control.config_digest(self.config),
            pid=os.getpid(),
            name=self.name,
            rank=self.rank,
        ).model_dump()
        self.transport.send(COORDINATOR, control_frames(MsgType.REGISTER, -1, body))
        while True:
            msg = control.await_coordinator(self.transport, {MsgType.WELCOME}, deadline, "a node id")
            welcome = control.parse(control.Welcome, msg.body)
            if welcome.nonce == nonce:
                break
        self.node_id = welcome.node
        self.rank = welcome.rank
        self.transport.endpoint = self.node_id
        msg = control.await_coordinator(self.transport, {MsgType.MEMBERSHIP}, deadline, "the shard map")
        membership = control.parse(control.Membership, msg.body)
        shard_map = ShardMap.from_json(membership.shard_map)
        worker = self.role == "worker"
        if worker:
            self.lock = SharedLock.create()
            self.control_segment = Segment.create("control", (CONTROL_BYTES,), np.dtype(np.uint8))
        replicated = self.config.fault_tolerance.replication > 0
        stores = [
            TableStore.create(
                i,
                spec,
                shard_map,
                home=None if worker else self.node_id,
                shared=worker,
                track_changes=replicated,
            )
            for i, spec in enumerate(self.config.tables)
        ]
        self.server = NodeServer(
            self.node_id,
            self.transport,
            stores,
            shard_map,
            self.lock,
            flush_interval_ms=self.config.fault_tolerance.flush_interval_ms if replicated else None,
            checkpoint_root=self.config.fault_tolerance.checkpoint.path,
        )
        restore = self.config.fault_tolerance.checkpoint.restore_from
        if restore and not worker and membership.phase == "prepare":
            self._restore(restore)
        self._apply_membership(membership)
        if worker:
            self.attach_server = AttachServer(self.attach_token)
        self._send_coordinator(MsgType.READY, {"version": membership.version})
        log.info("%s node %d ready (rank %s)", self.role, self.node_id, self.rank)
        if worker and self.command:
            env = dict(os.environ)
            env[ATTACH_ENV] = self.attach_token
            env[CONFIG_ENV] = self.config.to_json()
            env.pop(CONFIG_FILE_ENV, None)
            # Its own session: a pod's SIGTERM reaches this node, which drains and lets the
            # program finish (it sees dynaps.Drained), instead of killing it mid-step.
            self.child = subprocess.Popen(self.command, env=env, start_new_session=True)

    def _restore(self, which: str) -> None:
        """Start from a checkpoint: load the values of the keys this server homes."""
        server = self.server
        assert server is not None
        directory = resolve(self.config.fault_tolerance.checkpoint.path, which)
        if directory is None:
            log.warning("node %d: no checkpoint to restore yet; starting from initial values", self.node_id)
            return
        total = 0
        for table, store in enumerate(server.stores):
            total += len(load_keys(store, directory, server.homed(table)))
        log.info("node %d: restored %d keys from %s", self.node_id, total, directory)

    def _send_coordinator(self, kind: MsgType, body: dict[str, Any]) -> None:
        self.transport.send(COORDINATOR, control_frames(kind, self.node_id, body))

    def _apply_membership(self, membership: control.Membership) -> None:
        server = self.server
        assert server is not None
        members = control.connect_members(self.transport, membership)
        self.members = {info.id for info in membership.nodes}
        mine = membership.node(self.node_id)
        if mine is not None:
            self.client_address = mine.client
        departed = {e for e in server.peers - members if e > 0 and node_of(e) not in membership.lost}
        server.peers |= members
        if membership.lost:
            server.take_back_from_lost(set(membership.lost))
        new_map = ShardMap.from_json(membership.shard_map)
        if new_map.epoch > server.shard_map.epoch:
            server.set_shard_map(new_map)
        server.departures.forget_departed({node_of(e) for e in departed} - {self.node_id})

    # ------------------------------------------------------------------ serving

    def run(self) -> int:
        server = self.server
        assert server is not None
        next_chores = 0.0
        while not self.stop.is_set():
            busy = server.migrations.tracking
            # spin: a client usually sends its next request right after our answer
            frames = self.transport.recv(timeout=0.0 if busy else CHORES_INTERVAL, spin=True)
            if frames is not None:
                self._handle(frames)
                self._drain_inbox()
            if busy:
                server.migrations.step()  # one pre-copy chunk per turn, between requests
            now = time.monotonic()
            if now >= next_chores:  # periodic duties, off the request path
                next_chores = now + CHORES_INTERVAL
                self._chores(now)
        return self.exit_code

    def _chores(self, now: float) -> None:
        if now - self.last_heartbeat >= self.heartbeat_interval:
            self.last_heartbeat = now
            self._send_coordinator(MsgType.HEARTBEAT, self._heartbeat().model_dump())
        if self.attach_server is not None:
            self._accept_client()
        self._watch_child()
        if self.drain_requested:
            self.start_drain(self.drain_requested)
        if self.dump_requested:
            self.dump_requested = False
            self._dump_state()
        if self.drain_state is not None:
            self._advance_drain(now)
        assert self.server is not None
        self.server.recoveries.tick(now)
        self.server.lift_fence(now)
        if self.server.replication is not None:
            self.server.replication.flush(now)
        if (
            self.checkpoint is not None
            and self.checkpoint["phase"] == "pause"
            and self.server.relocations.quiet()
        ):
            self.checkpoint["phase"] = "quiet"
            self._send_coordinator(MsgType.CHECKPOINT_DONE, {"id": self.checkpoint["id"], "phase": "pause"})

    def _handle(self, frames: list[Any]) -> None:
        assert self.server is not None
        msg = self.server.receive(frames)
        if msg is not None:
            self._on_control(msg)

    def _drain_inbox(self) -> None:
        for _ in range(10_000):  # bounded, so a flood cannot starve the other duties
            if self.stop.is_set():
                return
            frames = self.transport.recv_nowait()
            if frames is None:
                return
            self._handle(frames)

    def _on_control(self, msg: Message) -> None:
        assert self.server is not None
        try:
            if msg.type is MsgType.MEMBERSHIP:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("MEMBERSHIP from a non-coordinator")
                self._apply_membership(control.parse(control.Membership, msg.body))
            elif msg.type is MsgType.SHUTDOWN:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("SHUTDOWN from a non-coordinator")
                log.info("node %d: shutdown (%s)", self.node_id, (msg.body or {}).get("reason"))
                self.stop.set()
            elif msg.type is MsgType.MIGRATE_OUT:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("MIGRATE_OUT from a non-coordinator")
                self.server.migrations.start(control.parse(control.MigrateOut, msg.body))
            elif msg.type is MsgType.DRAIN:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("DRAIN from a non-coordinator")
                self.start_drain(str((msg.body or {}).get("reason", "drain requested")))
            elif msg.type is MsgType.ADOPT:  # a restarted coordinator rebuilds the job
                if msg.sender != COORDINATOR:
                    raise ProtocolError("ADOPT from a non-coordinator")
                body = {
                    "heartbeat": self._heartbeat().model_dump(),
                    "shard_map": self.server.shard_map.to_json(),
                }
                self._send_coordinator(MsgType.REJOIN, body)
            elif msg.type is MsgType.MIGRATE_ABORT:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("MIGRATE_ABORT from a non-coordinator")
                self.server.migrations.abort(control.parse(control.MigrateReady, msg.body).id)
            elif msg.type is MsgType.RECOVER:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("RECOVER from a non-coordinator")
                order = control.parse(control.Recover, msg.body)
                self.server.recoveries.start(order.id, order.shards, order.source, self.members)
            elif msg.type is MsgType.OWNERS_QUERY:
                if node_of(msg.sender) not in self.members:
                    raise ProtocolError(f"OWNERS_QUERY from unknown node {msg.sender}")
                query = control.parse(control.OwnersQuery, msg.body)
                self.server.recoveries.report_owners(
                    msg.sender, query.id, np.asarray(query.shards, dtype=np.int64)
                )
            elif msg.type is MsgType.CHECKPOINT:
                if msg.sender != COORDINATOR:
                    raise ProtocolError("CHECKPOINT from a non-coordinator")
                self._on_checkpoint(control.parse(control.Checkpoint, msg.body))
            elif msg.type in (MsgType.STATS, MsgType.PING):
                if msg.sender not in self.server.peers:
                    raise ProtocolError(f"{msg.type.name} from unknown endpoint {msg.sender}")
                if msg.type is MsgType.STATS:
                    reply = control_frames(
                        MsgType.STATS_REPLY, self.node_id, {"counters": self.server.counters()}, msg.req_id
                    )
                else:
                    reply = control_frames(MsgType.PONG, self.node_id, {}, msg.req_id)
                self.transport.send(msg.sender, reply)
            else:
                raise ProtocolError(f"node does not handle {msg.type.name}")
        except ProtocolError as exc:
            self.server.note_malformed(exc)

    def _accept_client(self) -> None:
        assert self.attach_server is not None
        assert self.server is not None
        fds: list[int] = []
        tables = []
        for store in self.server.stores:
            tables.append({"name": store.name, "fds": len(store.fds())})
            fds.extend(store.fds())
        assert self.control_segment is not None
        fds.append(self.control_segment.fd)
        description = {
            "control": CONTROL_BYTES,
            "node": self.node_id,
            "rank": self.rank,
            "lock": self.lock.name,
            "digest": control.config_digest(self.config),
            "tables": tables,
            "config": self.config.to_json(),
        }
        try:
            hello = self.attach_server.accept(description, fds)
        except (OSError, ClusterError, ValueError) as exc:
            log.warning("node %d: attach failed: %s", self.node_id, exc)
            return
        if hello is None:
            return
        pid = int(hello.get("pid", 0))
        self.client_pid = pid
        # One training process per worker node: stop listening, so a second one is refused.
        self.attach_server.close()
        self.attach_server = None
        if isinstance(self.lock, SharedLock):
            self.lock.recover_when_dead(lambda: pid_alive(pid))
            self.lock.unlink()
        log.info("node %d: training process %d attached", self.node_id, pid)

    def _watch_child(self) -> None:
        if self.child is None or self.child_reported:
            return
        code = self.child.poll()
        if code is None:
            return
        self.child_reported = True
        self.exit_code = code
        log.info("node %d: program exited with code %d", self.node_id, code)
        self._send_coordinator(MsgType.WORKER_DONE, {"exit_code": code})

    def _on_checkpoint(self, order: control.Checkpoint) -> None:
        server = self.server
        assert server is not None
        if order.phase == "pause":  # homes: no new relocations, report once none is in flight
            server.relocations.pause()
            self.checkpoint = {"id": order.id, "phase": "pause"}
        elif order.phase == "write":
            directory = Path(order.path)
            written = 0
            server.lock.acquire()
            try:
                for store in server.stores:
                    written += write_owned(store, self.node_id, directory)
            finally:
                server.lock.release()
            self._send_coordinator(
                MsgType.CHECKPOINT_DONE, {"id": order.id, "phase": "write", "keys": written}
            )
        else:  # resume
            self.checkpoint = None
            server.relocations.resume()

    def _heartbeat(self) -> control.Heartbeat:
        assert self.server is not None
        exit_code = self.exit_code if self.child_reported else None
        return control.Heartbeat(
            role=self.role,
            address=self.transport.address,
            name=self.name,
            rank=self.rank,
            client=self.client_address,
            epoch=self.server.shard_map.epoch,
            exit_code=exit_code,
            draining=self.drain_state is not None,
        )

    def _dump_state(self) -> None:
        server = self.server
        assert server is not None
        queues = {
            "pending": [repr(m) for q in server.relocations.pending for m in q][:20],
            "waiting": [repr(m) for q in server.relocations.waiting for m in q][:20],
            "held": [repr(m) for m in server.gate.held][:20],
            "future": [repr(m) for m in server.future][:20],
            "outgoing": sorted(server.migrations.outgoing),
            "incoming": sorted(server.migrations.incoming),
            "rebuilds": {i: sorted(r.waiting_for) for i, r in server.recoveries.running.items()},
            "members": sorted(self.members),
        }
        log.warning(
            "node %d state: %s %s drain=%s", self.node_id, server.counters(), queues, self.drain_state
        )

    # ------------------------------------------------------------------ draining

    def start_drain(self, reason: str) -> None:
        """Begin a graceful leave (idempotent)."""
        if self.drain_state is not None:
            return
        log.info("node %d: draining (%s)", self.node_id, reason)
        self._send_coordinator(MsgType.LEAVE, {"reason": reason})
        self.drain_deadline = time.monotonic() + self.config.rebalance_policy.drain_timeout_seconds
        if self.role == "worker":
            if self.control_segment is not None:
                self.control_segment.array[0] = 1  # the training process raises Drained
            self.drain_state = "client"
        else:
            self.drain_state = "shards"

    def _advance_drain(self, now: float) -> None:
        server = self.server
        assert server is not None
        if self.drain_state == "client":
            if self._client_running() and now < self.drain_deadline:
                return
            if self.child is not None and self.child.poll() is None:
                self.child.terminate()  # it did not finish in time
            self.drain_state = "keys"
        if self.drain_state == "shards":
            if self.node_id in server.shard_map.homes or server.migrations.outgoing:
                return  # the coordinator moves our shards away first
            self.drain_state = "keys"
        if self.drain_state == "keys" and server.departures.release_owned() == 0:
            log.info("node %d: drained, leaving", self.node_id)
            self._send_coordinator(MsgType.LEFT, {})
            self.drain_state = "left"
            # Keep forwarding a little longer: peers that have not yet seen the membership
            # without us may still send here, and we know where everything went.
            self.drain_deadline = now + LEAVE_LINGER
        if self.drain_state == "left" and now >= self.drain_deadline:
            self.stop.set()

    def _client_running(self) -> bool:
        if self.child is not None:
            return self.child.poll() is None
        return self.client_pid is not None and pid_alive(self.client_pid)

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(CHILD_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        if self.attach_server is not None:
            self.attach_server.close()
        self.lock.unlink()
        if self.server is not None:
            for store in self.server.stores:
                store.close()
        self.transport.close(linger=0.5)


def serve_node(
    role: control.Role,
    config: RuntimeConfig,
    command: Sequence[str] | None = None,
    attach_token: str | None = None,
    rank: int | None = None,
    name: str = "",
) -> int:
    """Run a node process until the coordinator ends the job; returns its exit code."""
    node = NodeProcess(role, config, command, attach_token, rank, name)

    def on_signal(signum: int, frame: object) -> None:
        # Only flags here: a handler may interrupt a half-sent multipart message.
        if node.server is not None and signum == signal.SIGTERM:
            node.drain_requested = "SIGTERM"  # a member of the job: hand everything over first
        else:
            node.stop.set()

    def on_dump(signum: int, frame: object) -> None:
        node.dump_requested = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_dump)
    try:
        node.start()
        return node.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        node.close()
