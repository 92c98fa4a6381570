"""What users write and what the runtime is told: the ``ParameterServerJob`` spec (tables,
roles, policies) and the :class:`RuntimeConfig` every process of a job parses."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from dynaps.contract import quantity
from dynaps.contract.base import Model

API_GROUP = "dynaps.io"
API_VERSION = "v1alpha1"
KIND = "ParameterServerJob"
PLURAL = "parameterserverjobs"
SHORT_NAME = "psjob"

CONFIG_ENV = "DYNAPS_CONFIG"
CONFIG_FILE_ENV = "DYNAPS_CONFIG_FILE"
# What SIGTERM means to the coordinator: end the job (the nodes are told to shut down; what
# `dynaps run` and LocalCluster want), or exit alone (the operator's pods: a terminating
# coordinator pod is evicted or replaced, and the nodes wait for the new coordinator).
COORDINATOR_SIGTERM_ENV = "DYNAPS_COORDINATOR_SIGTERM"
SIGTERM_ENDS_JOB = "end-job"
SIGTERM_EXITS_ALONE = "exit-alone"

# Node ids are int16 on the wire and in the per-key directory; the top bit of the
# positive range marks a node's client endpoint, which leaves this many nodes.
MAX_NODES = 16_000
MAX_TABLES = 1024
MAX_STAGES = 64

# A node that the coordinator declared lost exits with this code (EX_TEMPFAIL) once it
# learns so: it did nothing wrong and may be started again, as a new member.
FENCED_EXIT_CODE = 75

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")


class DType(StrEnum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class InitKind(StrEnum):
    ZEROS = "zeros"
    NORMAL = "normal"
    UNIFORM = "uniform"


class InitSpec(Model):
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


class UpdaterSpec(Model):
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


class TableCache(StrEnum):
    NONE = "none"  # every pull of a remote key asks its owner
    CLOCK = "clock"  # a remote key pulled again within one clock is read from the worker's copy


class TableSpec(Model):
    """A table of ``num_keys`` rows of ``dim`` values: ``dynaps.TableSpec(num_keys=, dim=)``."""

    num_keys: Annotated[int, Field(gt=0, le=2**40)]
    dim: Annotated[int, Field(gt=0, le=1_000_000)]
    dtype: DType = DType.FLOAT32
    init: InitSpec = InitSpec()
    updater: UpdaterSpec = UpdaterSpec()
    # repeated pulls of a remote key within one clock served from a copy (dynaps.client.value_cache)
    cache: TableCache = TableCache.NONE


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


class Consistency(Model):
    model: ConsistencyModel = ConsistencyModel.ASYNC
    staleness: Annotated[int, Field(ge=0)] = 0


class Partition(StrEnum):
    RANGE = "range"
    HASH = "hash"


class RoleSpec(Model):
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


class StageUnit(StrEnum):
    """What a stage counts: passes over the data, or training steps."""

    EPOCHS = "epochs"
    STEPS = "steps"


class StageSpec(Model):
    """One entry of ``spec.stages``: ``workers`` workers for ``epochs`` epochs or ``steps`` steps.

    The coordinator counts the units the workers complete; at a stage's end the job scales
    its workers live to the next stage's count (docs/stages.md)."""

    name: str
    epochs: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    steps: Annotated[int, Field(ge=1, le=1_000_000_000)] | None = None
    workers: Annotated[int, Field(ge=1, le=MAX_NODES)]

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _TABLE_NAME.match(value):
            raise ValueError(
                f"stage name {value!r} must start with a letter or '_' and contain only "
                "letters, digits, '_', '.', '-' (at most 63 characters)"
            )
        return value

    @model_validator(mode="after")
    def _one_length(self) -> StageSpec:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(f"stage {self.name!r} needs exactly one of epochs or steps")
        return self

    @property
    def unit(self) -> StageUnit:
        return StageUnit.EPOCHS if self.epochs is not None else StageUnit.STEPS

    @property
    def length(self) -> int:
        """How many units (epochs or steps) the stage runs."""
        length = self.epochs if self.epochs is not None else self.steps
        assert length is not None  # _one_length
        return length


def check_stages(stages: list[StageSpec], workers: RoleSpec | None) -> list[StageSpec]:
    """Stage names are unique and every stage's worker count is within the workers' bounds;
    the message names the stage (``stages[1].workers``)."""
    seen: set[str] = set()
    for i, stage in enumerate(stages):
        if stage.name in seen:
            raise ValueError(f"stages[{i}].name: stage {stage.name!r} is declared twice")
        seen.add(stage.name)
        if workers is None:
            continue
        if workers.min_replicas is not None and stage.workers < workers.min_replicas:
            raise ValueError(
                f"stages[{i}].workers ({stage.workers}) is below workers.minReplicas ({workers.min_replicas})"
            )
        if workers.max_replicas is not None and stage.workers > workers.max_replicas:
            raise ValueError(
                f"stages[{i}].workers ({stage.workers}) is above workers.maxReplicas ({workers.max_replicas})"
            )
    return stages


