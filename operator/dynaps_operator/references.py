"""What a job's templates name in its namespace, and whether the namespace let jobs use it.

The operator creates pods with its own rights (a ClusterRole), so a template that names a
Secret, a ConfigMap or a PersistentVolumeClaim would get a job author an object they may not
read: their own program runs in the pod, and can print the value, report it, or send it
anywhere (finding 4 of the audit of issue 12; docs/security.md).  Kubernetes authorizes a pod's
references as whoever creates the pod, and the operator does not know who created the job (no
admission webhook records it).  So the namespace says which of its objects jobs may use: a
template may name an object only if it carries the label :data:`USABLE_LABEL` ``=true``, which
only someone allowed to change that object can set.  The job's own Secret and ConfigMap (the
operator made them, and checks that they are the job's) need no label.

What cannot be labelled is refused before this (:func:`dynaps_operator.security.template_problems`):
volumes that name storage outside the namespace's objects (``nfs``, ``csi``, ``iscsi``...), a
projected service-account token, a claim cloned from another (``dataSource``).

Pure: :func:`references` lists them with the field that names each; the applier reads each
object's labels (metadata only) before it creates a pod.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dynaps.contract import ParameterServerJob
from dynaps_operator import names
from dynaps_operator.security import role_templates

USABLE_LABEL = "dynaps.io/usable-by-jobs"
SECRET = "Secret"  # noqa: S105 (a kind, not a password)
CONFIG_MAP = "ConfigMap"
CLAIM = "PersistentVolumeClaim"
PLURALS = {SECRET: "secrets", CONFIG_MAP: "configmaps", CLAIM: "persistentvolumeclaims"}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
QUOTED = 3  # refused references named in one message; more are counted


@dataclass(frozen=True)
class Reference:
    kind: str  # Secret, ConfigMap or PersistentVolumeClaim
    name: str
    field: str  # where the job names it, e.g. spec.workers.template.spec.volumes[2].secret


def references(job: ParameterServerJob, job_name: str) -> list[Reference]:
    """Every object of the namespace the job's pods would use, but the job's own Secret and
    ConfigMap: role by role, then the checkpoint volume."""
    own = {(SECRET, names.secret_name(job_name)), (CONFIG_MAP, names.configmap_name(job_name))}
    found: list[Reference] = []
    for field, template in role_templates(job):
        spec = template.get("spec")
        if isinstance(spec, dict):
            found += _pod(f"{field}.spec", spec)
    volume = job.spec.fault_tolerance.checkpoint.volume
    found += _volume("spec.faultTolerance.checkpoint.volume", volume)
    return [r for r in found if r.name and (r.kind, r.name) not in own]


def usable(metadata: Any) -> bool:
    """Whether an object's metadata marks it for the namespace's jobs."""
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    return isinstance(labels, dict) and labels.get(USABLE_LABEL) == "true"


def refusal(refused: list[Reference]) -> str:
    """Why no pod is created, naming the fields (at most :data:`QUOTED` of them)."""
    lines = [
        f"{r.field}: {r.kind} {r.name} is not labelled {USABLE_LABEL}=true (or does not exist)"
        for r in refused[:QUOTED]
    ]
    if len(refused) > QUOTED:
        lines.append(f"and {len(refused) - QUOTED} more")
    first = refused[0]
    return (
        "; ".join(lines) + ": a job may use only the objects its namespace marked for jobs "
        f"(kubectl label {PLURALS[first.kind]} {first.name} {USABLE_LABEL}=true, by whoever may change it); "
        "no pod is created until then"
    )


def _pod(at: str, spec: dict[str, Any]) -> list[Reference]:
    found = [
        Reference(SECRET, _name(entry, "name"), f"{at}.imagePullSecrets[{i}]")
        for i, entry in _items(spec.get("imagePullSecrets"))
    ]
    for i, volume in _items(spec.get("volumes")):
        found += _volume(f"{at}.volumes[{i}]", volume)
    for key in CONTAINER_LISTS:
        for i, container in _items(spec.get(key)):
            found += _container(f"{at}.{key}[{i}]", container)
    return found


def _volume(at: str, volume: dict[str, Any]) -> list[Reference]:
    found: list[Reference] = []
    if isinstance(volume.get("secret"), dict):
        found.append(Reference(SECRET, _name(volume["secret"], "secretName"), f"{at}.secret"))
    if isinstance(volume.get("configMap"), dict):
        found.append(Reference(CONFIG_MAP, _name(volume["configMap"], "name"), f"{at}.configMap"))
    if isinstance(volume.get("persistentVolumeClaim"), dict):
        claim = _name(volume["persistentVolumeClaim"], "claimName")
        found.append(Reference(CLAIM, claim, f"{at}.persistentVolumeClaim"))
    projected = volume.get("projected")
    if isinstance(projected, dict):
        for i, source in _items(projected.get("sources")):
            for key, kind in (("secret", SECRET), ("configMap", CONFIG_MAP)):
                if isinstance(source.get(key), dict):
                    found.append(
                        Reference(kind, _name(source[key], "name"), f"{at}.projected.sources[{i}].{key}")
                    )
    return found


def _container(at: str, container: dict[str, Any]) -> list[Reference]:
    found: list[Reference] = []
    for i, var in _items(container.get("env")):
        source = var.get("valueFrom")
        if isinstance(source, dict):
            for key, kind in (("secretKeyRef", SECRET), ("configMapKeyRef", CONFIG_MAP)):
                if isinstance(source.get(key), dict):
                    found.append(
                        Reference(kind, _name(source[key], "name"), f"{at}.env[{i}].valueFrom.{key}")
                    )
    for i, source in _items(container.get("envFrom")):
        for key, kind in (("secretRef", SECRET), ("configMapRef", CONFIG_MAP)):
            if isinstance(source.get(key), dict):
                found.append(Reference(kind, _name(source[key], "name"), f"{at}.envFrom[{i}].{key}"))
    return found


def _items(value: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """The dicts of a list, with their index (anything else the API server refuses itself)."""
    if isinstance(value, list):
        yield from ((i, item) for i, item in enumerate(value) if isinstance(item, dict))


def _name(ref: dict[str, Any], key: str) -> str:
    value = ref.get(key)
    return value if isinstance(value, str) else ""
