"""A worker node's training process, as its node sees it.

The node shares memory with one training process (the client): its tables, a lock, a
control block (:mod:`dynaps.store.control_block`: the node's heartbeat stamp, drain and
fence flags), the program's usage counters (:mod:`dynaps.store.usage`) and a ring of
localize notices (:mod:`dynaps.store.notices`).  The program gets them by attaching
(:class:`~dynaps.store.shm.AttachServer`: it proves the job secret and the token, and the
kernel names its pid): either the COMMAND the node starts as its child, with
``DYNAPS_ATTACH`` in its environment, or a process that attaches by the token the node
was given (``LocalCluster``'s runners).  :class:`Program` owns all of that, so that the
node's process shell (:mod:`dynaps.node.process`) only asks it questions.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dynaps.config import ATTACH_ENV, ATTACH_TOKEN_ENV
from dynaps.contract import CONFIG_ENV, CONFIG_FILE_ENV, RuntimeConfig
from dynaps.errors import ClusterError
from dynaps.store import usage
from dynaps.store.control_block import CONTROL_BYTES, ControlBlock
from dynaps.store.notices import Notices
from dynaps.store.shm import AttachServer, Segment, SharedLock, watch_process
from dynaps.store.table_store import TableStore
from dynaps.throttled_log import ThrottledLog
from dynaps.wire import control

log = logging.getLogger(__name__)

CHILD_GRACE_SECONDS = 10.0  # a child still running when its node closes gets this long after SIGTERM


class Program:
    """The memory a worker node shares with its training process, the attach, the child."""

    def __init__(self, token: str, num_tables: int) -> None:
        """Creates the shared lock, control block, usage counters and notice ring."""
        self.token = token
        self.lock = SharedLock.create()
        self.control_segment = Segment.create("control", (CONTROL_BYTES,), np.dtype(np.uint8))
        self.block = ControlBlock(self.control_segment.array)
        self.block.set_pid(os.getpid())
        self.block.beat(time.monotonic())
        self.usage_segment = Segment.create("usage", (usage.words(num_tables),), np.dtype(np.int64))
        self.notices = Notices.create(self.lock)
        self.child: subprocess.Popen[bytes] | None = None
        self.alive: Callable[[], bool] | None = None  # the attached program's (not a child)
        self.attach_server: AttachServer | None = None
        self.attach_failed = ThrottledLog(log, "a worker node's attach failed")  # another user may loop
        self._child_reported = False

    def listen(self, secret: bytes) -> None:
        """Accept the program's attach from now on (:meth:`accept` takes it)."""
        self.attach_server = AttachServer(self.token, secret)

    def start_child(self, command: Sequence[str], config: RuntimeConfig) -> None:
        """Start ``command`` as the program; it attaches with the token in its environment."""
        env = dict(os.environ)
        env[ATTACH_ENV] = self.token
        env[CONFIG_ENV] = config.to_json()
        env.pop(CONFIG_FILE_ENV, None)
        env.pop(ATTACH_TOKEN_ENV, None)  # the node's, for a process that attaches by itself
        # Its own session: a pod's SIGTERM reaches the node, which drains and lets the program
        # finish (it sees dynaps.Drained), instead of killing it mid-step.
        self.child = subprocess.Popen(command, env=env, start_new_session=True)

    def accept(
        self, node: int, rank: int | None, config: RuntimeConfig, stores: Sequence[TableStore]
    ) -> None:
        """Let the program attach if it is knocking: it gets the tables' and the shared
        segments' descriptors, in the order the client reads them."""
        if self.attach_server is None:
            return
        fds: list[int] = []
        tables = []
        for store in stores:
            tables.append({"name": store.name, "fds": len(store.fds())})
            fds.extend(store.fds())
        fds.append(self.control_segment.fd)
        fds.append(self.usage_segment.fd)
        fds.extend(self.notices.fds())
        description: dict[str, Any] = {
            "control": CONTROL_BYTES,
            "node": node,
            "rank": rank,
            "lock": self.lock.name,
            "digest": control.config_digest(config),
            "tables": tables,
            "config": config.to_json(),
        }
        try:
            hello = self.attach_server.accept(description, fds)
        except (OSError, ClusterError, ValueError) as exc:
            self.attach_failed(f"node {node}: {exc}")
            return
        if hello is None:
            return
        pid = int(hello["pid"])  # the kernel's word (SO_PEERCRED)
        self.alive = watch_process(pid)
        # One training process per worker node: stop listening, so a second one is refused.
        self.attach_server.close()
        self.attach_server = None
        self.lock.recover_when_dead(self.alive)
        self.lock.unlink()
        log.info("node %d: training process %d attached", node, pid)

    def exited(self) -> int | None:
        """The child's exit code, the first time it is seen to have exited (then None)."""
        if self.child is None or self._child_reported:
            return None
        code = self.child.poll()
        if code is None:
            return None
        self._child_reported = True
        return code

    def running(self) -> bool:
        if self.child is not None:
            return self.child.poll() is None
        return self.alive is not None and self.alive()

    def drain(self) -> None:
        self.block.drain()  # the training process raises Drained

    def end(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()  # it did not finish in time

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
        self.notices.close()
