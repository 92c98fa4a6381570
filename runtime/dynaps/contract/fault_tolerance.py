"""``spec.faultTolerance``: replication, failure detection, checkpoints, what a data loss
does, and the exit codes that fencing and a data loss give."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from dynaps.contract.base import WHOLE_NUMBER, Model

# A node that the coordinator declared lost exits with this code (EX_TEMPFAIL) once it
# learns so: it did nothing wrong and may be started again, as a new member.
FENCED_EXIT_CODE = 75


class CheckpointSpec(Model):
    interval_seconds: Annotated[int, Field(ge=0), WHOLE_NUMBER] = 0
    """Take a checkpoint this often; 0: only on demand (POST /checkpoint, a suspension)."""
    path: str = "/var/lib/dynaps/checkpoints"
    """The directory checkpoints are written to and read from, in every pod (where volume is mounted)."""
    volume: dict[str, Any] = Field(default_factory=dict)
    """A volume source mounted at path in every pod, e.g. {persistentVolumeClaim: {claimName: ckpt}}; a claim
    must be labelled dynaps.io/usable-by-jobs=true."""
    restore_from: str | None = None
    """Start the job from a checkpoint: latest (the newest under path) or a checkpoint's directory."""


class OnDataLoss(StrEnum):
    """What the job does when a recovery restores keys from anything but a synced replica."""

    CONTINUE = "Continue"  # go on; the loss is in /status ``dataLoss`` (and the job's status)
    FAIL = "Fail"  # the coordinator ends the job with DATA_LOSS_EXIT_CODE and a reason


class DataLossCause(StrEnum):
    """``cause`` of an entry of the coordinator's /status ``dataLoss`` list."""

    CHECKPOINT = "checkpoint"  # keys went back to the last checkpoint (``checkpointAgeSeconds`` old)
    INITIAL = "initial"  # no replica was configured and no checkpoint existed: initial values
    REPLICAS_EXHAUSTED = "replicas-exhausted"  # no synced replica was left, and no checkpoint
    # keys a lost node held (a worker's localized keys) went back to their home's copy: their
    # last write-back (replication: the updates of up to the last flush interval are lost) ...
    WRITE_BACK = "write-back"
    # ... or, without replication, the copy from before they were localized (every update since)
    HOME_COPY = "home-copy"


MAX_REPLICATION = 3  # backups per shard


def silence_limit_seconds(heartbeat_seconds: float) -> float:
    """Seconds of silence (no heartbeat, the connection up) after which the coordinator
    declares a node lost, when that loses no data: ten heartbeats, at least 3 s (a node
    starved of CPU for a moment is not lost).  A node whose loop was still for half as long
    asks before it serves again (:mod:`dynaps.node.waking`)."""
    return max(3.0, 10 * heartbeat_seconds)


HEARTBEAT_INTERVAL_MS = 200  # a manifest's default, and a LocalCluster's

# The coordinator's exit code when ``faultTolerance.onDataLoss: Fail`` ends a job.
DATA_LOSS_EXIT_CODE = 3
# The start of the job's reason when onDataLoss: Fail ended it (the operator recognises it).
DATA_LOSS_REASON = "data loss (faultTolerance.onDataLoss: Fail)"


class FaultTolerance(Model):
    replication: Annotated[int, Field(ge=0, le=MAX_REPLICATION), WHOLE_NUMBER] = 0
    """Backups per shard, in a replication chain: the job survives that many simultaneous server losses
    without losing an acknowledged update; each adds a hop before an update is acknowledged."""
    flush_interval_ms: Annotated[int, Field(ge=0), WHOLE_NUMBER] = 100
    """With replication: workers write the keys they localized back to their homes this often; 0 writes every
    update through. A lost worker's keys lose at most this interval's updates."""
    heartbeat_interval_ms: Annotated[int, Field(ge=10), WHOLE_NUMBER] = HEARTBEAT_INTERVAL_MS
    """How often each process tells the coordinator it is alive; a node silent for ten of them (at least 3 s)
    is declared lost where that loses no data."""
    silent_node_timeout_seconds: Annotated[int, Field(ge=1), WHOLE_NUMBER] = 60
    """How long a node that is still connected but silent (hung, stopped) is waited for when declaring it
    lost would lose data (no replica of what it holds); a dropped connection, or a node with replicas, is
    declared lost within seconds."""
    lost_worker_timeout_seconds: Annotated[int, Field(ge=1), WHOLE_NUMBER] = 300
    """How long the job waits for the replacement of a worker lost before its program finished (the
    replacement takes its rank); then the job fails: it must not succeed without that worker's part of the
    work."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    """Periodic and on-demand checkpoints, and the one to start from."""
    on_data_loss: OnDataLoss = OnDataLoss.CONTINUE
    """When a recovery restores keys from anything but a synced replica: Continue (the loss is in
    status.dataLoss and the DataLoss condition) or Fail the job."""
