"""What the operator reports about a ParameterServerJob (written only by the operator):
its phase, conditions and their documented reasons, replica counts and progress."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from dynaps.contract.base import StatusModel


class JobPhase(StrEnum):
    """``status.phase``: one word for where the job is; the conditions say why."""

    PENDING = "Pending"  # pods are being created or are starting; training has not begun
    RUNNING = "Running"  # every node registered with the coordinator; training runs
    REBALANCING = "Rebalancing"  # the node set changes: shards migrate, surplus nodes drain
    RECOVERING = "Recovering"  # a lost or failed pod is being replaced under the same name
    SUSPENDED = "Suspended"  # runPolicy.suspend: the pods are (being) removed
    SUCCEEDED = "Succeeded"  # the coordinator exited 0: every worker program exited 0
    FAILED = "Failed"  # invalid spec, a failed worker program, backoffLimit or deadline exceeded


TERMINAL_PHASES = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED})


class ConditionType(StrEnum):
    """``status.conditions[].type``: each one is True, False or Unknown, with a reason."""

    CREATED = "Created"  # the operator created the job's pods, Service and ConfigMap
    RUNNING = "Running"  # training runs on the full node set
    REBALANCING = "Rebalancing"  # the coordinator is migrating shards or nodes are draining
    DEGRADED = "Degraded"  # some pods are missing, failed or not ready
    SUSPENDED = "Suspended"  # the job is suspended (runPolicy.suspend)
    SUCCEEDED = "Succeeded"  # terminal: the job finished successfully
    FAILED = "Failed"  # terminal: the job failed; the reason says how
    DATA_LOSS = "DataLoss"  # a recovery restored keys from other than a synced replica


class ConditionReason(StrEnum):
    """``status.conditions[].reason`` values the operator sets (also the reasons of its Events).

    Each comment names the condition(s) that carry the reason and what it means.
    """

    JOB_CREATED = "JobCreated"  # Created=True: pods, Service and ConfigMap were created
    JOB_STARTING = "JobStarting"  # Running=False: pods are starting or nodes are registering
    JOB_RUNNING = "JobRunning"  # Running=True: every node registered; training runs
    JOB_RESTARTING = "JobRestarting"  # Running=False: the coordinator was lost; all pods restart
    SCALING_OUT = "ScalingOut"  # Rebalancing=True: new nodes join; the coordinator adds them
    SCALING_IN = "ScalingIn"  # Rebalancing=True: surplus nodes drain their keys, then stop
    SHARDS_MIGRATING = "ShardsMigrating"  # Rebalancing=True: the coordinator moves shards
    BALANCED = "Balanced"  # Rebalancing=False: the node set matches the spec, no migrations
    PODS_NOT_READY = "PodsNotReady"  # Degraded=True: some desired pods are not ready
    POD_PREEMPTED = "PodPreempted"  # Degraded=True: a pod was evicted, preempted or killed (137/143)
    POD_FAILED = "PodFailed"  # Degraded=True: a pod failed; it counts against backoffLimit
    POD_LOST = "PodLost"  # Degraded=True: a pod vanished (deleted); it is recreated
    COORDINATOR_LOST = "CoordinatorLost"  # Degraded=True: the coordinator pod alone is replaced
    ALL_PODS_READY = "AllPodsReady"  # Degraded=False: every desired pod is ready
    JOB_SUSPENDING = "JobSuspending"  # Suspended=True: checkpointing, then deleting the pods
    JOB_SUSPENDED = "JobSuspended"  # Suspended=True: no pods run
    JOB_RESUMED = "JobResumed"  # Suspended=False: pods are created again
    JOB_SUCCEEDED = "JobSucceeded"  # Succeeded=True: the coordinator exited 0
    INVALID_SPEC = "InvalidSpec"  # Failed=True: the spec is invalid; the message names the field
    JOB_FAILED = "JobFailed"  # Failed=True: the coordinator exited non-zero (a worker program failed)
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"  # Failed=True: more pod failures than backoffLimit
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # Failed=True: runPolicy.activeDeadlineSeconds passed
    # Why a pod or the job cannot start: Running=False before the job runs, Degraded=True after
    # (the message quotes the pod); Failed=True with StartTimeoutExceeded once it lasts too long.
    UNSCHEDULABLE = "Unschedulable"  # the scheduler finds no node for a pod
    ERR_IMAGE_PULL = "ErrImagePull"  # a pod's image cannot be pulled
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"  # the kubelet backs off pulling a pod's image
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"  # e.g. a missing ConfigMap key
    INIT_CONTAINER_FAILED = "InitContainerFailed"  # an init container of a pod failed
    NODES_NOT_REGISTERED = "NodesNotRegistered"  # pods run but their nodes did not register
    WORKERS_NOT_ATTACHED = "WorkersNotAttached"  # worker programs did not call dynaps.connect()
    SECRET_CONFLICT = "SecretConflict"  # noqa: S105 (a reason, not a password): the job's Secret name is taken
    # a ConfigMap, NetworkPolicy, PodGroup or Service of the job's child's name is someone else's
    NAME_CONFLICT = "NameConflict"
    # an object a template names (a Secret, ConfigMap or claim) is not labelled dynaps.io/usable-by-jobs
    REFERENCE_NOT_ALLOWED = "ReferenceNotAllowed"
    START_TIMEOUT_EXCEEDED = "StartTimeoutExceeded"  # Failed=True: runPolicy.startTimeoutSeconds
    FAILURE_POLICY = "FailurePolicy"  # Failed=True: a runPolicy.failurePolicy rule said FailJob
    # runPolicy.oomMemoryGrowth (also Events): Degraded=True while an OOMKilled pod is replaced
    # with more memory; MemoryLimitReached (an Event) when the role is at maxMemory already.
    MEMORY_GROWN = "MemoryGrown"
    MEMORY_LIMIT_REACHED = "MemoryLimitReached"
    # DataLoss=True, after the worst cause the coordinator reported (status.dataLoss lists them)
    CHECKPOINT_RESTORED = "CheckpointRestored"  # keys went back to the last checkpoint
    REPLICAS_EXHAUSTED = "ReplicasExhausted"  # no synced replica was left, and no checkpoint
    INITIAL_VALUES_RESTORED = "InitialValuesRestored"  # no replica, no checkpoint: initial values
    # a lost node's (a worker's) keys went back to their last write-back: its last flush interval
    WRITE_BACK_RESTORED = "WriteBackRestored"
    # without replication, to their home's copy from before they were localized: every update since
    HOME_COPY_RESTORED = "HomeCopyRestored"
    DATA_LOSS = "DataLoss"  # Failed=True: faultTolerance.onDataLoss: Fail ended the job


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """One entry of ``status.conditions`` (the shape of Kubernetes' metav1.Condition)."""

    type: ConditionType
    """Created, Running, Rebalancing, Degraded, Suspended, Succeeded, Failed or DataLoss."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str
    """Why, in one word (CamelCase); the documented reasons are listed in docs/operator.md. A plain string,
    not an enum: an operator upgraded ahead of its CRD (helm upgrade leaves CRDs alone) must still be able
    to write a reason the old schema does not list."""
    message: str = ""
    """Details for a person: what happened, naming the pod or field."""
    last_transition_time: datetime
    """When status last changed."""


class ReplicaStatus(StatusModel):
    """Pods of one role: how many the spec asks for, how many exist and how many are ready."""

    desired: Annotated[int, Field(ge=0)] = 0
    """Pods the spec asks for."""
    current: Annotated[int, Field(ge=0)] = 0
    """Pods that exist and are not terminating."""
    ready: Annotated[int, Field(ge=0)] = 0
    """Pods that are ready."""
    summary: str = "0/0"
    """ready/desired, for kubectl get (printer columns cannot compute it)."""
    selector: str = ""
    """The label selector of the role's pods (the scale subresource's, for an HPA)."""
    # runPolicy.oomMemoryGrowth: how many times OOMKilled pods of the role came back with more
    # memory, and the memory (limit, else request) its pods get now. Kept here, not in the
    # operator's memory, so that a restarted operator still creates pods with the grown memory.
    memory_growths: Annotated[
        int, Field(ge=0, description="OOMKilled pods replaced with more memory (runPolicy.oomMemoryGrowth).")
    ] = 0
    memory: Annotated[
        str | None,
        Field(description="The role's memory limit (else request) after growth; unset: the spec's."),
    ] = None


class OwnershipStatus(StatusModel):
    """Where the job's shards live, as the coordinator reports it."""

    epoch: Annotated[int, Field(ge=0)] = 0
    """The committed shard map's epoch: it grows on every change of a shard's home."""
    shards_per_server: dict[str, int] = Field(default_factory=dict)
    """Shards each server homes, by server pod name."""
    migrations_in_flight: Annotated[int, Field(ge=0)] = 0
    """Migrations of shards between servers under way."""
    unsynced_shards: Annotated[int, Field(ge=0)] = 0
    """Shards whose backups do not yet hold all their updates (with replication): losing their home now would
    lose updates. 0 again once the survivors re-replicated after a change."""