class CoordinatorSpec(Model):
    resources: dict[str, Any] = Field(default_factory=dict)
    template: dict[str, Any] = Field(default_factory=dict)


class CheckpointSpec(Model):
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


MAX_REPLICATION = 3  # backups per shard

# The coordinator's exit code when ``faultTolerance.onDataLoss: Fail`` ends a job.
DATA_LOSS_EXIT_CODE = 3
# The start of the job's reason when onDataLoss: Fail ended it (the operator recognises it).
DATA_LOSS_REASON = "data loss (faultTolerance.onDataLoss: Fail)"


class FaultTolerance(Model):
    # Backups per shard, in a replication chain: survives that many simultaneous server
    # losses; each one adds a hop before an update is acknowledged (capped for that reason).
    replication: Annotated[int, Field(ge=0, le=MAX_REPLICATION)] = 0
    flush_interval_ms: Annotated[int, Field(ge=0)] = 100
    heartbeat_interval_ms: Annotated[int, Field(ge=10)] = 200
    # How long a node that is still connected but silent (hung, stopped) is waited for
    # when declaring it lost would lose data (no replica of what it holds); a dropped
    # connection, or a node with replicas, is declared lost within seconds.
    silent_node_timeout_seconds: Annotated[int, Field(ge=1)] = 60
    # How long the job waits for the replacement of a worker lost before its program finished
    # (the replacement takes its rank); then the job fails: it must not succeed without that
    # worker's part of the work.
    lost_worker_timeout_seconds: Annotated[int, Field(ge=1)] = 300
    checkpoint: CheckpointSpec = CheckpointSpec()
    on_data_loss: OnDataLoss = OnDataLoss.CONTINUE


class RebalancePolicy(Model):
    num_shards: Annotated[int, Field(ge=1, le=1 << 20)] = 1024
    partition: Partition = Partition.RANGE
    max_concurrent_migrations: Annotated[int, Field(ge=1)] = 4
    drain_timeout_seconds: Annotated[int, Field(ge=1)] = 60


class CleanPodPolicy(StrEnum):
    RUNNING = "Running"
    ALL = "All"
    NONE = "None"


class GangScheduler(StrEnum):
    """``runPolicy.schedulingPolicy.scheduler``: who places the job's pods all or nothing."""

    NONE = "none"  # the cluster's scheduler places each pod on its own
    COSCHEDULING = "coscheduling"  # scheduler-plugins' Coscheduling (PodGroup scheduling.x-k8s.io)
    VOLCANO = "volcano"  # Volcano (PodGroup scheduling.volcano.sh)


_K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class SchedulingPolicy(Model):
    """``runPolicy.schedulingPolicy``: gang scheduling and queueing, with the names Kubeflow's
    training and MPI operators use (``minAvailable``, ``queue``, ``priorityClass``,
    ``scheduleTimeoutSeconds``); see the operator's ``gang`` module for what each one makes."""

    scheduler: Annotated[
        GangScheduler,
        Field(
            description="The gang scheduler that gets a PodGroup for the job: none, coscheduling or volcano."
        ),
    ] = GangScheduler.NONE
    scheduler_name: Annotated[
        str | None,
        Field(
            max_length=253,
            pattern=_K8S_NAME,
            description="The pods' schedulerName; default: scheduler-plugins-scheduler for coscheduling, "
            "volcano for volcano, the cluster's default otherwise.",
        ),
    ] = None
    min_available: Annotated[
        int | None,
        Field(
            ge=1,
            description="Pods the gang scheduler must place together before any starts; default: "
            "the coordinator, every server and workers.minReplicas (else workers.replicas).",
        ),
    ] = None
    queue: Annotated[
        str | None,
        Field(max_length=253, pattern=_K8S_NAME, description="The Volcano queue (scheduler: volcano)."),
    ] = None
    priority_class: Annotated[
        str | None,
        Field(max_length=253, description="The pods' priorityClassName (and the Volcano PodGroup's)."),
    ] = None
    schedule_timeout_seconds: Annotated[
        int | None,
        Field(
            ge=1,
            description="How long Coscheduling waits for the whole group (scheduler: coscheduling).",
        ),
    ] = None
    kueue_queue: Annotated[
        str | None,
        Field(
            max_length=63,
            pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            description="A Kueue LocalQueue: the pods are labelled as one Kueue pod group, admitted whole.",
        ),
    ] = None

    @model_validator(mode="after")
    def _options_of_the_scheduler(self) -> SchedulingPolicy:
        if self.queue is not None and self.scheduler != GangScheduler.VOLCANO:
            raise ValueError(
                "queue is a Volcano queue: it needs scheduler: volcano "
                "(for a Kueue LocalQueue set kueueQueue)"
            )
        if self.schedule_timeout_seconds is not None and self.scheduler != GangScheduler.COSCHEDULING:
            raise ValueError("scheduleTimeoutSeconds is Coscheduling's: it needs scheduler: coscheduling")
        return self


