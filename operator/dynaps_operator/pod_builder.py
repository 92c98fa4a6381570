"""A job's pods: each built in three layers, later layers winning where they overlap.

1. defaults a user may override (image, probes, grace period, DYNAPS_LOG_LEVEL, the numeric
   libraries' threads from the container's CPU limit, ...);
2. the role's ``template`` (a PodTemplateSpec: nodeSelector, tolerations, sidecars, volumes,
   a worker image with the user's code, ...) and the role's ``env``;
3. what identifies the pod and wires it to its job (name, labels, owner, hostname, command,
   DYNAPS_* identity variables, the config volume, ``restartPolicy: Never``): overriding
   these would break the job, so they always win.

``restartPolicy`` is ``Never`` on purpose: the operator, not the kubelet, decides what a
container exit means (a preemption, a failure that counts against ``backoffLimit``, or the end
of the job), as Kubeflow's ExitCode restart policy and DLRover do.  Pure, like
:mod:`dynaps_operator.builders` (the job's other objects): a job in, a dict out.
"""

from __future__ import annotations

from typing import Any

from dynaps.contract import (
    CONFIG_FILE_ENV,
    COORDINATOR_SIGTERM_ENV,
    IDENTITY_ENV,
    SIGTERM_EXITS_ALONE,
    THREAD_ENV,
    ParameterServerJob,
    secret,
)
from dynaps_operator import gang, memory_growth, names, security
from dynaps_operator.builders import JobRef, JsonDict, child_metadata
from dynaps_operator.names import Role

COORDINATOR_GRACE_SECONDS = 30
# After the job ends, the coordinator keeps answering GET /status until the operator has read the
# final document once (or this many seconds passed), so the final metrics reach the job's status.
COORDINATOR_LINGER_SECONDS = 10
# A node that is asked to stop hands its keys back first; give it the drain timeout plus a margin.
NODE_GRACE_MARGIN_SECONDS = 15


def build_pod(
    job: ParameterServerJob,
    ref: JobRef,
    role: Role,
    index: int = 0,
    log_level: str = "INFO",
    memory_growths: int = 0,
    allow_privileged: bool = False,
) -> JsonDict:
    """The pod of ``role`` number ``index`` of the job; its memory grown ``memory_growths``
    times under ``runPolicy.oomMemoryGrowth`` (``status.<role>.memoryGrowths``); hardened
    (:func:`security.harden`; enforced unless the operator allows privileged jobs)."""
    spec = job.spec
    name = names.pod_name(ref.name, role, index)
    role_spec = _role_spec(job, role)
    defaults = _default_layer(job, role, log_level)
    template = _template_layer(job, role, role_spec.template)
    forced = _forced_layer(job, ref, role, index, name)
    pod: JsonDict = merge(merge(defaults, template), forced)
    container = _main_container(pod)
    resources = role_resources(job, role)
    if resources:
        growth = spec.run_policy.oom_memory_growth
        container["resources"] = memory_growth.grown_resources(resources, growth, memory_growths)
    if spec.run_policy.scheduling_policy.priority_class:
        pod["spec"]["priorityClassName"] = spec.run_policy.scheduling_policy.priority_class
    # The gang scheduler's and Kueue's labels, annotations and schedulerName (see gang).
    pod = merge(pod, gang.pod_layer(job, names.pod_group_name(ref.name)))
    return security.harden(pod, enforce=not allow_privileged)


def role_resources(job: ParameterServerJob, role: Role) -> JsonDict:
    """The resources of the role's main container: ``resources``, else the template's."""
    role_spec = _role_spec(job, role)
    if role_spec.resources:
        return dict(role_spec.resources)
    resources = _template_container(role_spec).get("resources")
    return dict(resources) if isinstance(resources, dict) else {}


def _role_spec(job: ParameterServerJob, role: Role) -> Any:
    if role is Role.COORDINATOR:
        return job.spec.coordinator
    return job.spec.servers if role is Role.SERVER else job.spec.workers


