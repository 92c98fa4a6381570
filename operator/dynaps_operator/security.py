"""What keeps a job to itself on a shared cluster (issue 12, docs/security.md).

The operator holds a ClusterRole that creates pods in every namespace: whatever a role
template asks for, the operator would create on the user's behalf (a confused deputy).  So:

* every job pod runs hardened (:func:`harden`): ``runAsNonRoot``, seccomp ``RuntimeDefault``,
  no privilege escalation, every capability dropped, no service-account token;
* a template that asks for more (privileged, host namespaces, ``hostPath``, another service
  account, added capabilities, and whatever else the Pod Security Standards' "baseline"
  forbids: SELinux types, AppArmor unconfined, an unmasked ``/proc``, host ports, unsafe
  sysctls...) is refused with the field named (:func:`template_problems`),
  unless the operator's setting ``allowPrivilegedJobs`` allows it (the hardening then becomes
  a default the template may override);
* so is a volume the namespace cannot mark for jobs (``nfs``, ``csi``, a projected
  service-account token, a claim cloned from another...): the Secrets, ConfigMaps and claims a
  template names must carry the namespace's consent (:mod:`dynaps_operator.references`);
* each job gets a random Secret (``builders.build_secret``), mounted read-only in its pods, from
  which its processes derive the keys that sign their messages and the token the coordinator's
  HTTP endpoint wants; the operator reads it back for that token (:func:`token_of`);
* a NetworkPolicy per job (``builders.build_network_policy``): only the job's pods reach its pods,
  only the operator reaches the coordinator's HTTP port.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from dynaps.contract import ParameterServerJob, secret
from dynaps_operator import names

JsonDict = dict[str, Any]

POD_SECURITY: JsonDict = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: JsonDict = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
SECRET_FILE = f"{secret.MOUNT_DIR}/{secret.DATA_KEY}"
# Volume kinds a template may use: each is the pod's own, or an object of the namespace that
# references.py checks ("name" is the volume's name, not a kind).
_VOLUME_KINDS = frozenset(
    {
        "name",
        "configMap",
        "secret",
        "persistentVolumeClaim",
        "emptyDir",
        "downwardAPI",
        "projected",
        "ephemeral",
        "image",
    }
)
_PROJECTED_KINDS = frozenset({"configMap", "secret", "downwardAPI", "clusterTrustBundle"})
# The Pod Security Standards' "baseline": SELinux types a container may ask for, the sysctls
# the kubelet allows without --allowed-unsafe-sysctls (namespaced, isolated from the node),
# and the AppArmor annotation's prefix with the values it may take.
_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
_CONTAINER_LISTS = ("initContainers", "containers")


def harden(pod: JsonDict, *, enforce: bool) -> JsonDict:
    """``pod`` with the hardened security contexts on it and on every container.

    ``enforce``: the hardening wins over the template (the default); otherwise the template's
    own values win (``allowPrivilegedJobs``), e.g. ``privileged: true``, which Kubernetes
    refuses next to ``allowPrivilegeEscalation: false``.
    """
    spec = pod["spec"]

    def combine(hardening: JsonDict, own: Any) -> JsonDict:
        # Shallow on purpose: an enforced ``capabilities`` replaces the template's whole
        # (its ``add`` included); an allowed template's replaces the hardening's.
        own = own if isinstance(own, dict) else {}
        return {**own, **hardening} if enforce else {**hardening, **own}

    spec["securityContext"] = combine(POD_SECURITY, spec.get("securityContext"))
    for key in _CONTAINER_LISTS:
        for container in spec.get(key) or []:
            if isinstance(container, dict):
                container["securityContext"] = combine(CONTAINER_SECURITY, container.get("securityContext"))
    if enforce:
        spec["automountServiceAccountToken"] = False
    return pod


def role_templates(job: ParameterServerJob) -> list[tuple[str, dict[str, Any]]]:
    """Each role's pod template with the field that holds it (``spec.servers.template``)."""
    roles = (
        ("coordinator", job.spec.coordinator),
        ("servers", job.spec.servers),
        ("workers", job.spec.workers),
    )
    return [(f"spec.{role}.template", role_spec.template) for role, role_spec in roles]


