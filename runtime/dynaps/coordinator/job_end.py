"""The job's end: its exit code and reason, and every process told to shut down.

The first verdict ends the job and later ones change nothing: every worker's program
finished (0), one failed (its exit code), a worker was lost unfinished and not replaced in
time (1), data was lost under ``faultTolerance.onDataLoss: Fail``
(:data:`~dynaps.contract.DATA_LOSS_EXIT_CODE`), or someone asked (``POST /shutdown``, a
signal).  The job never succeeds without a worker's part of the work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dynaps.contract import DATA_LOSS_EXIT_CODE, DATA_LOSS_REASON, FaultTolerance, OnDataLoss
from dynaps.coordinator.data_loss import LossEntry
from dynaps.coordinator.outbox import Outbox
from dynaps.coordinator.roster import Member, MemberState, Roster
from dynaps.errors import ProtocolError
from dynaps.wire import control
from dynaps.wire.protocol import MsgType

log = logging.getLogger(__name__)


class JobEnd:
    """How the job ends.  ``stopped`` is called once, as it ends, before SHUTDOWN goes out (the
    coordinator's phase and /status say so)."""

    def __init__(
        self, roster: Roster, outbox: Outbox, fault_tolerance: FaultTolerance, stopped: Callable[[], None]
    ) -> None:
        self.roster = roster
        self.outbox = outbox
        self.fault_tolerance = fault_tolerance
        self.stopped = stopped
        self.exit_code: int | None = None
        self.reason = ""
        self._missing_since: float | None = None  # the job waits for lost workers since

    def worker_done(self, member: Member, done: control.WorkerDone) -> bool:
        """A worker's program exited: False when that ended the job (it failed)."""
        if member.role != "worker":
            raise ProtocolError(f"WORKER_DONE from {member.id}, which is not a worker")
        member.exit_code = done.exit_code
        log.info("worker %d (rank %s) finished with exit code %d", member.id, member.rank, done.exit_code)
        if done.exit_code != 0 and member.state != MemberState.DRAINING:
            self.finish(done.exit_code, f"worker rank {member.rank} exited with code {done.exit_code}")
            return False
        return True

    def await_missing_workers(self, now: float, running: bool) -> None:
        """The job would have ended but for workers lost unfinished: wait for their replacements
        (Kubernetes recreates the pod, ``dynaps run`` the process), then fail; never succeed
        without a worker's part of the work."""
        if not running or not self.roster.missing_ranks:
            self._missing_since = None
            return
        if not self.roster.finished_but_missing():
            return
        ranks = sorted(self.roster.missing_ranks)
        timeout = self.fault_tolerance.lost_worker_timeout_seconds
        if self._missing_since is None:
            self._missing_since = now
            log.warning("the other workers finished: waiting up to %d s for lost ranks %s", timeout, ranks)
        elif now - self._missing_since >= timeout:
            self.finish(1, f"worker ranks {ranks} were lost unfinished and not replaced within {timeout} s")

    def on_data_loss(self, entry: LossEntry) -> None:
        if self.fault_tolerance.on_data_loss == OnDataLoss.FAIL:
            reason = f"{DATA_LOSS_REASON}: {entry.describe()}"
            self.finish(DATA_LOSS_EXIT_CODE, reason)

    def finish(self, exit_code: int, reason: str) -> None:
        if self.exit_code is not None:
            return
        self.exit_code = exit_code
        self.reason = reason
        self.stopped()
        log.info("job ends (%s): %s", exit_code, reason)
        self.outbox.broadcast(MsgType.SHUTDOWN, control.Shutdown(reason=reason, exit_code=exit_code))
