"""The coordinator's side of checkpoints: one round at a time, in two phases.

A round first *pauses* relocations on every server (each answers once no key of its
shards is in transfer), then asks every node to *write* the keys it owns, and commits
the manifest when all have written (:mod:`dynaps.store.checkpoint_files` holds the files' layout).
Ownership must not change while owners write, so a round waits for migrations and
recoveries to finish, and they wait for the round; a lost node abandons the round.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynaps.store.checkpoint_files import checkpoint_dir
from dynaps.store.checkpoint_files import commit as commit_checkpoint
from dynaps.wire import control
from dynaps.wire.protocol import MsgType

if TYPE_CHECKING:
    from dynaps.coordinator.core import Coordinator
    from dynaps.coordinator.roster import Member

log = logging.getLogger(__name__)


class CheckpointRounds:
    """Starts, follows and commits the job's checkpoints (periodic and requested)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        settings = coordinator.config.fault_tolerance.checkpoint
        self.root = settings.path
        self.interval = settings.interval_seconds
        self.current: dict[str, Any] | None = None  # the round being taken
        self.wanted = False
        self.last: dict[str, Any] | None = None  # the last committed checkpoint, for /status
        self._next_id = next_checkpoint_id(settings.path)
        self._last_time = time.monotonic()

    @property
    def in_progress(self) -> bool:
        return self.current is not None

    def request(self) -> None:
        self.wanted = True
        self.maybe_start()

    def tick(self, now: float) -> None:
        """Request the periodic checkpoint when due; start a wanted one when possible."""
        if self.interval and self.coordinator.phase == "running" and now - self._last_time >= self.interval:
            self._last_time = now
            self.wanted = True
        self.maybe_start()

    def maybe_start(self) -> None:
        c = self.coordinator
        if not self.wanted or self.current is not None or c.phase != "running":
            return
        if not c.rebalancer.idle or c.recoveries:
            return  # ownership must not change while every owner writes its keys
        self.wanted = False
        checkpoint_id = self._next_id
        self._next_id += 1
        servers = {m.id for m in c.roster.active("server")}
        self.current = {"id": checkpoint_id, "phase": "pause", "waiting": set(servers)}
        for server in servers:
            c.send(server, MsgType.CHECKPOINT, {"id": checkpoint_id, "phase": "pause"})

    def on_done(self, member: Member, done: control.CheckpointDone) -> None:
        state = self.current
        if state is None or state["id"] != done.id or state["phase"] != done.phase:
            return
        state["waiting"].discard(member.id)
        state["keys"] = state.get("keys", 0) + done.keys
        if state["waiting"]:
            return
        if state["phase"] == "pause":
            state["phase"] = "write"
            state["path"] = str(checkpoint_dir(self.root, done.id))
            nodes = {m.id for m in self.coordinator.roster.active()}
            state["waiting"] = set(nodes)
            for node in nodes:
                self.coordinator.send(
                    node, MsgType.CHECKPOINT, {"id": done.id, "phase": "write", "path": state["path"]}
                )
        else:
            self.end(committed=True)

    def end(self, committed: bool) -> None:
        """Commit (or abandon) the round, let the servers relocate again and resume migrations."""
        c = self.coordinator
        state = self.current
        assert state is not None
        self.current = None
        self._last_time = time.monotonic()
        if committed:
            assert c.shard_map is not None
            manifest = {
                "job": c.config.job,
                "epoch": c.shard_map.epoch,
                "keys": state["keys"],
                "tables": [t.to_wire() for t in c.config.tables],
            }
            directory = commit_checkpoint(self.root, state["id"], manifest)
            self.last = {
                "id": state["id"],
                "path": str(directory),
                "keys": state["keys"],
                "time": time.time(),
            }
            log.info("checkpoint %d written to %s (%d keys)", state["id"], directory, state["keys"])
        else:
            log.warning("checkpoint %d abandoned", state["id"])
        for server in c.roster.active("server"):
            c.send(server.id, MsgType.CHECKPOINT, {"id": state["id"], "phase": "resume"})
        c.start_migrations()


def next_checkpoint_id(root: str) -> int:
    """After a restart, continue numbering after the checkpoints already there."""
    try:
        names = [p.name for p in Path(root).glob("ckpt-*")]
    except OSError:
        return 1
    numbers = [int(n.split("-", 1)[1]) for n in names if n.split("-", 1)[1].isdigit()]
    return max(numbers, default=0) + 1
