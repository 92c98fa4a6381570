"""What users write: the ``ParameterServerJob`` manifest and its ``spec``, which gathers the
parts defined beside it (tables, roles, stages, placement, consistency, fault tolerance, run
policy)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from dynaps.contract.base import Model, models_in
from dynaps.contract.consistency import Consistency
from dynaps.contract.fault_tolerance import FaultTolerance
from dynaps.contract.limits import MAX_STAGES, MAX_TABLES
from dynaps.contract.placement import Allocation, RebalancePolicy
from dynaps.contract.roles import CoordinatorSpec, ServerSpec, WorkerSpec
from dynaps.contract.run_policy import RunPolicy
from dynaps.contract.stages import StageSpec, check_stages
from dynaps.contract.tables import NamedTable

API_GROUP = "dynaps.io"
API_VERSION = "v1alpha1"
KIND = "ParameterServerJob"
PLURAL = "parameterserverjobs"
SHORT_NAME = "psjob"


class JobSpec(Model):
    """What the job runs: its tables, its pods and how they are run."""

    image: str = "dynaps/runtime:0.1.0"
    """Container image of the runtime (all pods, unless a role's template sets one)."""
    tables: Annotated[list[NamedTable], Field(min_length=1, max_length=MAX_TABLES)]
    """The parameter tables: numKeys rows of dim values each. Immutable."""
    allocation: Allocation = Allocation.DYNAMIC
    """dynamic: keys move to the worker that localizes them (Lapse); static: classic PS."""
    consistency: Consistency = Consistency()
    """How far the workers' clocks may drift apart: async, bsp or ssp."""
    coordinator: CoordinatorSpec = CoordinatorSpec()
    """The coordinator pod: resources and a pod template merged into it."""
    servers: ServerSpec = ServerSpec()
    """Server pods: they home the shards. replicas may change while the job runs."""
    workers: WorkerSpec
    """Worker pods: each runs command + args. replicas is the scale subresource."""
    stages: Annotated[list[StageSpec], Field(max_length=MAX_STAGES)] = Field(default_factory=list)
    """Stages run in order, each with its own worker count for some epochs or steps (FlexPS); the job scales
    its workers live between them. With stages, workers.replicas is not used."""
    fault_tolerance: FaultTolerance = FaultTolerance()
    """Replication, failure detection, checkpoints and what a data loss does."""
    rebalance_policy: RebalancePolicy = RebalancePolicy()
    """Shards, partitioning, migrations and how long a leaving node may take."""
    run_policy: RunPolicy = RunPolicy()
    """Retries, deadline, clean-up, TTL and suspension (as Kubeflow's runPolicy)."""

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


def describe_validation_error(
    exc: ValidationError, source: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line per problem, naming the field as a user wrote it (``spec.workers.replicas``);
    with the ``model`` validated, a misspelt field's line names the field meant."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(document)"
        message = error["msg"]
        if error["type"] == "value_error":  # our validators' own words, without pydantic's prefix
            message = message.removeprefix("Value error, ")
        elif error["type"] == "extra_forbidden" and model is not None:
            message = _unknown_field(model, error["loc"])
        lines.append(f"{source + ': ' if source else ''}{where}: {message}")
    return "\n".join(lines)


def _unknown_field(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """What to say of a field the model does not have: the one meant, if one is close."""
    import difflib  # only for a mistake's message: not on every process's import

    fields = _fields_at(model, loc[:-1])
    if not fields:
        return "not a field here"
    meant = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.6)
    if meant:
        return f"not a field here; did you mean {meant[0]!r}?"
    return f"not a field here; the fields: {', '.join(fields)}"


def _fields_at(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The field names (as a manifest writes them) of the model at ``path`` inside ``model``
    (list indices skipped); none where the path leaves the models (a mapping's keys)."""
    current = model
    for part in path:
        if isinstance(part, int):
            continue
        found = [info for name, info in current.model_fields.items() if part in (info.alias, name)]
        inner = models_in(found[0].annotation) if found else []
        if not inner:
            return []
        current = inner[0]
    return [info.alias or name for name, info in current.model_fields.items()]
