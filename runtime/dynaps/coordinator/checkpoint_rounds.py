"""Checkpoint rounds: the coordinator's side of checkpoints, one round at a time.

A round first *pauses* relocations on every server (each answers once no key of its
shards is in transfer), then asks every node to *write* the keys it owns, and commits
the manifest when all have written; then the servers *resume*.  The nodes' side (writing
their keys) is in :mod:`dynaps.node.process`, and the files' layout in
:mod:`dynaps.store.checkpoint_files`.  Ownership must not change while owners write, so
a round waits for migrations and recoveries to finish, and they wait for the round; a
lost node abandons the round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynaps.contract import CheckpointSpec
from dynaps.coordinator.outbox import Send
from dynaps.coordinator.roster import Roster
from dynaps.errors import ConfigError
from dynaps.store.checkpoint_files import checkpoint_dir
from dynaps.store.checkpoint_files import commit as commit_checkpoint
from dynaps.wire import control
from dynaps.wire.protocol import MsgType

log = logging.getLogger(__name__)

RoundPhase = control.CheckpointPhase  # a round's phase is the phase of its CHECKPOINT orders


@dataclass
class Round:
    id: int
    phase: RoundPhase
    waiting: set[int]  # nodes that have not yet answered this phase
    keys: int = 0  # keys written so far
    path: str = ""  # the round's directory, once writing


class CheckpointRounds:
    """Starts, follows and commits the job's checkpoints (periodic and requested).

    What it needs from the coordinator, it gets as callbacks: ``send`` a control message,
    the ``epoch`` of the shard map, whether a round ``may_start`` now (the job runs and
    no shard is migrating or recovering), and ``resumed`` when a round ended (migrations
    may start again).
    """

    def __init__(
        self,
        settings: CheckpointSpec,
        job: str,
        tables: list[dict[str, Any]],
        roster: Roster,
        send: Send,
        *,
        epoch: Callable[[], int],
        may_start: Callable[[], bool],
        resumed: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``job`` and ``tables`` (their wire form) go into every checkpoint's manifest."""
        self.root = settings.path
        self.interval = settings.interval_seconds
        self.restore_from = settings.restore_from
        self.job = job
        self.tables = tables
        self.roster = roster
        self.send = send
        self.epoch = epoch
        self.may_start = may_start
        self.resumed = resumed
        self.clock = clock
        self.current: Round | None = None  # the round being taken
        self.wanted = False
        self.last: dict[str, Any] | None = None  # the last committed checkpoint, for /status
        self._next_id = next_checkpoint_id(settings.path)
        self._last_time = clock()

    @property
    def in_progress(self) -> bool:
        return self.current is not None

    @property
    def recoverable(self) -> bool:
        """Whether a lost server's keys can be rebuilt from a checkpoint."""
        return self.last is not None or bool(self.restore_from)

    @property
    def last_age(self) -> float | None:
        """Seconds since the last checkpoint of this run was committed (None: none was,
        the job restored one whose age is not known here)."""
        return None if self.last is None else max(0.0, time.time() - float(self.last["time"]))

    def request(self) -> None:
        self.wanted = True
        self.maybe_start()

    def tick(self, now: float, job_running: bool) -> None:
        """Request the periodic checkpoint when due; start a wanted one when possible."""
        if self.interval and job_running and now - self._last_time >= self.interval:
            self._last_time = now
            self.wanted = True
        self.maybe_start()

    def maybe_start(self) -> None:
        if not self.wanted or self.current is not None or not self.may_start():
            return
        self.wanted = False
        checkpoint_id = self._next_id
        self._next_id += 1
        servers = {m.id for m in self.roster.active("server")}
        self.current = Round(checkpoint_id, RoundPhase.PAUSE, set(servers))
        for server in servers:
            self.send(
                server, MsgType.CHECKPOINT, control.Checkpoint(id=checkpoint_id, phase=RoundPhase.PAUSE)
            )

    def on_done(self, node: int, done: control.CheckpointDone) -> None:
        state = self.current
        if state is None or state.id != done.id or state.phase != done.phase:
            return
        if done.failed:
            log.error("checkpoint %d: node %d could not write: %s", state.id, node, done.failed)
            self.end(committed=False)
            return
        state.waiting.discard(node)
        state.keys += done.keys
        if state.waiting:
            return
        if state.phase is RoundPhase.PAUSE:
            state.phase = RoundPhase.WRITE
            state.path = str(checkpoint_dir(self.root, done.id))
            nodes = {m.id for m in self.roster.active()}
            state.waiting = set(nodes)
            body = control.Checkpoint(id=done.id, phase=RoundPhase.WRITE, path=state.path)
            for node_id in nodes:
                self.send(node_id, MsgType.CHECKPOINT, body)
        else:
            self.end(committed=True)

    def end(self, committed: bool) -> None:
        """Commit (or abandon) the round, let the servers relocate again and resume migrations."""
        state = self.current
        assert state is not None
        self.current = None
        self._last_time = self.clock()
        if committed:
            manifest = {"job": self.job, "epoch": self.epoch(), "keys": state.keys, "tables": self.tables}
            try:
                directory = commit_checkpoint(self.root, state.id, manifest)
            except (ConfigError, OSError) as exc:  # a link planted in the volume, a full disk
                log.error("checkpoint %d abandoned: cannot commit it: %s", state.id, exc)
            else:
                self.last = {"id": state.id, "path": str(directory), "keys": state.keys, "time": time.time()}
                log.info("checkpoint %d written to %s (%d keys)", state.id, directory, state.keys)
        else:
            log.warning("checkpoint %d abandoned", state.id)
        for server in self.roster.active("server"):
            self.send(server.id, MsgType.CHECKPOINT, control.Checkpoint(id=state.id, phase=RoundPhase.RESUME))
        self.resumed()


def next_checkpoint_id(root: str) -> int:
    """After a restart, continue numbering after the checkpoints already there."""
    try:
        names = [p.name for p in Path(root).glob("ckpt-*")]
    except OSError:
        return 1
    numbers = [int(n.split("-", 1)[1]) for n in names if n.split("-", 1)[1].isdigit()]
    return max(numbers, default=0) + 1