class CheckpointStatus(StatusModel):
    """The latest checkpoint the coordinator reported: what a restart or resume restores."""

    path: str
    """The checkpoint's directory (what restoreFrom may name)."""
    time: datetime
    """When it was completed."""


class DataLossEntry(StatusModel):
    """One recovery that restored keys from other than a synced replica (the coordinator's
    /status ``dataLoss`` entry, as the operator keeps it)."""

    cause: str
    """checkpoint, initial, replicas-exhausted, write-back or home-copy."""
    node: Annotated[int, Field(ge=0)]
    """The lost node's id: a server, or a node that held the keys."""
    server: str
    """The lost node's pod name, when the operator knew it (node <id> otherwise)."""
    epoch: Annotated[int, Field(ge=0)] = 0
    """The epoch of the shard map that rehomed the shards."""
    shard_count: Annotated[int, Field(ge=0)] = 0
    """Shards whose keys were restored."""
    shards: list[int] = Field(default_factory=list)
    """The first few of those shards."""
    keys: Annotated[int, Field(ge=0)] = 0
    """Keys restored from other than a synced replica."""
    keys_counted: bool = False
    """false: keys is the shards' size, an upper bound."""
    checkpoint_age_seconds: float | None = None
    """cause checkpoint: how old the checkpoint was."""
    time: datetime
    """When the recovery was reported."""
    message: str = ""
    """The coordinator's account of it."""