class FailureAction(StrEnum):
    RESTART = "Restart"  # replace the pod; counts against backoffLimit
    IGNORE = "Ignore"  # replace the pod; does not count (as a preemption)
    FAIL_JOB = "FailJob"  # fail the job at once


class FailureRule(Model):
    """One rule of ``runPolicy.failurePolicy`` (the first that matches a node pod's end wins):
    any listed exit code, termination reason (``OOMKilled``) or pod condition (``DisruptionTarget``)."""

    action: FailureAction
    exit_codes: list[Annotated[int, Field(ge=0, le=255)]] = Field(default_factory=list, max_length=64)
    reasons: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=16)
    pod_conditions: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _matches_something(self) -> FailureRule:
        if not (self.exit_codes or self.reasons or self.pod_conditions):
            raise ValueError("a failure rule needs exitCodes, reasons or podConditions")
        return self


class OomMemoryGrowth(Model):
    """``runPolicy.oomMemoryGrowth``: a node pod killed for exceeding its memory (``OOMKilled``)
    comes back with its role's memory request and limit multiplied by ``factor``, up to
    ``maxMemory``; the role's later pods keep the grown memory. At the cap, the next OOMKilled is
    left to ``failurePolicy`` as any other end."""

    factor: Annotated[
        float, Field(gt=1.0, le=10.0, description="Each OOMKilled pod multiplies its role's memory by this.")
    ] = 1.5
    # The pattern is for the CRD (kubectl apply refuses a typo); the validator says it in words.
    max_memory: Annotated[
        str,
        Field(
            max_length=32,
            json_schema_extra={"pattern": quantity.QUANTITY_PATTERN},
            description="The most memory (request and limit) growth gives a pod, e.g. 8Gi.",
        ),
    ]

    @field_validator("max_memory")
    @classmethod
    def _positive_quantity(cls, value: str) -> str:
        try:
            size = quantity.bytes_of(value)
        except quantity.QuantityError as exc:
            raise ValueError(str(exc)) from exc
        if size < 1 << 20:
            raise ValueError(f"{value!r} is less than 1Mi: no container runs in that")
        return value

    def max_bytes(self) -> int:
        return quantity.bytes_of(self.max_memory)


class RunPolicy(Model):
    backoff_limit: Annotated[int, Field(ge=0)] = 3
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    # How long a pod may stay unstarted (unschedulable, image not pulled, ...) and the job may
    # wait for its nodes to register before it fails with StartTimeoutExceeded; 0: no limit.
    start_timeout_seconds: Annotated[int, Field(ge=0)] = 600
    # Unmatched ends keep the defaults: 137/143 and disruptions are Ignore, other exits Restart.
    failure_policy: list[FailureRule] = Field(default_factory=list, max_length=32)
    # None: an OOMKilled pod comes back with the same memory (and the failure policy decides).
    oom_memory_growth: OomMemoryGrowth | None = None
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING
    suspend: bool = False
    scheduling_policy: SchedulingPolicy = SchedulingPolicy()


