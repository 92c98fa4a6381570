"""What a training process knows of its own node: whether it still counts, and whether it
ran lately.

The program updates the keys its node holds in place, and under replication's write-back
the node sends them to their homes every flush interval, while its loop runs.  If the
node stops (SIGSTOP, a hang) or dies while the program goes on, nothing is written back
any more, and once the coordinator declares the node lost the homes take those keys back
with the last write-back: every update the program acknowledged since would be lost.  So:

* a node declared lost (a membership that lists it, the coordinator's REFUSED, the node
  itself once it learns: FENCED in the control block) or whose process is gone makes every
  later call raise ClusterError (:meth:`OwnNode.fail`);
* under write-back, local updates are applied only while the node's stamp in the control
  block is younger than ``STALE_SECONDS``; else the program waits for its node
  (:meth:`OwnNode.running_until`), reading its messages meanwhile.

The control block's layout is :mod:`dynaps.store.control_block`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from dynaps.contract import FaultTolerance
from dynaps.errors import ClusterError, DynapsTimeoutError
from dynaps.store.control_block import FENCED, STALE_SECONDS, ControlBlock
from dynaps.store.shm import pid_alive

log = logging.getLogger(__name__)

WAIT_TURN = 0.02  # seconds a program waiting for its node sleeps between looks at its stamp


class OwnNode:
    """The control block shared with our node, and why the node no longer counts (if so)."""

    def __init__(self, control: npt.NDArray[np.uint8], rank: int, node: int, faults: FaultTolerance) -> None:
        self.block = ControlBlock(control)
        self.rank = rank
        self.node = node
        # write-back: local updates wait while the node does not run (write-through sends
        # them to the homes before they are acknowledged; without replication nothing does)
        write_back = faults.replication > 0 and faults.flush_interval_ms > 0
        self.watched = write_back and self.block.stamp is not None
        self.lost_reason = ""

    @property
    def fenced(self) -> bool:
        return self.block.state[0] == FENCED

    def error(self) -> ClusterError:
        return ClusterError(
            self.lost_reason or f"worker rank {self.rank}: its node {self.node} was declared lost"
        )

    def lost(self, reason: str) -> None:
        """The coordinator declared our node lost (``reason`` says so)."""
        self.fail(
            f"worker rank {self.rank}: {reason}: updates of the keys its node held since their last "
            "write-back are lost; this process must stop"
        )

    def fail(self, why: str) -> None:
        """Our node no longer counts: every local path tests byte 0, they all raise from now on."""
        if not self.lost_reason:
            self.lost_reason = why
            log.error("%s", why)
        self.block.fence()

    def running_until(
        self, now: float, timeout: float, wait: Callable[[float], None], ended: Callable[[], str | None]
    ) -> float:
        """Until when local updates may go on: the node's last stamp plus STALE_SECONDS.

        While the stamp is older, wait for the node (``wait(seconds)`` handles a message that
        comes within that time: the coordinator tells us if it declares the node lost); raise
        ClusterError once the node is known lost, its process is gone or the job ended, and
        DynapsTimeoutError after ``timeout`` seconds.
        """
        block, stamp = self.block, self.block.stamp
        assert stamp is not None
        deadline = now + timeout
        waited = False
        while True:
            if self.fenced:
                raise self.error()
            reason = ended()
            if reason is not None:
                raise ClusterError(f"the job has ended: {reason}")
            last = stamp[0]
            if now - last <= STALE_SECONDS:
                if waited:
                    log.warning(
                        "worker rank %d: node %d runs again: local updates go on", self.rank, self.node
                    )
                return last + STALE_SECONDS
            pid = 0 if block.pid is None else block.pid[0]
            if pid and not pid_alive(pid):
                self.fail(
                    f"worker rank {self.rank}: its node process {pid} (node {self.node}) is gone: updates "
                    "of the keys it held since their last write-back are lost with it; this process must stop"
                )
                raise self.error()
            if now >= deadline:
                raise DynapsTimeoutError(
                    f"worker rank {self.rank}: its node {self.node} has not run for {now - last:.1f} s; "
                    f"local updates wait for it (request_timeout_seconds={timeout})"
                )
            if not waited:
                waited = True
                log.warning(
                    "worker rank %d: node %d has not run for %.2f s: local updates wait for it",
                    self.rank,
                    self.node,
                    now - last,
                )
            wait(min(WAIT_TURN, deadline - now))
            now = time.monotonic()