def _thread_source(job: ParameterServerJob, role: Role) -> str:
    """What numpy's BLAS threads follow (it would start one per CPU of the *node*): the
    container's CPU limit (rounded up; a LimitRange's default too, or the node's CPUs where
    none is set), or its CPU request where the job asks for CPU without a limit: its share
    of a busy node."""
    resources = role_resources(job, role)
    has_limit = "cpu" in (resources.get("limits") or {})
    return "requests.cpu" if not has_limit and "cpu" in (resources.get("requests") or {}) else "limits.cpu"


def _user_env_names(job: ParameterServerJob, role: Role) -> set[str]:
    """The variables the job sets in the role's main container (its env, its template's)."""
    found = set(job.spec.workers.env) if role is Role.WORKER else set()
    env = _template_container(_role_spec(job, role)).get("env") or []
    return found | {str(e.get("name")) for e in env if isinstance(e, dict)}


def _template_container(role_spec: Any) -> JsonDict:
    """The main container of the role's template ({} where it has none)."""
    for container in (role_spec.template.get("spec") or {}).get("containers") or []:
        if isinstance(container, dict) and container.get("name") == names.CONTAINER:
            return container
    return {}


def _command(job: ParameterServerJob, role: Role) -> list[str]:
    if role is Role.WORKER:
        workers = job.spec.workers
        return ["dynaps", "worker", "--", *workers.command, *workers.args]
    return ["dynaps", role.value]


def _default_layer(job: ParameterServerJob, role: Role, log_level: str) -> JsonDict:
    env: list[JsonDict] = [{"name": "DYNAPS_LOG_LEVEL", "value": log_level}]
    if not THREAD_ENV & _user_env_names(job, role):
        # A job that sets one of them chose for every library: OpenBLAS would read our
        # OPENBLAS_NUM_THREADS before the user's OMP_NUM_THREADS.
        cpu = {"resourceFieldRef": {"resource": _thread_source(job, role), "divisor": "1"}}
        env += [{"name": name, "valueFrom": cpu} for name in sorted(THREAD_ENV)]
    if role is Role.COORDINATOR:
        probe: JsonDict = {"httpGet": {"path": "/healthz", "port": names.COORDINATOR_HTTP_PORT}}
        grace = COORDINATOR_GRACE_SECONDS
        env.append({"name": "DYNAPS_COORDINATOR_LINGER_SECONDS", "value": str(COORDINATOR_LINGER_SECONDS)})
    else:
        probe = {"tcpSocket": {"port": names.NODE_PORT}}
        grace = job.spec.rebalance_policy.drain_timeout_seconds + NODE_GRACE_MARGIN_SECONDS
    return {
        "spec": {
            "terminationGracePeriodSeconds": grace,
            "enableServiceLinks": False,
            # The runtime never calls the Kubernetes API: no token in its pods.
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": names.CONTAINER,
                    "image": job.spec.image,
                    "env": env,
                    "readinessProbe": {**probe, "periodSeconds": 2, "failureThreshold": 3},
                    # On failure the last log lines become the termination message, which the
                    # operator quotes in its Event and condition.
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        }
    }


def _template_layer(job: ParameterServerJob, role: Role, template: dict[str, Any]) -> JsonDict:
    layer: JsonDict = {key: value for key, value in template.items() if key in ("metadata", "spec")}
    if role is Role.WORKER and job.spec.workers.env:
        env = [
            {"name": key, "value": value}
            for key, value in sorted(job.spec.workers.env.items())
            if key not in IDENTITY_ENV
        ]
        layer = merge(layer, {"spec": {"containers": [{"name": names.CONTAINER, "env": env}]}})
    return _strip_identity_env(layer)


def _strip_identity_env(layer: JsonDict) -> JsonDict:
    for container in layer.get("spec", {}).get("containers", []) or []:
        if isinstance(container, dict) and container.get("name") == names.CONTAINER and "env" in container:
            container["env"] = [
                e for e in container["env"] if not (isinstance(e, dict) and e.get("name") in IDENTITY_ENV)
            ]
    return layer