class JobSpec(Model):
    """``spec`` of a ParameterServerJob."""

    image: str = "dynaps/runtime:0.1.0"
    tables: Annotated[list[NamedTable], Field(min_length=1, max_length=MAX_TABLES)]
    allocation: Allocation = Allocation.DYNAMIC
    consistency: Consistency = Consistency()
    coordinator: CoordinatorSpec = CoordinatorSpec()
    servers: ServerSpec = ServerSpec()
    workers: WorkerSpec
    # FlexPS-style flexible parallelism: the job runs these stages in order, each with its own
    # worker count (workers.replicas is then not used: the stages set the count).
    stages: Annotated[list[StageSpec], Field(max_length=MAX_STAGES)] = Field(default_factory=list)
    fault_tolerance: FaultTolerance = FaultTolerance()
    rebalance_policy: RebalancePolicy = RebalancePolicy()
    run_policy: RunPolicy = RunPolicy()

    @field_validator("stages")
    @classmethod
    def _valid_stages(cls, stages: list[StageSpec], info: ValidationInfo) -> list[StageSpec]:
        return check_stages(stages, info.data.get("workers"))

    @field_validator("tables")
    @classmethod
    def _unique_names(cls, tables: list[NamedTable]) -> list[NamedTable]:
        seen: set[str] = set()
        for table in tables:
            if table.name in seen:
                raise ValueError(f"table {table.name!r} is declared twice")
            seen.add(table.name)
        return tables

    @model_validator(mode="after")
    def _gang_fits(self) -> JobSpec:
        wanted = self.run_policy.scheduling_policy.min_available
        if wanted is not None and wanted > self.pod_count():
            raise ValueError(
                f"runPolicy.schedulingPolicy.minAvailable ({wanted}) is more than the job's "
                f"{self.pod_count()} pods (the coordinator, {self.servers.replicas} servers and "
                f"{self.workers.replicas} workers): the gang could never be placed"
            )
        return self

    def pod_count(self) -> int:
        """Every pod of the job: the coordinator, the servers and the workers."""
        return 1 + self.servers.replicas + self.workers.replicas

    def gang_size(self) -> int:
        """The gang's size: ``schedulingPolicy.minAvailable``, else the coordinator, every server
        and ``workers.minReplicas`` (the fewest the job runs on; without it, every worker)."""
        wanted = self.run_policy.scheduling_policy.min_available
        if wanted is not None:
            return wanted
        workers = self.workers
        fewest = workers.replicas if workers.min_replicas is None else max(1, workers.min_replicas)
        return 1 + self.servers.replicas + fewest


class ObjectMeta(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True)

    # 51: "<name>-coordinator" must stay a valid 63-character hostname
    name: Annotated[str, Field(min_length=1, max_length=51, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ParameterServerJob(Model):
    """A whole ParameterServerJob manifest (status is the operator's, see below)."""

    api_version: Literal["dynaps.io/v1alpha1"] = "dynaps.io/v1alpha1"
    kind: Literal["ParameterServerJob"] = "ParameterServerJob"
    metadata: ObjectMeta
    spec: JobSpec
    status: dict[str, Any] | None = None


class RuntimeConfig(Model):
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
    # Where every process serves GET /metrics (docs/metrics.md): 0 any free port (local runs;
    # a node's STATS reply names it), None nowhere.  The coordinator serves it on its HTTP
    # port as well.
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = 0
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 120.0
    # The job's (minReplicas, maxReplicas) per role: the coordinator's POST /scale stays within them.
    servers_range: tuple[int, int] = (1, MAX_NODES)
    workers_range: tuple[int, int] = (1, MAX_NODES)
    # The job's stages (spec.stages); ``workers`` is then the first stage's count.
    stages: Annotated[list[StageSpec], Field(max_length=MAX_STAGES)] = Field(default_factory=list)

    @field_validator("tables")
    @classmethod
    def _unique_names(cls, tables: list[NamedTable]) -> list[NamedTable]:
        return JobSpec._unique_names(tables)

    @field_validator("stages")
    @classmethod
    def _valid_stages(cls, stages: list[StageSpec]) -> list[StageSpec]:
        return check_stages(stages, None)

    @model_validator(mode="after")
    def _starts_with_first_stage(self) -> RuntimeConfig:
        if self.stages and self.workers != self.stages[0].workers:
            raise ValueError(
                f"workers ({self.workers}) must be the first stage's workers ({self.stages[0].workers})"
            )
        return self

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
        workers=spec.stages[0].workers if spec.stages else spec.workers.replicas,
        allocation=spec.allocation,
        consistency=spec.consistency,
        fault_tolerance=spec.fault_tolerance,
        rebalance_policy=spec.rebalance_policy,
        coordinator=coordinator,
        servers_range=_replica_range(spec.servers),
        workers_range=_replica_range(spec.workers),
        stages=spec.stages,
        **overrides,
    )


def _replica_range(role: RoleSpec) -> tuple[int, int]:
    # Both roles need one node at least, whatever minReplicas says (replicas is >= 1 too).
    low = max(1, role.min_replicas or 1)
    return low, role.max_replicas if role.max_replicas is not None else MAX_NODES


def describe_validation_error(exc: ValidationError, source: str = "") -> str:
    """One line per problem, naming the field as a user wrote it (``spec.workers.replicas``)."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(document)"
        lines.append(f"{source + ': ' if source else ''}{where}: {error['msg']}")
    return "\n".join(lines)
