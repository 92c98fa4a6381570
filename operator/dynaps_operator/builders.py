"""Pure builders: a job in, the Kubernetes objects it needs out (dicts, as the API takes them).

Nothing here talks to the cluster, so every object the operator creates can be checked in a
unit test: the job's reference and its children's metadata, its ConfigMap, Service, Secret,
NetworkPolicy and PodGroup here, its pods in :mod:`dynaps_operator.pod_builder`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from dynaps.contract import (
    ParameterServerJob,
    RuntimeConfig,
    runtime_config,
    secret,
)
from dynaps_operator import gang, names

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class JobRef:
    """Where a job lives; ``uid`` makes owner references (garbage collection of children)."""

    name: str
    namespace: str
    uid: str


def owner_reference(ref: JobRef) -> JsonDict:
    return {
        "apiVersion": names.JOB_API_VERSION,
        "kind": names.JOB_KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(ref: JobRef, name: str, labels: dict[str, str]) -> JsonDict:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(ref)],
    }


def build_runtime_config(
    job: ParameterServerJob, ref: JobRef, restore_from: str | None = None
) -> RuntimeConfig:
    """The job-wide document every pod reads from ``DYNAPS_CONFIG_FILE``.

    ``restore_from`` (the latest checkpoint, on a resume or a whole-job restart) applies only
    where the user did not name a checkpoint to restore.
    """
    config = runtime_config(
        job,
        coordinator=names.coordinator_address(ref.name, ref.namespace),
        coordinator_http_port=names.COORDINATOR_HTTP_PORT,
        data_port=names.NODE_PORT,
        metrics_port=names.METRICS_PORT,
    )
    checkpoint = config.fault_tolerance.checkpoint
    if restore_from and not checkpoint.restore_from:
        checkpoint = checkpoint.model_copy(update={"restore_from": restore_from})
        tolerance = config.fault_tolerance.model_copy(update={"checkpoint": checkpoint})
        config = config.model_copy(update={"fault_tolerance": tolerance})
    return config


def build_configmap(job: ParameterServerJob, ref: JobRef, restore_from: str | None = None) -> JsonDict:
    config = build_runtime_config(job, ref, restore_from)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(ref, names.configmap_name(ref.name), names.job_labels(ref.name)),
        "data": {names.CONFIG_KEY: config.to_json()},
    }


def build_service(ref: JobRef) -> JsonDict:
    """The headless Service that gives every pod a stable DNS name (``<pod>.<job>.<ns>.svc``).

    ``publishNotReadyAddresses``: nodes must reach the coordinator while they register, before
    anything is ready (the same reason StatefulSets' peer discovery uses it).
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(ref, names.service_name(ref.name), names.job_labels(ref.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_JOB: ref.name},
            "ports": [
                {"name": "coordinator", "port": names.COORDINATOR_PORT, "targetPort": names.COORDINATOR_PORT},
                {
                    "name": "http",
                    "port": names.COORDINATOR_HTTP_PORT,
                    "targetPort": names.COORDINATOR_HTTP_PORT,
                },
                {"name": "data", "port": names.NODE_PORT, "targetPort": names.NODE_PORT},
                {"name": "metrics", "port": names.METRICS_PORT, "targetPort": names.METRICS_PORT},
            ],
        },
    }


def build_secret(ref: JobRef, value: bytes) -> JsonDict:
    """The job's Secret (see :mod:`dynaps_operator.security`): immutable, deleted with the job."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": child_metadata(ref, names.secret_name(ref.name), names.job_labels(ref.name)),
        "type": "Opaque",
        "immutable": True,
        "data": {secret.DATA_KEY: base64.b64encode(secret.encode(value).encode()).decode()},
    }


def build_network_policy(ref: JobRef, operator_namespace: str, operator_labels: dict[str, str]) -> JsonDict:
    """Ingress to the job's pods: from its own pods on every port but the coordinator's HTTP
    port (a worker's client socket takes any free port), and from the operator on that one.

    Without the operator's namespace and labels (an operator running outside the cluster) the
    HTTP port stays open to any source; the job's token still guards it.  The metrics port is
    open to any source: what it serves needs no token (docs/security.md).
    """
    http = names.COORDINATOR_HTTP_PORT
    job_pods = {"podSelector": {"matchLabels": {names.LABEL_JOB: ref.name}}}
    ingress: list[JsonDict] = [
        {
            "from": [job_pods],
            "ports": [
                {"protocol": "TCP", "port": 1, "endPort": http - 1},
                {"protocol": "TCP", "port": http + 1, "endPort": 65535},
            ],
        }
    ]
    to_http: JsonDict = {"ports": [{"protocol": "TCP", "port": http}]}
    if operator_namespace and operator_labels:
        to_http["from"] = [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
                "podSelector": {"matchLabels": dict(operator_labels)},
            }
        ]
    ingress.append(to_http)
    # /metrics (counts only, no token) from anywhere: Prometheus runs in a namespace of its own
    ingress.append({"ports": [{"protocol": "TCP", "port": names.METRICS_PORT}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(ref, names.network_policy_name(ref.name), names.job_labels(ref.name)),
        "spec": {"podSelector": job_pods["podSelector"], "policyTypes": ["Ingress"], "ingress": ingress},
    }


def build_pod_group(job: ParameterServerJob, ref: JobRef) -> JsonDict | None:
    """The PodGroup of the job's gang scheduler (None without one): see :mod:`dynaps_operator.gang`."""
    metadata = child_metadata(ref, names.pod_group_name(ref.name), names.job_labels(ref.name))
    return gang.build_pod_group(job, metadata)
