"""A node's graceful leave: the steps of a drain, from DRAIN (or SIGTERM) to the loop's end.

A drain (:meth:`Drainer.start`) goes through :class:`Drain`'s steps: a worker tells its
training process (``dynaps.Drained`` at its next call) and waits for it to finish
(``CLIENT``); a server waits until its shards have moved away and its backups have been
handed over (``SHARDS``); then the node gives every key it still holds back to its home
(``KEYS``) and waits until they arrived, sends LEFT, and lingers a moment to forward
stragglers (``LEFT``).

Decisions only, like the rest of the node's control logic: the
:class:`~dynaps.node.control_plane.ControlPlane` starts a drain on the coordinator's DRAIN,
the node's process on SIGTERM, and the control plane's tick advances it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Protocol

from pydantic import BaseModel

from dynaps.node.server import NodeServer
from dynaps.wire import control
from dynaps.wire.protocol import MsgType

log = logging.getLogger(__name__)

LEAVE_LINGER = 1.0  # seconds a node that left keeps forwarding stragglers
# A draining node whose coordinator's connection stayed down this long leaves without a
# handover: the whole job is going away (its pods deleted together: the coordinator exits
# on SIGTERM without ending the job), and nobody is left to take its keys.
COORDINATOR_GONE_SECONDS = 2.0


class Drain(enum.StrEnum):
    CLIENT = "client"  # a worker waits for its training process to finish
    SHARDS = "shards"  # a server waits until the coordinator moved its shards away
    KEYS = "keys"  # the node gives the keys it holds back to their homes
    LEFT = "left"  # LEFT sent; forwarding stragglers until the linger ends


class Shell(Protocol):
    """What a drain asks of the OS process around the node."""

    def stop_loop(self) -> None:
        """End the node's loop (the process then exits)."""

    def tell_client_to_drain(self) -> None:
        """Make the training process raise ``dynaps.Drained`` at its next call."""

    def client_running(self) -> bool:
        """Whether the training process still runs."""

    def end_client(self) -> None:
        """Terminate the training process if it still runs (it did not finish in time)."""


class Drainer:
    """Where a node's drain stands (``step``; None: not draining) and its next move."""

    def __init__(
        self,
        server: NodeServer,
        role: control.Role,
        shell: Shell,
        send_coordinator: Callable[[MsgType, BaseModel], None],
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        """``timeout``: seconds a worker's training process gets to finish once told."""
        self.server = server
        self.node_id = server.me
        self.role = role
        self.shell = shell
        self.send_coordinator = send_coordinator
        self.timeout = timeout
        self.clock = clock
        self.step: Drain | None = None
        self.deadline = 0.0
        self.coordinator_gone_since: float | None = None  # its connection dropped then
        self.abandoned = False  # left while draining, without a handover (no coordinator)

    def start(self, reason: str) -> None:
        """Begin a graceful leave (idempotent)."""
        if self.step is not None:
            return
        log.info("node %d: draining (%s)", self.node_id, reason)
        self.send_coordinator(MsgType.LEAVE, control.Leave(reason=reason))
        self.deadline = self.clock() + self.timeout
        if self.role == "worker":
            self.shell.tell_client_to_drain()
            self.step = Drain.CLIENT
        else:
            self.step = Drain.SHARDS

    def coordinator_disconnected(self, now: float) -> None:
        if self.coordinator_gone_since is None:
            self.coordinator_gone_since = now

    def coordinator_heard(self) -> None:
        """The coordinator spoke: it is back (or replaced) and answers again."""
        self.coordinator_gone_since = None

    def advance(self, now: float) -> None:
        server = self.server
        gone = self.coordinator_gone_since
        if gone is not None and now - gone >= COORDINATOR_GONE_SECONDS and self.step is not Drain.LEFT:
            log.warning("node %d: the coordinator is gone while draining: leaving at once", self.node_id)
            self.abandoned = True
            self.shell.stop_loop()
            return
        if self.step is Drain.CLIENT:
            if self.shell.client_running() and now < self.deadline:
                return
            self.shell.end_client()
            self.step = Drain.KEYS
        if self.step is Drain.SHARDS:
            if self.node_id in server.shard_map.homes or server.migrations.outgoing:
                return  # the coordinator moves our shards away first
            if server.migrations.incoming:
                # a copy reached us whose commit (or abort) we have not seen: the coordinator
                # may already count us as its home, and leaving now would take the shard along
                return
            backups = server.shard_map.backups
            if backups is not None and (backups == self.node_id).any():
                return  # and hands our backups over once their new backups are synced
            self.step = Drain.KEYS
        # a key given back counts until its home confirms it arrived: a home lost before
        # then is reported (HANDOFF_LOST) by this node, which must still be a member to do so
        if (
            self.step is Drain.KEYS
            and server.departures.release_owned() + server.relocations.releases.count() == 0
        ):
            log.info("node %d: drained, leaving", self.node_id)
            self.send_coordinator(MsgType.LEFT, control.Empty())
            self.step = Drain.LEFT
            # Keep forwarding a little longer: peers that have not yet seen the membership
            # without us may still send here, and we know where everything went.
            self.deadline = now + LEAVE_LINGER
        if self.step is Drain.LEFT and now >= self.deadline:
            self.shell.stop_loop()