def template_problems(job: ParameterServerJob) -> list[str]:
    """What the job's templates ask for beyond a hardened pod, one line per field."""
    problems: list[str] = []
    for field, template in role_templates(job):
        spec = template.get("spec")
        if isinstance(spec, dict):
            problems += _pod_problems(f"{field}.spec", spec)
        metadata = template.get("metadata")
        annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
        for key, value in annotations.items() if isinstance(annotations, dict) else ():
            if str(key).startswith(_APPARMOR_ANNOTATION) and not _confined(value):
                problems.append(_refused(f"{field}.metadata.annotations[{key}]", "no AppArmor profile"))
    problems += _volume_problems(
        "spec.faultTolerance.checkpoint.volume", job.spec.fault_tolerance.checkpoint.volume
    )
    return problems


def _refused(field: str, what: str) -> str:
    return (
        f"{field}: refused: it gives the job {what}; the operator's setting allowPrivilegedJobs "
        "(chart value) allows it"
    )


def _pod_problems(at: str, spec: JsonDict) -> list[str]:
    problems = [
        _refused(f"{at}.{key}", "the node's namespaces")
        for key in ("hostNetwork", "hostPID", "hostIPC")
        if spec.get(key) is True
    ]
    for key in ("serviceAccountName", "serviceAccount"):
        if spec.get(key) not in (None, "", "default"):
            problems.append(_refused(f"{at}.{key}", "a service account's rights"))
    if spec.get("automountServiceAccountToken") is True:
        problems.append(_refused(f"{at}.automountServiceAccountToken", "a Kubernetes API token"))
    for i, volume in enumerate(spec.get("volumes") or []):
        if isinstance(volume, dict):
            problems += _volume_problems(f"{at}.volumes[{i}]", volume)
    for i, claim in enumerate(spec.get("resourceClaims") or []):
        if isinstance(claim, dict) and claim.get("resourceClaimName"):
            problems.append(
                _refused(f"{at}.resourceClaims[{i}].resourceClaimName", "an existing claim's devices")
            )
    problems += _context_problems(f"{at}.securityContext", spec.get("securityContext"))
    for key in (*_CONTAINER_LISTS, "ephemeralContainers"):
        for i, container in enumerate(spec.get(key) or []):
            if isinstance(container, dict):
                problems += _context_problems(
                    f"{at}.{key}[{i}].securityContext", container.get("securityContext")
                )
                for j, port in enumerate(container.get("ports") or []):
                    if isinstance(port, dict) and port.get("hostPort"):
                        problems.append(
                            _refused(f"{at}.{key}[{i}].ports[{j}].hostPort", "a port of the node")
                        )
    return problems


def _confined(apparmor: Any) -> bool:
    """An AppArmor annotation's value the baseline allows."""
    return apparmor in ("", "runtime/default") or (
        isinstance(apparmor, str) and apparmor.startswith("localhost/")
    )


def _volume_problems(at: str, volume: dict[str, Any]) -> list[str]:
    """A volume (or the checkpoint volume's source) of a kind the namespace cannot mark for
    jobs: only the kinds of the Pod Security Standards' "restricted" profile, but ``csi``
    (a driver's attributes may name anything), are allowed; references they make are checked
    against the namespace's consent (:mod:`dynaps_operator.references`)."""
    problems = []
    for key in volume:
        if key == "hostPath":
            problems.append(_refused(f"{at}.hostPath", "a node's file system"))
        elif key not in _VOLUME_KINDS:
            problems.append(
                _refused(f"{at}.{key}", "storage the operator cannot check (use a PersistentVolumeClaim)")
            )
    projected = volume.get("projected")
    for i, source in enumerate((projected.get("sources") or []) if isinstance(projected, dict) else []):
        for key in source if isinstance(source, dict) else ():
            if key not in _PROJECTED_KINDS:
                problems.append(
                    _refused(f"{at}.projected.sources[{i}].{key}", "a credential of the pod's identity")
                )
    ephemeral = volume.get("ephemeral")
    claim = (ephemeral.get("volumeClaimTemplate") or {}) if isinstance(ephemeral, dict) else {}
    claim_spec = claim.get("spec") if isinstance(claim, dict) else None
    for key in ("dataSource", "dataSourceRef"):
        if isinstance(claim_spec, dict) and claim_spec.get(key):
            field = f"{at}.ephemeral.volumeClaimTemplate.spec.{key}"
            problems.append(_refused(field, "a copy of another claim or snapshot"))
    return problems


