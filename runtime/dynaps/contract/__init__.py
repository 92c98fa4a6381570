"""The contract between the operator and the runtime: one package, stdlib + pydantic only.

It defines two documents:

* the ``ParameterServerJob`` resource (``spec`` and ``status``), which users write and
  ``kubectl apply`` or ``dynaps run``; the CRD's OpenAPI schema is generated from it;
* the :class:`RuntimeConfig`, the one JSON document the operator (or ``dynaps run``)
  hands to every process of a job through ``DYNAPS_CONFIG`` / ``DYNAPS_CONFIG_FILE``.

Both the operator and the runtime import this package and nothing else of each other, so
what the operator writes is by construction what the runtime reads.  Field names are
camelCase on the wire (Kubernetes style) and snake_case in Python; both are accepted.

Its parts: :mod:`~dynaps.contract.spec` (the resource's spec and the RuntimeConfig),
:mod:`~dynaps.contract.status` (what the operator reports) and :mod:`~dynaps.contract.base`
(the documents' common base); import the names from ``dynaps.contract`` itself.
:mod:`~dynaps.contract.secret` (the job secret and the keys derived from it) and
:mod:`~dynaps.contract.quantity` (Kubernetes quantities such as ``512Mi``) are used as modules.
"""

from __future__ import annotations

from dynaps.contract.spec import (
    API_GROUP,
    API_VERSION,
    CONFIG_ENV,
    CONFIG_FILE_ENV,
    DATA_LOSS_EXIT_CODE,
    DATA_LOSS_REASON,
    FENCED_EXIT_CODE,
    KIND,
    MAX_NODES,
    MAX_TABLES,
    PLURAL,
    SHORT_NAME,
    Allocation,
    CheckpointSpec,
    CleanPodPolicy,
    Consistency,
    ConsistencyModel,
    CoordinatorSpec,
    DataLossCause,
    DType,
    FailureAction,
    FailureRule,
    FaultTolerance,
    InitKind,
    InitSpec,
    JobSpec,
    NamedTable,
    ObjectMeta,
    OnDataLoss,
    OomMemoryGrowth,
    ParameterServerJob,
    Partition,
    RebalancePolicy,
    RoleSpec,
    RunPolicy,
    RuntimeConfig,
    SchedulingPolicy,
    ServerSpec,
    TableSpec,
    UpdaterKind,
    UpdaterSpec,
    WorkerSpec,
    describe_validation_error,
    runtime_config,
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
)

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "CONFIG_ENV",
    "CONFIG_FILE_ENV",
    "DATA_LOSS_EXIT_CODE",
    "DATA_LOSS_REASON",
    "FENCED_EXIT_CODE",
    "KIND",
    "MAX_NODES",
    "MAX_TABLES",
    "PLURAL",
    "SHORT_NAME",
    "TERMINAL_PHASES",
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
    "TableSpec",
    "UpdaterKind",
    "UpdaterSpec",
    "WorkerSpec",
    "describe_validation_error",
    "runtime_config",
]
