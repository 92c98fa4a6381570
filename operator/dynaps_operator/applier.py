"""Carrying out a plan: what the planner decided for a job, written to the API server.

The controller (:mod:`dynaps_operator.reconciler`) reads a job afresh and asks
:func:`~dynaps_operator.planner.plan` what to do; :meth:`PlanApplier.apply` does it: posts the
plan's Events, deletes pods, creates the children pods need before they start (the job's Secret,
NetworkPolicy, ConfigMap, the gang scheduler's PodGroup, the Service), creates pods, asks the
coordinator to scale, drain or checkpoint, writes the status, and deletes a job whose
``ttlSecondsAfterFinished`` passed.

Per job it remembers what it last wrote (the ConfigMap's data, the PodGroup's spec) so an
unchanged child is not written again on every pass.  What must hold before it creates pods
(the job's Secret and the coordinator's token read from it, children of the job's name that
are the job's, templates that name only what the namespace marked for jobs) is
:mod:`dynaps_operator.guards`; a child of the job's name found made already is changed only
when it is the job's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from dynaps.contract import JobStatus, ParameterServerJob
from dynaps_operator import builders, gang, kube, names
from dynaps_operator.builders import JobRef
from dynaps_operator.coordinator_client import CoordinatorClient
from dynaps_operator.errors import (
    ChildNotReadyError,
    ConflictError,
    CoordinatorError,
    CoordinatorUnsupportedError,
    NotFoundError,
)
from dynaps_operator.events import EventRecorder
from dynaps_operator.guards import ChildGuards
from dynaps_operator.kube import KubeClient
from dynaps_operator.metrics import Metrics
from dynaps_operator.names import Role
from dynaps_operator.planner import Plan
from dynaps_operator.pod_builder import build_pod
from dynaps_operator.podstate import PodView
from dynaps_operator.settings import OperatorSettings
from dynaps_operator.status import merge_patch

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
JsonDict = dict[str, Any]
MISSING_KIND = "-"  # pod_groups' mark of a job whose PodGroup kind the API server does not serve


class PlanApplier:
    def __init__(
        self,
        api: KubeClient,
        coordinators: CoordinatorClient,
        events: EventRecorder,
        metrics: Metrics,
        settings: OperatorSettings,
        checkpoint_unsupported: Callable[[Key], None],
    ) -> None:
        self.api = api
        self.coordinators = coordinators
        self.events = events
        self.metrics = metrics
        self.settings = settings
        # called when a job's runtime answers that it has no POST /checkpoint (the planner's memory)
        self.checkpoint_unsupported = checkpoint_unsupported
        self.configmaps: dict[Key, str] = {}  # the RuntimeConfig last written per job
        self.pod_groups: dict[Key, str] = {}  # the PodGroup spec last written per job
        # what must hold before pods are created (the job's Secret and token, children of
        # its name, what its templates name); the controller asks it too
        self.guards = ChildGuards(api, settings.allow_privileged_jobs)

    def forget(self, key: Key) -> None:
        self.configmaps.pop(key, None)
        self.pod_groups.pop(key, None)
        self.guards.forget(key)

    async def apply(
        self,
        key: Key,
        ref: JobRef,
        job: ParameterServerJob | None,
        body: dict[str, Any],
        pods: tuple[PodView, ...],
        p: Plan,
    ) -> None:
        not_ready: list[str] = []
        # The Events first: whoever sees a pod go or a condition appear finds the Event that
        # explains it (a retried pass may post one twice; one posted after the fact was seen
        # missing by readers of the status)
        for event in p.events:
            self.metrics.events.labels(type=event.type).inc()
            await self.events.post(ref, event.type, event.reason, event.message)
        if p.delete:
            deleted = await asyncio.gather(
                *(self.api.delete(kube.path("pods", ref.namespace, d.name), uid=d.uid) for d in p.delete)
            )
            self.metrics.pods_deleted.inc(sum(deleted))
        if job is not None and p.create:
            await self.guards.check_references(key, ref, job)
            await self.guards.ensure_secret(key, ref)
            await self._apply_network_policy(key, ref)
        # While a child of the job's name is someone else's, nothing of its name is written (a
        # running job's ConfigMap or PodGroup would answer 409 and end every pass here)
        kept = key not in self.guards.conflicts
        if job is not None and kept and (p.create or key in self.configmaps):
            await self._apply_configmap(key, job, ref, p.restore_from)
        if job is not None and kept and (p.create or key in self.pod_groups):
            # Before the pods: a gang scheduler holds a pod whose PodGroup it cannot find.
            await self._apply_pod_group(key, job, ref)
        if job is not None and p.create:
            not_ready += await self._create_pods(key, job, ref, p.create, p.status)
        await self._coordinator_actions(key, ref, pods, p)
        await self._write_status(ref, body, p)
        if p.delete_job:
            log.info("%s/%s: ttlSecondsAfterFinished passed: deleting the job", ref.namespace, ref.name)
            await self.api.delete(
                kube.path(names.JOB_PLURAL, ref.namespace, ref.name, group=names.JOB_API_VERSION),
                uid=ref.uid,
                propagation="Background",
            )
        if not_ready:
            raise ChildNotReadyError("; ".join(not_ready), delay=1.0)

    async def _apply_network_policy(self, key: Key, ref: JobRef) -> None:
        policy = builders.build_network_policy(
            ref, self.settings.pod_namespace, self.settings.operator_labels
        )
        policies = kube.path("networkpolicies", ref.namespace, group="networking.k8s.io/v1")
        try:
            await self.api.create(policies, policy)
        except ConflictError:  # made on an earlier pass (it never changes), or not the job's
            name = names.network_policy_name(ref.name)
            await self.guards.claim(key, ref, f"{policies}/{name}", f"NetworkPolicy {name}")

    async def _apply_configmap(
        self, key: Key, job: ParameterServerJob, ref: JobRef, restore_from: str | None
    ) -> None:
        configmap = builders.build_configmap(job, ref, restore_from)
        data = configmap["data"][names.CONFIG_KEY]
        if self.configmaps.get(key) == data:
            return
        try:
            await self.api.create(kube.path("configmaps", ref.namespace), configmap)
        except ConflictError:
            name = names.configmap_name(ref.name)
            path = kube.path("configmaps", ref.namespace, name)
            metadata = await self.guards.claim(key, ref, path, f"ConfigMap {name}")
            # resourceVersion: the one found the job's, not one made in between
            await self.api.patch(path, {"metadata": _version(metadata), "data": configmap["data"]})
        self.configmaps[key] = data

    async def _apply_pod_group(self, key: Key, job: ParameterServerJob, ref: JobRef) -> None:
        """The gang scheduler's PodGroup: created with the first pods, patched when its spec
        changes (``minMember`` follows a scale); none without ``schedulingPolicy.scheduler``."""
        group = builders.build_pod_group(job, ref)
        api = gang.pod_group_api(job)
        if group is None or api is None:
            return
        spec = json.dumps(group["spec"], sort_keys=True)
        if self.pod_groups.get(key) == spec:
            return
        try:
            await self.api.create(kube.path(gang.POD_GROUP_PLURAL, ref.namespace, group=api), group)
        except ConflictError:
            name = names.pod_group_name(ref.name)
            path = kube.path(gang.POD_GROUP_PLURAL, ref.namespace, name, group=api)
            metadata = await self.guards.claim(key, ref, path, f"{gang.POD_GROUP_KIND} {name}")
            await self.api.patch(path, {"metadata": _version(metadata), "spec": group["spec"]})
        except NotFoundError as exc:
            # The API server does not serve the kind: the scheduler (its CRD) is not installed.
            message = (
                f"this cluster serves no {gang.POD_GROUP_KIND} {api} (is the scheduler that "
                "runPolicy.schedulingPolicy.scheduler names installed?): no pod is created until it does"
            )
            if self.pod_groups.get(key) != MISSING_KIND:  # one Warning Event, not one per retry
                self.pod_groups[key] = MISSING_KIND
                await self.events.post(ref, "Warning", "PodGroupUnavailable", message)
            raise ChildNotReadyError(message, delay=10.0) from exc
        self.pod_groups[key] = spec

    async def _create_pods(
        self,
        key: Key,
        job: ParameterServerJob,
        ref: JobRef,
        wanted: list[tuple[Role, int]],
        status: JobStatus,
    ) -> list[str]:
        try:
            await self.api.create(kube.path("services", ref.namespace), builders.build_service(ref))
        except ConflictError:  # made on an earlier pass, or not the job's (its pods' DNS)
            name = names.service_name(ref.name)
            await self.guards.claim(key, ref, kube.path("services", ref.namespace, name), f"Service {name}")
        level = self.settings.job_log_level.upper()
        # runPolicy.oomMemoryGrowth: pods get their role's grown memory, as the status records it.
        growths = {Role.SERVER: status.servers.memory_growths, Role.WORKER: status.workers.memory_growths}
        allow = self.settings.allow_privileged_jobs
        pods = [
            build_pod(job, ref, role, index, level, growths.get(role, 0), allow) for role, index in wanted
        ]
        # The coordinator first: nodes that start before it would only wait for it.
        first = [pod for pod, (role, _) in zip(pods, wanted, strict=True) if role is Role.COORDINATOR]
        rest = [pod for pod, (role, _) in zip(pods, wanted, strict=True) if role is not Role.COORDINATOR]
        not_ready: list[str] = []
        for batch in (first, rest):
            results = await asyncio.gather(*(self._create_pod(ref, pod) for pod in batch))
            not_ready += [problem for problem in results if problem]
        return not_ready

    async def _create_pod(self, ref: JobRef, pod: dict[str, Any]) -> str:
        try:
            await self.api.create(kube.path("pods", ref.namespace), pod)
        except ConflictError:
            return f"pod {pod['metadata']['name']} still exists"
        self.metrics.pods_created.labels(role=pod["metadata"]["labels"][names.LABEL_ROLE]).inc()
        return ""

    async def _coordinator_actions(self, key: Key, ref: JobRef, pods: tuple[PodView, ...], p: Plan) -> None:
        requests: list[tuple[str, dict[str, Any]]] = [("drain", {"node": name}) for name in p.drain]
        if p.scale is not None:
            requests.insert(0, ("scale", {"servers": p.scale[0], "workers": p.scale[1]}))
        if p.checkpoint:
            requests.append(("checkpoint", {}))
        pod = coordinator_pod(ref, pods)
        for action, request in requests:
            token = await self.guards.token(key, ref) if pod is not None else None
            if pod is None or token is None:
                raise ChildNotReadyError(f"no running coordinator to ask for /{action}", delay=1.0)
            try:
                await self.coordinators.act(pod.ip, action, request, token)
                self.metrics.coordinator_requests.labels(endpoint=action, result="ok").inc()
            except CoordinatorUnsupportedError as exc:
                self.metrics.coordinator_requests.labels(endpoint=action, result="unsupported").inc()
                if action == "checkpoint":
                    self.checkpoint_unsupported(key)
                p.event(
                    "RuntimeUnsupported",
                    f"the job's runtime does not support POST /{action} ({exc}); update the runtime image",
                    warning=True,
                )
            except CoordinatorError as exc:
                self.metrics.coordinator_requests.labels(endpoint=action, result="error").inc()
                raise ChildNotReadyError(f"coordinator request /{action} failed: {exc}", delay=1.0) from exc

    async def _write_status(self, ref: JobRef, body: dict[str, Any], p: Plan) -> None:
        old = body.get("status") or {}
        new = p.status.to_wire()
        if new == old:
            return
        patch = {
            # A stale read must not overwrite a newer status: resourceVersion is a precondition.
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": merge_patch(old, new),
        }
        path = kube.path(
            names.JOB_PLURAL, ref.namespace, ref.name, group=names.JOB_API_VERSION, subresource="status"
        )
        await self.api.patch(path, patch)
        losses = {
            "failure": p.status.restarts - int(old.get("restarts") or 0),
            "preemption": p.status.preemptions - int(old.get("preemptions") or 0),
        }
        for kind, count in losses.items():
            if count > 0:
                self.metrics.pod_losses.labels(kind=kind).inc(count)


def _version(metadata: JsonDict) -> JsonDict:
    """A patch's precondition: the object is still the one read (409 otherwise)."""
    return {"resourceVersion": metadata["resourceVersion"]}


def coordinator_pod(ref: JobRef, pods: tuple[PodView, ...]) -> PodView | None:
    """The job's own coordinator pod, running and reachable; None when there is none to ask."""
    return next(
        (
            pod
            for pod in pods
            if pod.role is Role.COORDINATOR
            and pod.owner_uid == ref.uid
            and pod.alive
            and pod.ip
            and pod.phase == "Running"
        ),
        None,
    )
