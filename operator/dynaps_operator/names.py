"""Names, labels and ports of a job's children: the identity a replaced pod must keep.

A pod of a ParameterServerJob is named after its role and ordinal (``<job>-coordinator``,
``<job>-server-0``, ``<job>-worker-3``), so a pod recreated after a preemption has the same
name, DNS record and ``DYNAPS_NODE_NAME`` as the one it replaces; the coordinator uses that
name to let the replacement take over its predecessor's place.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from dynaps.contract import API_GROUP, API_VERSION, KIND, PLURAL

JOB_API_VERSION: Final = f"{API_GROUP}/{API_VERSION}"
JOB_KIND: Final = KIND
JOB_PLURAL: Final = PLURAL

# Fixed ports: every pod binds its own pod IP, so fixed numbers never collide (two pods on a
# node have different IPs) and peers need no discovery beyond DNS.
COORDINATOR_PORT: Final = 7070  # the coordinator's data-plane (ZeroMQ) socket
COORDINATOR_HTTP_PORT: Final = 8080  # /healthz, /status, /metrics, POST /scale /drain /checkpoint
NODE_PORT: Final = 7100  # a server's or worker's data-plane socket
METRICS_PORT: Final = 9090  # GET /metrics on every pod, no token (docs/metrics.md)

CONTAINER: Final = "dynaps"  # the main container of every pod (`kubectl logs` finds it by default)
CONFIG_VOLUME: Final = "dynaps-config"
CONFIG_DIR: Final = "/etc/dynaps"
CONFIG_KEY: Final = "config.json"
CHECKPOINT_VOLUME: Final = "dynaps-checkpoints"
SECRET_VOLUME: Final = "dynaps-secret"  # noqa: S105 (a volume name, not a password)

# Labels on every child; selectors use the dynaps.io ones, the app.kubernetes.io ones are for people
# and tools (dashboards, `kubectl get -l`).
LABEL_JOB: Final = "dynaps.io/job"
LABEL_ROLE: Final = "dynaps.io/role"
LABEL_INDEX: Final = "dynaps.io/index"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "dynaps-operator"

# The longest hostname Kubernetes accepts (a DNS label); a pod's hostname is its name.
MAX_HOSTNAME: Final = 63


class Role(StrEnum):
    COORDINATOR = "coordinator"
    SERVER = "server"
    WORKER = "worker"


NODE_ROLES: Final = (Role.SERVER, Role.WORKER)


def pod_name(job: str, role: Role, index: int = 0) -> str:
    if role is Role.COORDINATOR:
        return f"{job}-coordinator"
    return f"{job}-{role.value}-{index}"


def service_name(job: str) -> str:
    """The headless Service: pods are ``<pod>.<job>.<namespace>.svc``."""
    return job


def configmap_name(job: str) -> str:
    return f"{job}-config"


def secret_name(job: str) -> str:
    """The job's Secret (the value its processes derive their keys from)."""
    return f"{job}-secret"


def network_policy_name(job: str) -> str:
    return job


def pod_group_name(job: str) -> str:
    """The gang scheduler's PodGroup, and Kueue's pod group (its Workload has this name too)."""
    return job


def coordinator_address(job: str, namespace: str) -> str:
    """The coordinator's data-plane address as the job's pods reach it (headless-Service DNS).

    The namespace-qualified ``.svc`` form resolves through the pods' search path whatever the
    cluster domain is.
    """
    return f"{pod_name(job, Role.COORDINATOR)}.{service_name(job)}.{namespace}.svc:{COORDINATOR_PORT}"


def job_labels(job: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "dynaps",
        "app.kubernetes.io/instance": job,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_JOB: job,
    }


def pod_labels(job: str, role: Role, index: int = 0) -> dict[str, str]:
    return {
        **job_labels(job),
        "app.kubernetes.io/component": role.value,
        LABEL_ROLE: role.value,
        LABEL_INDEX: str(index),
    }


def job_selector(job: str) -> str:
    return f"{LABEL_JOB}={job}"


def role_selector(job: str, role: Role) -> str:
    return f"{LABEL_JOB}={job},{LABEL_ROLE}={role.value}"


def longest_pod_name(job: str, servers: int, workers: int) -> str:
    """The longest name among the job's pods (hostnames must fit in a DNS label)."""
    names = [
        pod_name(job, Role.COORDINATOR),
        pod_name(job, Role.SERVER, servers - 1),
        pod_name(job, Role.WORKER, workers - 1),
    ]
    return max(names, key=len)