def _context_problems(at: str, context: Any) -> list[str]:
    if not isinstance(context, dict):
        return []
    problems = []
    if context.get("privileged") is True:
        problems.append(_refused(f"{at}.privileged", "the node's devices and kernel"))
    if context.get("allowPrivilegeEscalation") is True:
        problems.append(_refused(f"{at}.allowPrivilegeEscalation", "setuid privileges"))
    if context.get("runAsNonRoot") is False:
        problems.append(_refused(f"{at}.runAsNonRoot", "root"))
    if context.get("runAsUser") == 0:
        problems.append(_refused(f"{at}.runAsUser", "root"))
    added = (
        (context.get("capabilities") or {}).get("add")
        if isinstance(context.get("capabilities"), dict)
        else None
    )
    if added:
        problems.append(_refused(f"{at}.capabilities.add", "kernel capabilities"))
    seccomp = context.get("seccompProfile")
    if isinstance(seccomp, dict) and seccomp.get("type") == "Unconfined":
        problems.append(_refused(f"{at}.seccompProfile", "every system call"))
    return problems + _baseline_problems(at, context)


def _baseline_problems(at: str, context: dict[str, Any]) -> list[str]:
    """The rest of what the Pod Security Standards' "baseline" forbids in a securityContext."""
    problems = []
    selinux = context.get("seLinuxOptions")
    if isinstance(selinux, dict) and (
        selinux.get("type", "") not in _SELINUX_TYPES or selinux.get("user") or selinux.get("role")
    ):
        problems.append(_refused(f"{at}.seLinuxOptions", "another SELinux type, user or role"))
    apparmor = context.get("appArmorProfile")
    if isinstance(apparmor, dict) and apparmor.get("type") == "Unconfined":
        problems.append(_refused(f"{at}.appArmorProfile", "no AppArmor profile"))
    if context.get("procMount") not in (None, "Default"):
        problems.append(_refused(f"{at}.procMount", "an unmasked /proc"))
    windows = context.get("windowsOptions")
    if isinstance(windows, dict) and windows.get("hostProcess") is True:
        problems.append(_refused(f"{at}.windowsOptions.hostProcess", "the Windows node itself"))
    for i, sysctl in enumerate(context.get("sysctls") or []):
        if not isinstance(sysctl, dict) or sysctl.get("name") not in _SAFE_SYSCTLS:
            problems.append(_refused(f"{at}.sysctls[{i}]", "kernel settings shared with the node"))
    return problems


# ---------------------------------------------------------------------- the job's children


def owned(metadata: Any, uid: str) -> bool:
    """Whether an object's metadata (as read back) names the job ``uid`` among its owners: a
    child of the job's name that does not (a leftover of a deleted job of the same name, or
    anyone's object) is never used nor changed."""
    owners = (metadata.get("ownerReferences") if isinstance(metadata, dict) else None) or []
    return any(isinstance(owner, dict) and owner.get("uid") == uid for owner in owners)


def token_of(body: JsonDict, job_uid: str) -> str | None:
    """The HTTP token from the job's Secret as read back, or None when it is not this job's
    (another owner: a leftover of a deleted job of the same name) or not a usable secret."""
    if not owned(body.get("metadata"), job_uid):
        return None
    try:
        text = base64.b64decode((body.get("data") or {}).get(secret.DATA_KEY, ""), validate=True).decode()
        return secret.http_token(secret.decode(text, "the job's Secret"))
    except (binascii.Error, UnicodeDecodeError, secret.SecretError):
        return None


def secret_volume(job: str) -> tuple[JsonDict, JsonDict]:
    """The pod volume of the job's Secret and its read-only mount at ``secret.MOUNT_DIR``."""
    volume = {
        "name": names.SECRET_VOLUME,
        # Readable by the container's non-root user without an fsGroup; the container runs
        # nothing but the job's process.
        "secret": {"secretName": names.secret_name(job), "defaultMode": 0o444},
    }
    mount = {"name": names.SECRET_VOLUME, "mountPath": secret.MOUNT_DIR, "readOnly": True}
    return volume, mount