class DataLossStatus(StatusModel):
    """What the job lost, over its whole life (coordinator restarts included)."""

    entries: Annotated[int, Field(ge=0)] = 0
    """Recoveries that lost updates."""
    keys: Annotated[int, Field(ge=0)] = 0
    """Keys they restored from other than a synced replica."""
    recent: list[DataLossEntry] = Field(default_factory=list)
    """The latest entries, oldest first."""


class StageStatus(StatusModel):
    """The stage the job is in (``spec.stages``), as the coordinator reports it."""

    name: str
    """The stage's name."""
    index: Annotated[int, Field(ge=0)]
    """Its place in spec.stages, from 0; equal to count once every stage ran."""
    count: Annotated[int, Field(ge=0)]
    """How many stages the job has."""
    unit: str = "epochs"
    """epochs or steps."""
    done: Annotated[int, Field(ge=0)] = 0
    """Units (epochs or steps) of this stage completed."""
    length: Annotated[int, Field(ge=0)] = 0
    """Units the stage runs."""
    workers: Annotated[int, Field(ge=0)] = 0
    """The stage's worker count."""
    progress: str = ""
    """done/length unit, for kubectl get."""


class JobStatus(StatusModel):
    """Written by the operator: the job's phase, conditions, pods, shards and progress."""

    phase: JobPhase = JobPhase.PENDING
    """Pending, Running, Rebalancing, Recovering, Suspended, Succeeded or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Created, Running, Rebalancing, Degraded, Suspended, Succeeded, Failed, DataLoss."""
    servers: ReplicaStatus = ReplicaStatus()
    """Server pods: desired, current, ready."""
    workers: ReplicaStatus = ReplicaStatus()
    """Worker pods: desired, current, ready, and the selector of the scale subresource."""
    ownership: OwnershipStatus = OwnershipStatus()
    """Where the shards live, as the coordinator reports it."""
    restarts: Annotated[int, Field(ge=0)] = 0
    """Pod failures so far (they count against runPolicy.backoffLimit)."""
    preemptions: Annotated[int, Field(ge=0)] = 0
    """Pods lost to evictions, preemption, SIGKILL/SIGTERM or deletion."""
    start_time: datetime | None = None
    """When the pods were first created (reset on resume)."""
    completion_time: datetime | None = None
    """When the job reached Succeeded or Failed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The spec's generation this status describes."""
    message: str = ""
    """One line for a person: why the job is in its phase."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """The latest metrics the workers reported (ps.report)."""
    final_quality: dict[str, float] | None = None
    """The metrics the workers reported last, when the job succeeded."""
    last_checkpoint: CheckpointStatus | None = None
    """The latest checkpoint: what a restart or resume restores."""
    data_loss: DataLossStatus | None = None
    """What the job lost over its life; absent: no acknowledged update was lost."""
    stage: StageStatus | None = None
    """With spec.stages: the stage the job is in, and its progress."""

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def is_true(self, kind: ConditionType) -> bool:
        found = self.condition(kind)
        return found is not None and found.status == ConditionStatus.TRUE
