"""The coordinator process: its sockets, its HTTP endpoint, signals, and the serving loop.

The job's control logic is :class:`~dynaps.coordinator.core.Coordinator`, which touches no
socket; this module runs it: messages from the inbox, commands from the HTTP thread
(queued, so that only this thread changes the coordinator) and the periodic tick.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from dynaps.config import job_secret, transport_kind
from dynaps.contract import COORDINATOR_SIGTERM_ENV, SIGTERM_EXITS_ALONE, RuntimeConfig, secret
from dynaps.coordinator import metrics
from dynaps.coordinator.adoption import ADOPT_QUIET
from dynaps.coordinator.core import Coordinator, JobPhase
from dynaps.coordinator.http import StatusServer
from dynaps.coordinator.status_reads import StatusReads
from dynaps.telemetry import exposition
from dynaps.wire import limits
from dynaps.wire.protocol import COORDINATOR
from dynaps.wire.transport import JobTransport, message_bound, open_transport

TICK_SECONDS = 0.05  # periodic duties: failure detection, checkpoints, rebalancing
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports it (the operator: preempted)
# Messages handled in one turn of the loop before HTTP actions, the tick and signals: an
# overloaded coordinator then slows down instead of never acting again.
MESSAGES_PER_TURN = 2000
# A tick this much later than due means the loop itself stalled: the heartbeats of that time
# wait unread, so that tick judges no silence (dynaps.coordinator.liveness).
STALL_SECONDS = 0.5
# Heartbeats a second from which the loop paces its turns: each turn then begins at least
# PACE_SECONDS after the last, and handles what came meanwhile in one go.  At 1,000 nodes
# a turn per heartbeat cost a wake-up each (most of the coordinator's CPU: docs/scaling.md);
# below that rate a control message (a barrier, a clock) is never held back.
PACE_FROM_HEARTBEATS_PER_SECOND = 1000
PACE_SECONDS = 0.002
# HTTP actions (scale, drain, checkpoint) waiting for the loop; one more is answered 429.
# The operator sends a few per reconcile, and the loop takes them all every turn.
PENDING_ACTIONS = 256


def turn_pace(members: int, heartbeat_interval_ms: int) -> float:
    """Seconds a turn of the loop begins after the last one (at the least): PACE_SECONDS
    once the members' heartbeats reach PACE_FROM_HEARTBEATS_PER_SECOND, else none."""
    rate = members * 1000 / heartbeat_interval_ms
    return PACE_SECONDS if rate >= PACE_FROM_HEARTBEATS_PER_SECOND else 0.0


class PendingActions:
    """HTTP actions on their way from the HTTP thread to the loop, at most ``limit``: a
    client with the token cannot grow them without end (one more is answered 429)."""

    def __init__(self, limit: int = PENDING_ACTIONS) -> None:
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=limit)

    def offer(self, action: str, body: dict[str, Any]) -> bool:
        try:
            self._queue.put_nowait((action, body))
        except queue.Full:
            return False
        return True

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        taken = []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                return taken


def take_messages(coordinator: Coordinator, transport: JobTransport) -> tuple[int, float]:
    """One turn's messages: wait up to a tick for the first, then take what has arrived, at
    most MESSAGES_PER_TURN (the rest waits one turn: HTTP actions, the tick and signals go
    first).  Returns how many were handled, and when the turn began (the wait ended)."""
    frames = transport.recv(timeout=TICK_SECONDS)
    turn_began = time.monotonic()
    handled = 0
    while frames is not None:
        coordinator.receive(frames)
        handled += 1
        if handled >= MESSAGES_PER_TURN:
            break
        frames = transport.recv_arrived()  # the next turn's recv reads what came since
    coordinator.end_turn()
    return handled, turn_began


def serve_coordinator(config: RuntimeConfig, announce: Callable[[str, int], None]) -> int:
    """Run the coordinator process until the job ends; returns the job's exit code."""
    job = job_secret()  # first: without the job secret, stop here
    http_token, key = secret.http_token(job), secret.wire_key(job)
    _host, _, port_text = config.coordinator.rpartition(":")
    transport = open_transport(
        transport_kind(),
        COORDINATOR,
        key,
        config.bind_host,
        int(port_text or 0),
        config.advertise_host,
        max_message_bytes=message_bound([]),  # it receives control messages only
        size=limits.job_size(config),  # a PUSH and a monitor pair per node: room for them
    )
    coordinator = Coordinator(config, transport, listen_first=ADOPT_QUIET)
    actions = PendingActions()
    reads = StatusReads(coordinator.status)  # /status is built when read, on this thread
    registry = metrics.registry(reads.read, [str(phase) for phase in JobPhase])
    http = StatusServer(
        config.bind_host,
        config.coordinator_http_port,
        reads.read,
        actions.offer,
        token=http_token,
        bounds={"servers": config.servers_range, "workers": config.workers_range},
        registry=registry,
    )
    # /metrics on the HTTP port, and on the metrics port that every pod of a job declares
    scrape = None
    if config.metrics_port is not None:
        scrape = exposition.MetricsServer(config.bind_host, config.metrics_port, registry)
    stop = threading.Event()
    alone = threading.Event()  # stop without ending the job: the nodes wait for a replacement
    linger = float(os.environ.get("DYNAPS_COORDINATOR_LINGER_SECONDS", "0") or 0)
    exits_alone = os.environ.get(COORDINATOR_SIGTERM_ENV) == SIGTERM_EXITS_ALONE

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGTERM and exits_alone:
            alone.set()
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    announce(transport.address, http.port)
    next_tick = turn_began = time.monotonic()
    heartbeat_ms = config.fault_tolerance.heartbeat_interval_ms
    try:
        while coordinator.exit_code is None:
            if alone.is_set():
                # Its replacement adopts the running job (dynaps.coordinator.adoption): the
                # nodes are not told anything, and they go on with what they hold.
                return SIGTERM_EXIT_CODE
            if stop.is_set():
                coordinator.finish(SIGTERM_EXIT_CODE, "the coordinator was asked to stop")
                break
            pace = turn_pace(len(coordinator.roster.members), heartbeat_ms)
            if pace and (early := turn_began + pace - time.monotonic()) > 0:
                time.sleep(early)
            handled, turn_began = take_messages(coordinator, transport)
            # the reads asked before the actions are applied: a read that follows an action
            # (POST, then GET /status) sees it applied
            asked = reads.pending()
            for action, body in actions.take():
                coordinator.run_command(action, body)
            now = time.monotonic()
            if now >= next_tick:
                stalled = now - next_tick > STALL_SECONDS
                next_tick = now + TICK_SECONDS
                coordinator.tick(caught_up=handled < MESSAGES_PER_TURN and not stalled)
            if asked:
                coordinator.publish_status(now)
                reads.answer(asked)
        if linger > 0 and not stop.is_set():
            # Keep answering /status a little, until a reader was told how the job ended.
            deadline = time.monotonic() + linger
            while time.monotonic() < deadline and not http.end_reads and not stop.is_set():
                take_messages(coordinator, transport)
                asked = reads.pending()
                if asked:
                    coordinator.publish_status()
                    reads.answer(asked)
        return coordinator.exit_code if coordinator.exit_code is not None else 1
    finally:
        coordinator.publish_status()
        reads.close()  # the last document is final: readers take it without waiting
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        http.close()
        if scrape is not None:
            scrape.close()
        transport.close(linger=0.5)
