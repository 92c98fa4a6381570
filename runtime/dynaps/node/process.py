"""A node's process: register, build the store, serve, and (on workers) run the program.

``dynaps server`` and ``dynaps worker [-- COMMAND ...]`` run :func:`serve_node`.  A worker
node shares its store with one training process (the client): either the COMMAND it
starts as a child, or a process that attaches by token (``LocalCluster``'s runners; the
node has it in ``DYNAPS_ATTACH_TOKEN``: an environment is readable by its user alone, a
command line by everyone); :mod:`dynaps.node.program` is the node's side of it.  When the
child exits, the node reports WORKER_DONE and keeps serving its keys until the coordinator
ends the job.

SIGTERM (or a DRAIN from the coordinator) starts a graceful leave
(:mod:`dynaps.node.control_plane`, where every control decision is taken); this module
is the shell around it: sockets, timers, shared memory, the child process, start-up.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dynaps.config import job_secret, spin_seconds, transport_kind
from dynaps.contract import FENCED_EXIT_CODE, RuntimeConfig, secret, silence_limit_seconds
from dynaps.node import metrics
from dynaps.node.control_plane import ControlPlane
from dynaps.node.program import Program
from dynaps.node.server import NodeServer
from dynaps.store.checkpoint_files import load_keys, resolve
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock, SharedLock
from dynaps.store.table_store import TableStore, layout_of
from dynaps.store.updaters import num_states
from dynaps.telemetry import exposition
from dynaps.wire import control, joining, limits, messages
from dynaps.wire.protocol import COORDINATOR, MsgType, client_of
from dynaps.wire.transport import message_bound, open_transport

log = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM
CHORES_INTERVAL = 0.05  # seconds between periodic duties (heartbeat, attach, child, drain)
# A server has no program whose stamp must stay fresh (store/control_block.py) and its
# duties' timescales are 0.5 s and more (heartbeats 0.2 s): an idle one wakes half as often
# (an idle 8-node job: 0.10 -> 0.07 CPU s per s with every node at 0.1 s, bench/README.md).
SERVER_CHORES_INTERVAL = 0.1


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
        self.chores_interval = CHORES_INTERVAL if role == "worker" else SERVER_CHORES_INTERVAL
        self.config = config
        self.command = list(command or [])
        self.attach_token = attach_token or secrets.token_hex(8)
        self.rank = rank
        self.name = name or f"{role}-{os.getpid()}"
        self.secret = job_secret()
        self.spin = spin_seconds()  # how long to poll for the next request after serving one
        self.transport = open_transport(
            transport_kind(),
            -1,
            secret.wire_key(self.secret),
            config.bind_host,
            config.data_port,
            config.advertise_host,
            spin=self.spin,
            max_message_bytes=message_bound(
                [layout_of(table, num_states(table.updater)) for table in config.tables]
            ),
            size=limits.job_size(config),  # a PUSH per node and per training process
        )
        self.transport.connect(COORDINATOR, f"tcp://{config.coordinator}")
        self.transport.watch(COORDINATOR)  # a draining node must know when nobody is left to ask
        self.program: Program | None = None  # a worker's training process
        self.child_reported = False  # its exit code is known and reported
        self.exit_code = 0
        self.stop = threading.Event()
        self.server: NodeServer | None = None
        self.control: ControlPlane | None = None  # the node's control decisions
        self.lock: SharedLock | NullLock = NullLock()
        self.metrics: exposition.MetricsServer | None = None
        self.drain_requested = ""  # set by the SIGTERM handler, acted on in the loop
        self.dump_requested = False  # SIGUSR1: log this node's state (for operators)
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
        )

        def register() -> None:
            self.transport.send(COORDINATOR, messages.control(MsgType.REGISTER, -1, body))

        register()
        while True:
            msg = joining.await_coordinator(
                self.transport, {MsgType.WELCOME}, deadline, "a node id", nonce, self.stop.is_set, register
            )
            welcome = control.body_of(msg, control.Welcome)
            if welcome.nonce == nonce:
                break
        self.node_id = welcome.node
        self.rank = welcome.rank
        self.transport.endpoint = self.node_id
        msg = joining.await_coordinator(
            self.transport,
            {MsgType.MEMBERSHIP},
            deadline,
            "the shard map",
            nonce,
            self.stop.is_set,
            lambda: joining.ask_membership(self.transport, self.node_id),
        )
        membership = control.body_of(msg, control.Membership)
        shard_map = ShardMap.from_json(membership.shard_map)
        worker = self.role == "worker"
        if worker:
            self.program = Program(self.attach_token, len(self.config.tables))
            self.lock = self.program.lock
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
            notices=None if self.program is None else self.program.notices,
        )
        if self.program is not None:
            self.server.applied.own_program = (client_of(self.node_id), self.program.block.settled_below)
        # a message that fails authentication counts as malformed, like one that fails decoding
        self.transport.on_rejected = self.server.note_malformed
        self.control = ControlPlane(
            self.server,
            self.role,
            self,
            self.config.rebalance_policy.drain_timeout_seconds,
            # a loop still for half the coordinator's silence limit may have been declared lost
            wake_gap=silence_limit_seconds(self.heartbeat_interval) / 2,
        )
        restore = self.config.fault_tolerance.checkpoint.restore_from
        first_map = membership.phase is control.Phase.PREPARE  # the job's, not a late joiner's
        restoring = bool(restore) and not worker and first_map
        if restoring:
            assert restore is not None
            self._restore(restore)
        if restoring and self.server.replication is not None:
            # the backups hold initial values: they get what was restored once the job runs
            self.control.sync_restored_when_running(np.flatnonzero(shard_map.homes == self.node_id))
        elif first_map and not restore and self.server.replication is not None:
            self.server.replication.synced_from_start(shard_map)
        self.control.apply_membership(membership)
        if self.config.metrics_port is not None:
            self._serve_metrics(self.config.metrics_port)
        if self.program is not None:
            self.program.listen(self.secret)
        self.control.send_coordinator(MsgType.READY, control.Ready(version=membership.version))
        log.info("%s node %d ready (rank %s)", self.role, self.node_id, self.rank)
        if self.program is not None and self.command:
            self.program.start_child(self.command, self.config)

    def _serve_metrics(self, port: int) -> None:
        assert self.server is not None
        usage_array = None if self.program is None else self.program.usage_segment.array
        registry = metrics.registry(self.server, self.role, self.rank, usage_array)
        self.metrics = exposition.MetricsServer(self.config.bind_host, port, registry)
        self.server.metrics_port = self.metrics.port
        log.info("node %d serves /metrics on %s:%d", self.node_id, self.config.bind_host, self.metrics.port)

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

    # ------------------------------------------------------------------ serving

    def run(self) -> int:
        server, control = self.server, self.control
        assert server is not None
        assert control is not None
        next_chores = 0.0
        served = False
        while not self.stop.is_set():
            busy = server.migrations.tracking
            # spin after a turn that served a message: a client usually sends its next request
            # right after our answer; after an idle turn (chores) nothing is due, and spinning
            # there was a sixth of an idle job's CPU (10-20 turns a second, bench/README.md)
            frames = self.transport.recv(
                timeout=0.0 if busy else self.chores_interval, spin=self.spin if served else 0.0
            )
            served = frames is not None
            control.turned(time.monotonic())  # after a gap, data waits (dynaps.node.waking)
            if frames is not None:
                self._handle(frames)
                self._drain_inbox()
            for held in control.take_released():
                self._handle(held)
            if busy:
                server.migrations.step()  # one pre-copy chunk per turn, between requests
            now = time.monotonic()
            if now >= next_chores:  # periodic duties, off the request path
                next_chores = now + self.chores_interval
                self._chores(now)
        assert self.control is not None
        if self.control.fenced and self.program is not None:
            self.program.block.fence()  # the program stops too (it may not read messages)
        if self.control.abandoned:
            return SIGTERM_EXIT_CODE  # terminated, not drained: to the operator, a lost pod
        return FENCED_EXIT_CODE if self.control.fenced else self.exit_code

    def _chores(self, now: float) -> None:
        if now - self.last_heartbeat >= self.heartbeat_interval:
            self.last_heartbeat = now
            assert self.control is not None
            self.control.send_coordinator(MsgType.HEARTBEAT, self.heartbeat())
        if self.program is not None:
            assert self.server is not None
            self.program.accept(self.node_id, self.rank, self.config, self.server.stores)
            self._watch_child(self.program)
        assert self.control is not None
        if self.drain_requested:
            self.control.start_drain(self.drain_requested)
        if COORDINATOR in self.transport.disconnected():
            self.control.coordinator_disconnected(now)
        if self.dump_requested:
            self.dump_requested = False
            self._dump_state()
        self.control.tick(now)
        if self.program is not None and not self.control.waking.holding:
            # duties done (a write-back included): the program may go on updating in place
            self.program.block.beat(now)

    def _handle(self, frames: Sequence[Any]) -> None:
        assert self.server is not None
        assert self.control is not None
        if not self.control.admit(frames):
            return  # held until the coordinator answers, or dropped by a fenced node
        msg = self.server.receive(frames)
        if msg is not None:
            self.control.on_message(msg)

    def _drain_inbox(self) -> None:
        # Bounded in time, not only in count, so a flood cannot starve the other duties: a
        # heartbeat held back behind 10,000 messages on a loaded machine got nodes declared
        # lost (bench/cpu_scaling.py, KGE at 8 nodes on 2 cores).
        deadline = time.monotonic() + CHORES_INTERVAL
        for count in range(10_000):
            if self.stop.is_set():
                return
            if count % 32 == 31 and time.monotonic() >= deadline:
                return
            frames = self.transport.recv_arrived()  # the loop's next recv reads what came since
            if frames is None:
                return
            self._handle(frames)

    def _watch_child(self, program: Program) -> None:
        code = program.exited()
        if code is None:
            return
        self.child_reported = True
        self.exit_code = code
        log.info("node %d: program exited with code %d", self.node_id, code)
        assert self.control is not None
        self.control.send_coordinator(MsgType.WORKER_DONE, control.WorkerDone(exit_code=code))

    def _dump_state(self) -> None:
        server, plane = self.server, self.control
        assert server is not None
        assert plane is not None
        queues = {
            "pending": [repr(m) for q in server.relocations.pending for m in q][:20],
            "waiting": [repr(m) for q in server.relocations.waiting for m in q][:20],
            "held": [repr(m) for m in server.gate.held][:20],
            "future": [repr(m) for m in server.future][:20],
            "outgoing": sorted(server.migrations.outgoing),
            "incoming": sorted(server.migrations.incoming),
            "rebuilds": {i: sorted(r.waiting_for) for i, r in server.recoveries.running.items()},
            "members": sorted(plane.members),
        }
        log.warning("node %d state: %s %s drain=%s", self.node_id, server.counters(), queues, plane.drain)

    # ------------------------------------------------------------------ the control plane's shell

    def heartbeat(self) -> control.Heartbeat:
        assert self.server is not None
        assert self.control is not None
        exit_code = self.exit_code if self.child_reported else None
        return control.Heartbeat(
            role=self.role,
            address=self.transport.address,
            name=self.name,
            rank=self.rank,
            client=self.control.client_address,
            epoch=self.server.shard_map.epoch,
            exit_code=exit_code,
            draining=self.control.drain is not None,
        )

    def stop_loop(self) -> None:
        self.stop.set()

    def tell_client_to_drain(self) -> None:
        if self.program is not None:
            self.program.drain()

    def end_client(self) -> None:
        if self.program is not None:
            self.program.end()

    def client_running(self) -> bool:
        return self.program is not None and self.program.running()

    # ------------------------------------------------------------------ shutdown

    def close(self) -> None:
        if self.program is not None:
            self.program.close()
        if self.metrics is not None:
            self.metrics.close()
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
        try:
            node.start()
        except joining.JoinInterruptedError as exc:
            log.warning("%s %s: %s; exiting", role, name or "node", exc)
            return SIGTERM_EXIT_CODE
        return node.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        node.close()
