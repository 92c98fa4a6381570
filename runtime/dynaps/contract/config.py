"""The :class:`RuntimeConfig` every process of a job parses (the operator-runtime contract),
the environment variables that carry it, and :func:`runtime_config`, which derives it from a job."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from dynaps.contract import secret
from dynaps.contract.base import A_NUMBER, WHOLE_NUMBER, Model
from dynaps.contract.consistency import Consistency
from dynaps.contract.fault_tolerance import FaultTolerance
from dynaps.contract.limits import MAX_NODES, MAX_STAGES, MAX_TABLES
from dynaps.contract.placement import Allocation, RebalancePolicy
from dynaps.contract.roles import RoleSpec
from dynaps.contract.spec import JobSpec, ParameterServerJob
from dynaps.contract.stages import StageSpec, check_stages
from dynaps.contract.tables import NamedTable

CONFIG_ENV = "DYNAPS_CONFIG"
CONFIG_FILE_ENV = "DYNAPS_CONFIG_FILE"
# What SIGTERM means to the coordinator: end the job (the nodes are told to shut down; what
# `dynaps run` and LocalCluster want), or exit alone (the operator's pods: a terminating
# coordinator pod is evicted or replaced, and the nodes wait for the new coordinator).
COORDINATOR_SIGTERM_ENV = "DYNAPS_COORDINATOR_SIGTERM"
SIGTERM_ENDS_JOB = "end-job"
SIGTERM_EXITS_ALONE = "exit-alone"

# Variables that tie a process to its job and its place in it (set by the operator in a pod,
# by `dynaps run` locally): a job's env or template must not change them. The job secret's
# are among them: a template must not point a pod at another secret.
IDENTITY_ENV = frozenset(
    {
        CONFIG_ENV,
        CONFIG_FILE_ENV,
        "DYNAPS_NODE_NAME",
        "DYNAPS_RANK",
        "DYNAPS_BIND_HOST",
        "DYNAPS_ADVERTISE_HOST",
        secret.FILE_ENV,
        secret.HEX_ENV,
    }
)

# How many threads each process's numeric libraries (OpenMP, OpenBLAS, MKL) may start. They
# start one per CPU they *see*: the machine's, not a pod's CPU limit nor a local job's share
# of the machine, so a 2-CPU pod on a 64-core node would run 64 BLAS threads that the CFS
# quota throttles, and each of a local job's 8 training processes on 2 cores spins 2 of its
# own after every matrix product. The operator sets them from the container's CPU limit,
# `dynaps run` and LocalCluster from the share of this machine's CPUs; a user's own value wins.
THREAD_ENV = frozenset({"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"})


def thread_env(threads: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that allow ``threads`` threads (at least 1); none where ``environ``
    already sets one of them: whoever set it chose for every library."""
    if any(name in environ for name in THREAD_ENV):
        return {}
    return dict.fromkeys(sorted(THREAD_ENV), str(max(1, threads)))


class RuntimeConfig(Model):
    """What every process of a job is told: the operator-runtime contract.

    ``coordinator`` is ``host:port`` of the coordinator's data-plane socket; each node binds
    ``bind_host`` and advertises ``advertise_host`` (its pod IP on Kubernetes).
    """

    job: str = "local"
    tables: Annotated[list[NamedTable], Field(min_length=1, max_length=MAX_TABLES)]
    servers: Annotated[int, Field(ge=1, le=MAX_NODES), WHOLE_NUMBER] = 1
    workers: Annotated[int, Field(ge=1, le=MAX_NODES), WHOLE_NUMBER] = 1
    allocation: Allocation = Allocation.DYNAMIC
    consistency: Consistency = Consistency()
    fault_tolerance: FaultTolerance = FaultTolerance()
    rebalance_policy: RebalancePolicy = RebalancePolicy()
    coordinator: str = "127.0.0.1:7070"
    coordinator_http_port: Annotated[int, Field(ge=0, le=65535), WHOLE_NUMBER] = 0
    bind_host: str = "127.0.0.1"
    advertise_host: str | None = None
    data_port: Annotated[int, Field(ge=0, le=65535), WHOLE_NUMBER] = 0
    # Where every process serves GET /metrics (docs/metrics.md): 0 any free port (local runs;
    # a node's STATS reply names it), None nowhere.  The coordinator serves it on its HTTP
    # port as well.
    metrics_port: Annotated[int, Field(ge=0, le=65535), WHOLE_NUMBER] | None = 0
    request_timeout_seconds: Annotated[float, Field(gt=0), A_NUMBER] = 120.0
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
