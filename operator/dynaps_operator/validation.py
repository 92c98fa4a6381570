"""Is a ParameterServerJob runnable on Kubernetes? The model's checks plus the operator's own.

The CRD's schema (generated from the same pydantic models) rejects most mistakes at
``kubectl apply``; what it cannot say is checked here and reported as a Failed condition and a
Warning Event whose message names the field, e.g.
``spec.workers.command: is empty; a worker pod needs the training program to run``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from dynaps.contract import JobStatus, ParameterServerJob, RoleSpec, describe_validation_error, quantity
from dynaps_operator import memory_growth, names, security
from dynaps_operator.names import Role
from dynaps_operator.pod_builder import role_resources

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def parse_job(body: dict[str, Any], allow_privileged: bool = False) -> tuple[ParameterServerJob | None, str]:
    """The job, or None and a message naming every invalid field; ``allow_privileged`` is the
    operator's setting ``allowPrivilegedJobs`` (see :mod:`dynaps_operator.security`)."""
    meta = body.get("metadata") or {}
    document = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta},
        "spec": body.get("spec"),
    }
    try:
        job = ParameterServerJob.model_validate(document)
    except ValidationError as exc:
        return None, describe_validation_error(exc)
    problems = runnable_problems(job)
    if not allow_privileged:
        problems += security.template_problems(job)
    if problems:
        return None, "\n".join(problems)
    return job, ""


def runnable_problems(job: ParameterServerJob) -> list[str]:
    """What the operator needs beyond the model's rules."""
    problems = []
    name = job.metadata.name
    if not _DNS_1035.match(name):
        problems.append(
            f"metadata.name: {name!r} must start with a letter (it names the job's headless Service)"
        )
    longest = names.longest_pod_name(name, job.spec.servers.replicas, job.spec.workers.replicas)
    if len(longest) > names.MAX_HOSTNAME:
        problems.append(
            f"metadata.name: {name!r} is too long: pod {longest!r} would have {len(longest)} characters, "
            f"more than a hostname's {names.MAX_HOSTNAME}"
        )
    if not job.spec.workers.command:
        problems.append(
            "spec.workers.command: is empty; a worker pod needs the training program to run "
            "(e.g. [python, -m, dynaps.apps.quickstart])"
        )
    problems += _memory_growth_problems(job)
    return problems


def _memory_growth_problems(job: ParameterServerJob) -> list[str]:
    """With ``runPolicy.oomMemoryGrowth``, the roles' memory must be quantities it can multiply."""
    if job.spec.run_policy.oom_memory_growth is None:
        return []
    problems = []
    for role, key in ((Role.SERVER, "servers"), (Role.WORKER, "workers")):
        where = f"spec.{key}.resources" if _role_spec(job, role).resources else f"spec.{key}.template"
        try:
            memory_growth.memory_sizes(role_resources(job, role))
        except quantity.QuantityError as exc:
            problems.append(f"{where}: memory: {exc} (runPolicy.oomMemoryGrowth multiplies it)")
    return problems


def _role_spec(job: ParameterServerJob, role: Role) -> RoleSpec:
    return job.spec.servers if role is Role.SERVER else job.spec.workers


def parse_status(body: dict[str, Any]) -> JobStatus:
    """The stored status; one this operator cannot read counts as empty (it is rewritten)."""
    try:
        return JobStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return JobStatus()