def _field_env(name: str, path: str) -> JsonDict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _forced_layer(job: ParameterServerJob, ref: JobRef, role: Role, index: int, name: str) -> JsonDict:
    env: list[JsonDict] = [
        {"name": CONFIG_FILE_ENV, "value": f"{names.CONFIG_DIR}/{names.CONFIG_KEY}"},
        {"name": secret.FILE_ENV, "value": security.SECRET_FILE},
        _field_env("DYNAPS_NODE_NAME", "metadata.name"),
        # Bind and advertise the pod IP, never 0.0.0.0: correct everywhere, and required where
        # pods share a network namespace (the test cluster).
        _field_env("DYNAPS_BIND_HOST", "status.podIP"),
        _field_env("DYNAPS_ADVERTISE_HOST", "status.podIP"),
    ]
    if role is Role.WORKER:
        env.append({"name": "DYNAPS_RANK", "value": str(index)})
    if role is Role.COORDINATOR:
        # An evicted or deleted coordinator pod is replaced alone: its nodes wait for the new one.
        env.append({"name": COORDINATOR_SIGTERM_ENV, "value": SIGTERM_EXITS_ALONE})
        ports = [
            {"name": "coordinator", "containerPort": names.COORDINATOR_PORT},
            {"name": "http", "containerPort": names.COORDINATOR_HTTP_PORT},
        ]
    else:
        ports = [{"name": "data", "containerPort": names.NODE_PORT}]
    ports.append({"name": "metrics", "containerPort": names.METRICS_PORT})  # what monitors select
    secret_volume, secret_mount = security.secret_volume(ref.name)
    mounts: list[JsonDict] = [
        {"name": names.CONFIG_VOLUME, "mountPath": names.CONFIG_DIR, "readOnly": True},
        secret_mount,
    ]
    volumes: list[JsonDict] = [
        {"name": names.CONFIG_VOLUME, "configMap": {"name": names.configmap_name(ref.name)}},
        secret_volume,
    ]
    checkpoint = job.spec.fault_tolerance.checkpoint
    if checkpoint.volume:
        mounts.append({"name": names.CHECKPOINT_VOLUME, "mountPath": checkpoint.path})
        volumes.append({"name": names.CHECKPOINT_VOLUME, **checkpoint.volume})
    metadata = child_metadata(ref, name, names.pod_labels(ref.name, role, index))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "hostname": name,
            "subdomain": names.service_name(ref.name),
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": names.CONTAINER,
                    "command": _command(job, role),
                    "args": [],
                    "env": env,
                    "ports": ports,
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }


def _main_container(pod: JsonDict) -> JsonDict:
    container: JsonDict = next(c for c in pod["spec"]["containers"] if c.get("name") == names.CONTAINER)
    return container


VALUE_SOURCES = frozenset({"value", "valueFrom"})  # of an env var: the override's replaces ours


def merge(base: Any, override: Any) -> Any:
    """Deep merge where ``override`` wins: dicts merge by key, lists of named objects by name
    (containers, env, volumes, ports), any other value is replaced; an env var's ``value``
    or ``valueFrom`` replaces the other. Inputs are not modified."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else _copy(value)
        return merged
    if _named_list(base) and _named_list(override):
        by_name = {item["name"]: item for item in base}
        result = [
            merge(_one_value_source(by_name[item["name"]], item), item)
            if item["name"] in by_name
            else _copy(item)
            for item in override
        ]
        seen = {item["name"] for item in override}
        return result + [_copy(item) for item in base if item["name"] not in seen]
    return _copy(override)


def _one_value_source(base: JsonDict, override: JsonDict) -> JsonDict:
    """``base`` without its value source where ``override`` (an env var) brings its own."""
    if VALUE_SOURCES & override.keys():
        return {key: value for key, value in base.items() if key not in VALUE_SOURCES}
    return base


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "name" in v for v in value)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
