"""The contract between the operator and the runtime: one module, stdlib + pydantic only.

It defines two documents:

* the ``ParameterServerJob`` resource (``spec`` and ``status``), which users write and
  ``kubectl apply`` or ``dynaps run``; the CRD's OpenAPI schema is generated from it;
* the :class:`RuntimeConfig`, the one JSON document the operator (or ``dynaps run``)
  hands to every process of a job through ``DYNAPS_CONFIG`` / ``DYNAPS_CONFIG_FILE``.

Both the operator and the runtime import this module and nothing else of each other, so
what the operator writes is by construction what the runtime reads.  Field names are
camelCase on the wire (Kubernetes style) and snake_case in Python; both are accepted.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "dynaps.io"
API_VERSION = "v1alpha1"
KIND = "ParameterServerJob"
PLURAL = "parameterserverjobs"
SHORT_NAME = "psjob"

CONFIG_ENV = "DYNAPS_CONFIG"
CONFIG_FILE_ENV = "DYNAPS_CONFIG_FILE"

# Node ids are int16 on the wire and in the per-key directory; the top bit of the
# positive range marks a node's client endpoint, which leaves this many nodes.
MAX_NODES = 16_000
MAX_TABLES = 1024

# A node that the coordinator declared lost exits with this code (EX_TEMPFAIL) once it
# learns so: it did nothing wrong and may be started again, as a new member.
FENCED_EXIT_CODE = 75

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")


class _Model(BaseModel):
    """Base: camelCase aliases, snake_case names, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The document as written to Kubernetes or to DYNAPS_CONFIG (camelCase, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class DType(StrEnum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class InitKind(StrEnum):
    ZEROS = "zeros"
    NORMAL = "normal"
    UNIFORM = "uniform"


class InitSpec(_Model):
    """How a table's values start: zeros, normal(0, scale) or uniform(-scale, scale)."""

    kind: InitKind = InitKind.ZEROS
    scale: Annotated[float, Field(ge=0.0)] = 0.01
    seed: Annotated[int, Field(ge=0)] = 0


class UpdaterKind(StrEnum):
    ADD = "add"
    SGD = "sgd"
    ADAGRAD = "adagrad"
    ADAM = "adam"
    CUSTOM = "custom"


class UpdaterSpec(_Model):
    """What a push does on the owner: add the update, or apply an optimiser step.

    A flat ``kind`` + parameters shape (rather than ``{adagrad: {lr: ...}}``) keeps the
    CRD schema structural and lets the API server validate ``kind`` as an enum.
    """

    kind: UpdaterKind = UpdaterKind.ADD
    lr: Annotated[float, Field(gt=0.0)] = 0.1
    eps: Annotated[float, Field(gt=0.0)] = 1e-8
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    beta2: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.999
    initial_accumulator: Annotated[float, Field(ge=0.0)] = 0.0
    name: str | None = None  # the registered function, for kind=custom

    @model_validator(mode="after")
    def _custom_needs_name(self) -> UpdaterSpec:
        if self.kind == UpdaterKind.CUSTOM and not self.name:
            raise ValueError("updater kind 'custom' needs 'name' (the registered updater)")
        return self


class TableSpec(_Model):
    """A table of ``num_keys`` rows of ``dim`` values: ``dynaps.TableSpec(num_keys=, dim=)``."""

    num_keys: Annotated[int, Field(gt=0, le=2**40)]
    dim: Annotated[int, Field(gt=0, le=1_000_000)]
    dtype: DType = DType.FLOAT32
    init: InitSpec = InitSpec()
    updater: UpdaterSpec = UpdaterSpec()


class NamedTable(TableSpec):
    """A table as declared in a manifest: a TableSpec with its name."""

    name: str

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _TABLE_NAME.match(value):
            raise ValueError(
                f"table name {value!r} must start with a letter or '_' and contain only "
                "letters, digits, '_', '.', '-' (at most 63 characters)"
            )
        return value


class Allocation(StrEnum):
    DYNAMIC = "dynamic"  # Lapse: keys can move to the node that uses them (localize)
    STATIC = "static"  # classic parameter server: keys stay on their home server


class ConsistencyModel(StrEnum):
    ASYNC = "async"
    BSP = "bsp"
    SSP = "ssp"


class Consistency(_Model):
    model: ConsistencyModel = ConsistencyModel.ASYNC
    staleness: Annotated[int, Field(ge=0)] = 0


class Partition(StrEnum):
    RANGE = "range"
    HASH = "hash"


class RoleSpec(_Model):
    """Pods of one role. ``template`` is merged into the generated pod spec."""

    replicas: Annotated[int, Field(ge=0, le=MAX_NODES)] = 1
    min_replicas: Annotated[int, Field(ge=0)] | None = None
    max_replicas: Annotated[int, Field(ge=1)] | None = None
    resources: dict[str, Any] = Field(default_factory=dict)
    template: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounds(self) -> RoleSpec:
        low = self.min_replicas if self.min_replicas is not None else 0
        high = self.max_replicas if self.max_replicas is not None else MAX_NODES
        if low > high:
            raise ValueError(f"minReplicas ({low}) is greater than maxReplicas ({high})")
        if not low <= self.replicas <= high:
            raise ValueError(f"replicas ({self.replicas}) is outside [minReplicas, maxReplicas]")
        return self


class ServerSpec(RoleSpec):
    replicas: Annotated[int, Field(ge=1, le=MAX_NODES)] = 1


class WorkerSpec(RoleSpec):
    """Workers run the user's training program: ``command`` + ``args``."""

    replicas: Annotated[int, Field(ge=1, le=MAX_NODES)] = 1
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class CoordinatorSpec(_Model):
    resources: dict[str, Any] = Field(default_factory=dict)
    template: dict[str, Any] = Field(default_factory=dict)


class CheckpointSpec(_Model):
    interval_seconds: Annotated[int, Field(ge=0)] = 0  # 0: only on demand
    path: str = "/var/lib/dynaps/checkpoints"
    volume: dict[str, Any] = Field(default_factory=dict)
    restore_from: str | None = None


class OnDataLoss(StrEnum):
    """What the job does when a recovery restores keys from anything but a synced replica."""

    CONTINUE = "Continue"  # go on; the loss is in /status ``dataLoss`` (and the job's status)
    FAIL = "Fail"  # the coordinator ends the job with DATA_LOSS_EXIT_CODE and a reason


class DataLossCause(StrEnum):
    """``cause`` of an entry of the coordinator's /status ``dataLoss`` list."""

    CHECKPOINT = "checkpoint"  # keys went back to the last checkpoint (``checkpointAgeSeconds`` old)
    INITIAL = "initial"  # no replica was configured and no checkpoint existed: initial values
    REPLICAS_EXHAUSTED = "replicas-exhausted"  # no synced replica was left, and no checkpoint


# The coordinator's exit code when ``faultTolerance.onDataLoss: Fail`` ends a job.
DATA_LOSS_EXIT_CODE = 3


class FaultTolerance(_Model):
    replication: Annotated[int, Field(ge=0, le=1)] = 0
    flush_interval_ms: Annotated[int, Field(ge=0)] = 100
    heartbeat_interval_ms: Annotated[int, Field(ge=10)] = 200
    # How long a node that is still connected but silent (hung, stopped) is waited for
    # when declaring it lost would lose data (no replica of what it holds); a dropped
    # connection, or a node with replicas, is declared lost within seconds.
    silent_node_timeout_seconds: Annotated[int, Field(ge=1)] = 60
    checkpoint: CheckpointSpec = CheckpointSpec()
    on_data_loss: OnDataLoss = OnDataLoss.CONTINUE


class RebalancePolicy(_Model):
    num_shards: Annotated[int, Field(ge=1, le=1 << 20)] = 1024
    partition: Partition = Partition.RANGE
    max_concurrent_migrations: Annotated[int, Field(ge=1)] = 4
    drain_timeout_seconds: Annotated[int, Field(ge=1)] = 60


class CleanPodPolicy(StrEnum):
    RUNNING = "Running"
    ALL = "All"
    NONE = "None"


class SchedulingPolicy(_Model):
    min_available: Annotated[int, Field(ge=0)] | None = None
    priority_class: str | None = None


class FailureAction(StrEnum):
    RESTART = "Restart"  # replace the pod; counts against backoffLimit
    IGNORE = "Ignore"  # replace the pod; does not count (as a preemption)
    FAIL_JOB = "FailJob"  # fail the job at once


class FailureRule(_Model):
    """One rule of ``runPolicy.failurePolicy`` (the first that matches a node pod's end wins):
    any listed exit code, termination reason (``OOMKilled``) or pod condition (``DisruptionTarget``)."""

    action: FailureAction
    exit_codes: list[int] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    pod_conditions: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _matches_something(self) -> FailureRule:
        if not (self.exit_codes or self.reasons or self.pod_conditions):
            raise ValueError("a failure rule needs exitCodes, reasons or podConditions")
        return self


class RunPolicy(_Model):
    backoff_limit: Annotated[int, Field(ge=0)] = 3
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    # How long a pod may stay unstarted (unschedulable, image not pulled, ...) and the job may
    # wait for its nodes to register before it fails with StartTimeoutExceeded; 0: no limit.
    start_timeout_seconds: Annotated[int, Field(ge=0)] = 600
    # Unmatched ends keep the defaults: 137/143 and disruptions are Ignore, other exits Restart.
    failure_policy: list[FailureRule] = Field(default_factory=list)
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING
    suspend: bool = False
    scheduling_policy: SchedulingPolicy = SchedulingPolicy()


class JobSpec(_Model):
    """``spec`` of a ParameterServerJob."""

    image: str = "dynaps/runtime:0.1.0"
    tables: Annotated[list[NamedTable], Field(min_length=1, max_length=MAX_TABLES)]
    allocation: Allocation = Allocation.DYNAMIC
    consistency: Consistency = Consistency()
    coordinator: CoordinatorSpec = CoordinatorSpec()
    servers: ServerSpec = ServerSpec()
    workers: WorkerSpec
    fault_tolerance: FaultTolerance = FaultTolerance()
    rebalance_policy: RebalancePolicy = RebalancePolicy()
    run_policy: RunPolicy = RunPolicy()

    @field_validator("tables")
    @classmethod
    def _unique_names(cls, tables: list[NamedTable]) -> list[NamedTable]:
        seen: set[str] = set()
        for table in tables:
            if table.name in seen:
                raise ValueError(f"table {table.name!r} is declared twice")
            seen.add(table.name)
        return tables


class ObjectMeta(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)

    # 51: "<name>-coordinator" must stay a valid 63-character hostname
    name: Annotated[str, Field(min_length=1, max_length=51, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ParameterServerJob(_Model):
    """A whole ParameterServerJob manifest (status is the operator's, see below)."""

    api_version: Literal["dynaps.io/v1alpha1"] = "dynaps.io/v1alpha1"
    kind: Literal["ParameterServerJob"] = "ParameterServerJob"
    metadata: ObjectMeta
    spec: JobSpec
    status: dict[str, Any] | None = None


class RuntimeConfig(_Model):
    """What every process of a job is told: the operator-runtime contract.

    ``coordinator`` is ``host:port`` of the coordinator's data-plane socket; each node binds
    ``bind_host`` and advertises ``advertise_host`` (its pod IP on Kubernetes).
    """

    job: str = "local"
    tables: Annotated[list[NamedTable], Field(min_length=1, max_length=MAX_TABLES)]
    servers: Annotated[int, Field(ge=1, le=MAX_NODES)] = 1
    workers: Annotated[int, Field(ge=1, le=MAX_NODES)] = 1
    allocation: Allocation = Allocation.DYNAMIC
    consistency: Consistency = Consistency()
    fault_tolerance: FaultTolerance = FaultTolerance()
    rebalance_policy: RebalancePolicy = RebalancePolicy()
    coordinator: str = "127.0.0.1:7070"
    coordinator_http_port: Annotated[int, Field(ge=0, le=65535)] = 0
    bind_host: str = "127.0.0.1"
    advertise_host: str | None = None
    data_port: Annotated[int, Field(ge=0, le=65535)] = 0
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 120.0

    @field_validator("tables")
    @classmethod
    def _unique_names(cls, tables: list[NamedTable]) -> list[NamedTable]:
        return JobSpec._unique_names(tables)

    def table_index(self) -> dict[str, int]:
        return {table.name: i for i, table in enumerate(self.tables)}

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RuntimeConfig:
        return cls.model_validate_json(text)


def runtime_config(job: ParameterServerJob, coordinator: str, **overrides: Any) -> RuntimeConfig:
    """The runtime configuration that the processes of ``job`` receive."""
    spec = job.spec
    return RuntimeConfig(
        job=job.metadata.name,
        tables=spec.tables,
        servers=spec.servers.replicas,
        workers=spec.workers.replicas,
        allocation=spec.allocation,
        consistency=spec.consistency,
        fault_tolerance=spec.fault_tolerance,
        rebalance_policy=spec.rebalance_policy,
        coordinator=coordinator,
        **overrides,
    )


def describe_validation_error(exc: ValidationError, source: str = "") -> str:
    """One line per problem, naming the field as a user wrote it (``spec.workers.replicas``)."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(document)"
        lines.append(f"{source + ': ' if source else ''}{where}: {error['msg']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# status: what the operator reports about a ParameterServerJob (written only by the operator)
# ---------------------------------------------------------------------------------------------


class _StatusModel(_Model):
    """Base of the status documents: like :class:`_Model`, but tolerant of fields it does not
    know, so that an older operator (or ``kubectl get``) can read what a newer one wrote."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        use_enum_values=True,
    )


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
    START_TIMEOUT_EXCEEDED = "StartTimeoutExceeded"  # Failed=True: runPolicy.startTimeoutSeconds
    FAILURE_POLICY = "FailurePolicy"  # Failed=True: a runPolicy.failurePolicy rule said FailJob
    # DataLoss=True, after the worst cause the coordinator reported (status.dataLoss lists them)
    CHECKPOINT_RESTORED = "CheckpointRestored"  # keys went back to the last checkpoint
    REPLICAS_EXHAUSTED = "ReplicasExhausted"  # no synced replica was left, and no checkpoint
    INITIAL_VALUES_RESTORED = "InitialValuesRestored"  # no replica, no checkpoint: initial values
    DATA_LOSS = "DataLoss"  # Failed=True: faultTolerance.onDataLoss: Fail ended the job


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_StatusModel):
    """One entry of ``status.conditions`` (the shape of Kubernetes' metav1.Condition)."""

    type: ConditionType
    status: ConditionStatus
    # A plain string, not the enum: an operator upgraded ahead of its CRD (``helm upgrade``
    # leaves CRDs alone) must still be able to write a reason the old schema does not list.
    reason: str
    message: str = ""
    last_transition_time: datetime


class ReplicaStatus(_StatusModel):
    """Pods of one role: how many the spec asks for, how many exist and how many are ready."""

    desired: Annotated[int, Field(ge=0)] = 0
    current: Annotated[int, Field(ge=0)] = 0  # pods that exist and are not terminating
    ready: Annotated[int, Field(ge=0)] = 0
    summary: str = "0/0"  # "ready/desired", for `kubectl get` (printer columns cannot compute it)
    selector: str = ""  # label selector of the role's pods (the scale subresource's, for an HPA)


class OwnershipStatus(_StatusModel):
    """Where the job's shards live, as the coordinator reports it."""

    epoch: Annotated[int, Field(ge=0)] = 0  # of the committed shard map; grows on every change
    shards_per_server: dict[str, int] = Field(default_factory=dict)  # server pod name -> shards
    migrations_in_flight: Annotated[int, Field(ge=0)] = 0


class CheckpointStatus(_StatusModel):
    """The latest checkpoint the coordinator reported: what a restart or resume restores."""

    path: str
    time: datetime


class DataLossEntry(_StatusModel):
    """One recovery that restored keys from other than a synced replica (the coordinator's
    /status ``dataLoss`` entry, as the operator keeps it)."""

    cause: str  # checkpoint, initial or replicas-exhausted (DataLossCause)
    node: Annotated[int, Field(ge=0)]  # the lost server's node id
    server: str  # its pod name, when the operator knew it ("node <id>" otherwise)
    epoch: Annotated[int, Field(ge=0)] = 0  # of the shard map that rehomed the shards
    shard_count: Annotated[int, Field(ge=0)] = 0
    shards: list[int] = Field(default_factory=list)  # the first few of them
    keys: Annotated[int, Field(ge=0)] = 0
    keys_counted: bool = False  # False: ``keys`` is the shards' size, an upper bound
    checkpoint_age_seconds: float | None = None  # when cause is checkpoint
    time: datetime
    message: str = ""


class DataLossStatus(_StatusModel):
    """What the job lost, over its whole life (coordinator restarts included)."""

    entries: Annotated[int, Field(ge=0)] = 0  # recoveries that lost updates
    keys: Annotated[int, Field(ge=0)] = 0  # keys they restored from other than a synced replica
    recent: list[DataLossEntry] = Field(default_factory=list)  # the latest entries, oldest first


class JobStatus(_StatusModel):
    """``status`` of a ParameterServerJob."""

    phase: JobPhase = JobPhase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    servers: ReplicaStatus = ReplicaStatus()
    workers: ReplicaStatus = ReplicaStatus()
    ownership: OwnershipStatus = OwnershipStatus()
    restarts: Annotated[int, Field(ge=0)] = 0  # pod failures (they count against backoffLimit)
    preemptions: Annotated[int, Field(ge=0)] = 0  # pods lost to evictions, preemption, 137/143, deletion
    start_time: datetime | None = None  # pods first created (reset on resume)
    completion_time: datetime | None = None  # the job reached Succeeded or Failed
    observed_generation: Annotated[int, Field(ge=0)] | None = None  # the spec generation acted upon
    message: str = ""  # one human-readable line: the reason for the current phase
    metrics: dict[str, float] = Field(default_factory=dict)  # latest metrics the workers reported
    final_quality: dict[str, float] | None = None  # the metrics when the job succeeded
    last_checkpoint: CheckpointStatus | None = None
    data_loss: DataLossStatus | None = None  # None: no update was lost

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)

    def is_true(self, kind: ConditionType) -> bool:
        found = self.condition(kind)
        return found is not None and found.status == ConditionStatus.TRUE
