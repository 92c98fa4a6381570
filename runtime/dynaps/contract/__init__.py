"""The contract between the operator and the runtime: one package, stdlib + pydantic only.

It defines two documents:

* the ``ParameterServerJob`` resource (``spec`` and ``status``), which users write and
  ``kubectl apply`` or ``dynaps run``; the CRD's OpenAPI schema is generated from it;
* the :class:`RuntimeConfig`, the one JSON document the operator (or ``dynaps run``)
  hands to every process of a job through ``DYNAPS_CONFIG`` / ``DYNAPS_CONFIG_FILE``.

Both the operator and the runtime import this package and nothing else of each other, so
what the operator writes is by construction what the runtime reads.  Field names are
camelCase on the wire (Kubernetes style) and snake_case in Python; both are accepted.

Its parts: :mod:`~dynaps.contract.spec` (the manifest and its ``spec``), which gathers one
module per part of the spec (:mod:`~dynaps.contract.tables`, :mod:`~dynaps.contract.roles`,
:mod:`~dynaps.contract.stages`, :mod:`~dynaps.contract.placement`,
:mod:`~dynaps.contract.consistency`, :mod:`~dynaps.contract.fault_tolerance`,
:mod:`~dynaps.contract.run_policy`); :mod:`~dynaps.contract.config` (the RuntimeConfig and
the environment that carries it); :mod:`~dynaps.contract.status` (what the operator
reports); :mod:`~dynaps.contract.limits` (the bounds they share) and
:mod:`~dynaps.contract.base` (the documents' common base).  Import the names from
``dynaps.contract`` itself.
:mod:`~dynaps.contract.secret` (the job secret and the keys derived from it) and
:mod:`~dynaps.contract.quantity` (Kubernetes quantities such as ``512Mi``) are used as modules.
"""

from __future__ import annotations

from dynaps.contract.config import (
    CONFIG_ENV,
    CONFIG_FILE_ENV,
    COORDINATOR_SIGTERM_ENV,
    IDENTITY_ENV,
    SIGTERM_ENDS_JOB,
    SIGTERM_EXITS_ALONE,
    THREAD_ENV,
    RuntimeConfig,
    runtime_config,
    thread_env,
)
from dynaps.contract.consistency import (
    Consistency,
    ConsistencyModel,
)
from dynaps.contract.fault_tolerance import (
    DATA_LOSS_EXIT_CODE,
    DATA_LOSS_REASON,
    FENCED_EXIT_CODE,
    HEARTBEAT_INTERVAL_MS,
    CheckpointSpec,
    DataLossCause,
    FaultTolerance,
    OnDataLoss,
    silence_limit_seconds,
)
from dynaps.contract.limits import (
    MAX_NODES,
    MAX_REPORTED_NAME_LENGTH,
    MAX_REPORTED_NAMES,
    MAX_TABLES,
)
from dynaps.contract.placement import (
    Allocation,
    Partition,
    RebalancePolicy,
)
from dynaps.contract.roles import (
    CoordinatorSpec,
    RoleSpec,
    ServerSpec,
    WorkerSpec,
)
from dynaps.contract.run_policy import (
    CleanPodPolicy,
    FailureAction,
    FailureRule,
    GangScheduler,
    OomMemoryGrowth,
    RunPolicy,
    SchedulingPolicy,
)
from dynaps.contract.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    SHORT_NAME,
    JobSpec,
    ObjectMeta,
    ParameterServerJob,
    describe_validation_error,
)
from dynaps.contract.stages import (
    StageSpec,
    StageUnit,
)
from dynaps.contract.status import (
    TERMINAL_PHASES,
    CheckpointStatus,
    Condition,
    ConditionReason,
    ConditionStatus,
    ConditionType,
    DataLossEntry,
    DataLossStatus,
    JobPhase,
    JobStatus,
    OwnershipStatus,
    ReplicaStatus,
    StageStatus,
)
from dynaps.contract.tables import (
    DType,
    InitKind,
    InitSpec,
    NamedTable,
    TableCache,
    TableSpec,
    UpdaterKind,
    UpdaterSpec,
)

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "CONFIG_ENV",
    "CONFIG_FILE_ENV",
    "COORDINATOR_SIGTERM_ENV",
    "DATA_LOSS_EXIT_CODE",
    "DATA_LOSS_REASON",
    "FENCED_EXIT_CODE",
    "HEARTBEAT_INTERVAL_MS",
    "IDENTITY_ENV",
    "KIND",
    "MAX_NODES",
    "MAX_REPORTED_NAMES",
    "MAX_REPORTED_NAME_LENGTH",
    "MAX_TABLES",
    "PLURAL",
    "SHORT_NAME",
    "SIGTERM_ENDS_JOB",
    "SIGTERM_EXITS_ALONE",
    "TERMINAL_PHASES",
    "THREAD_ENV",
    "Allocation",
    "CheckpointSpec",
    "CheckpointStatus",
    "CleanPodPolicy",
    "Condition",
    "ConditionReason",
    "ConditionStatus",
    "ConditionType",
    "Consistency",
    "ConsistencyModel",
    "CoordinatorSpec",
    "DType",
    "DataLossCause",
    "DataLossEntry",
    "DataLossStatus",
    "FailureAction",
    "FailureRule",
    "FaultTolerance",
    "GangScheduler",
    "InitKind",
    "InitSpec",
    "JobPhase",
    "JobSpec",
    "JobStatus",
    "NamedTable",
    "ObjectMeta",
    "OnDataLoss",
    "OomMemoryGrowth",
    "OwnershipStatus",
    "ParameterServerJob",
    "Partition",
    "RebalancePolicy",
    "ReplicaStatus",
    "RoleSpec",
    "RunPolicy",
    "RuntimeConfig",
    "SchedulingPolicy",
    "ServerSpec",
    "StageSpec",
    "StageStatus",
    "StageUnit",
    "TableCache",
    "TableSpec",
    "UpdaterKind",
    "UpdaterSpec",
    "WorkerSpec",
    "describe_validation_error",
    "runtime_config",
    "silence_limit_seconds",
    "thread_env",
]
