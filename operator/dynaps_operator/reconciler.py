"""The controller: a work queue of jobs, reconciled by a few workers, level-triggered.

Triggers only say *which* job to look at: a job's own watch events, events of its pods (kopf
watches both, with a server-side label selector on pods), a requeue the last pass asked for
(pods starting, a running coordinator to poll), and a resync of every known job every
``resync_seconds`` as a safety net.  A reconcile then reads the current state afresh, asks the
planner what to do, and does it (:meth:`Controller.reconcile`).

Why not kopf timers or daemons: both put a finalizer on every job, so deleting a job would hang
whenever the operator is not running (e.g. after ``helm uninstall``); and per-object timers do
not coalesce the bursts of pod events a starting job produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from dynaps.contract import API_GROUP, API_VERSION, TERMINAL_PHASES, JobStatus, ParameterServerJob, secret
from dynaps_operator import builders, gang, kube, names, security
from dynaps_operator.builders import JobRef
from dynaps_operator.coordinator_client import CoordinatorClient
from dynaps_operator.coordinator_view import CoordinatorView, parse_status
from dynaps_operator.errors import (
    ChildNotReadyError,
    ConflictError,
    CoordinatorError,
    CoordinatorUnsupportedError,
    InvalidSpecError,
    KubeApiError,
    NamespaceTerminatingError,
    NotFoundError,
)
from dynaps_operator.events import EventRecorder
from dynaps_operator.kube import KubeClient
from dynaps_operator.metrics import Metrics
from dynaps_operator.names import Role
from dynaps_operator.planner import Memory, Observed, Plan, plan
from dynaps_operator.podstate import PodView, pod_view
from dynaps_operator.settings import OperatorSettings
from dynaps_operator.sockets import OpenSockets
from dynaps_operator.status import merge_patch
from dynaps_operator.validation import parse_job
from dynaps_operator.validation import parse_status as parse_job_status
from dynaps_operator.workqueue import QueueClosedError, WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
GROUP = f"{API_GROUP}/{API_VERSION}"
MAX_BACKOFF_SECONDS = 30.0
POD_EVENT_DELAY = 0.05  # coalesce the burst of events a starting pod produces
MISSING_KIND = "-"  # pod_groups' mark of a job whose PodGroup kind the API server does not serve


def _conflict_message(ref: JobRef) -> str:
    return (
        f"Secret {names.secret_name(ref.name)} is not this job's (another owner, or not a usable "
        "secret: a leftover of a deleted job of the same name?); no pod is created until it is gone"
    )


def now() -> datetime:
    # Whole seconds, as Kubernetes writes times: a status read back compares equal to the one written.
    return datetime.now(UTC).replace(microsecond=0)


class Controller:
    def __init__(self, settings: OperatorSettings, api: KubeClient | None = None) -> None:
        self.settings = settings
        self.sockets = OpenSockets()  # every outgoing connection, kopf's included (see runner)
        self.api = api or KubeClient(timeout=settings.api_timeout_seconds, sockets=self.sockets)
        self.coordinators = CoordinatorClient(
            names.COORDINATOR_HTTP_PORT, settings.coordinator_timeout_seconds, self.sockets
        )
        self.metrics = Metrics()
        self.events = EventRecorder(self.api, settings.reporting_instance)
        self.queue: WorkQueue[Key] = WorkQueue()
        self.metrics.track_queue(lambda: len(self.queue))
        self.known: set[Key] = set()
        self.memory: dict[Key, Memory] = {}
        self.configmaps: dict[Key, str] = {}  # the RuntimeConfig last written per job
        self.pod_groups: dict[Key, str] = {}  # the PodGroup spec last written per job
        # per job, (its uid, the coordinator's HTTP token from its Secret); never logged
        self.tokens: dict[Key, tuple[str, str]] = {}
        self.failures: dict[Key, int] = {}  # consecutive failed reconciles, for back-off
        self.last_tick = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.last_tick = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"dynaps-reconcile-{i}")
            for i in range(self.settings.workers)
        ]
        self._tasks.append(asyncio.create_task(self._resync(), name="dynaps-resync"))

    async def stop(self) -> None:
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.coordinators.close()
        await self.api.close()

    def health(self) -> str:
        """ "" when healthy, else the problem (for /healthz)."""
        dead = [t.get_name() for t in self._tasks if t.done()]
        if not self._tasks:
            return "the controller is not running"
        if dead:
            return "controller tasks ended: " + ", ".join(dead)
        stale = time.monotonic() - self.last_tick
        if stale > 3 * self.settings.resync_seconds + 10:
            return f"the resync loop has not run for {stale:.0f} s"
        return ""

    # ------------------------------------------------------------------ triggers

    def job_event(self, event_type: str | None, namespace: str, name: str) -> None:
        key = (namespace, name)
        if event_type == "DELETED":
            self._forget(key)
            return
        self.known.add(key)
        self.queue.add(key)

    def pod_event(self, namespace: str, job: str) -> None:
        self.queue.add((namespace, job), POD_EVENT_DELAY)

    def _forget(self, key: Key) -> None:
        self.known.discard(key)
        self.memory.pop(key, None)
        self.configmaps.pop(key, None)
        self.pod_groups.pop(key, None)
        self.tokens.pop(key, None)
        self.failures.pop(key, None)
        self.queue.forget(key)
        self.metrics.job_phase(key, None)
        self.metrics.job_backlog(key, None)

    async def _resync(self) -> None:
        while True:
            self.last_tick = time.monotonic()
            for key in list(self.known):
                self.queue.add(key)
            await asyncio.sleep(self.settings.resync_seconds)

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueClosedError:
                return
            started = time.perf_counter()
            try:
                again = await self.reconcile(key)
                result = "ok"
                self.failures.pop(key, None)
            except InvalidSpecError as exc:
                log.info("%s/%s has an invalid spec: %s", *key, exc)
                again, result = None, "invalid"
            except NamespaceTerminatingError:
                # The namespace controller deletes the job and its pods in no particular order:
                # pods it removed first must not be recreated. The job's deletion ends this.
                log.debug("%s/%s: its namespace is being deleted", *key)
                again, result = None, "namespace-terminating"
            except kopf.TemporaryError as exc:
                log.debug("%s/%s: %s (retry in %s s)", *key, exc, exc.delay)
                again, result = float(exc.delay or 1.0), "retry"
            except ConflictError:
                again, result = 0.1, "conflict"  # the job changed while we looked: look again
            except Exception as exc:
                failures = self.failures.get(key, 0) + 1
                self.failures[key] = failures
                again, result = min(0.5 * 2 ** (failures - 1), MAX_BACKOFF_SECONDS), "error"
                if isinstance(exc, KubeApiError):
                    log.warning("%s/%s: %s (retry in %.1f s)", *key, exc, again)
                else:
                    log.exception("%s/%s: reconcile failed (retry in %.1f s)", *key, again)
            finally:
                self.queue.done(key)
            self.metrics.reconciles.labels(result=result).inc()
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
            if again is not None and key in self.known:
                self.queue.add(key, again)

    # ------------------------------------------------------------------ one reconcile

    async def reconcile(self, key: Key) -> float | None:
        namespace, name = key
        try:
            body = await self.api.get(kube.path(names.JOB_PLURAL, namespace, name, group=GROUP))
        except NotFoundError:
            self._forget(key)
            return None
        self.known.add(key)
        meta = body["metadata"]
        ref = JobRef(name, namespace, meta["uid"])
        job, invalid = parse_job(body, self.settings.allow_privileged_jobs)
        pods_raw = await self.api.list(kube.path("pods", namespace), labelSelector=names.job_selector(name))
        pods = tuple(view for view in map(pod_view, pods_raw) if view is not None)
        memory = self.memory.get(key, Memory())
        coordinator = await self._coordinator_status(key, ref, pods)
        secret_conflict = await self._secret_conflict(key, ref) if job is not None else ""
        observed = Observed(
            ref=ref,
            generation=int(meta.get("generation") or 0),
            deleting=meta.get("deletionTimestamp") is not None,
            job=job,
            invalid=invalid,
            status=parse_job_status(body),
            pods=pods,
            coordinator=coordinator,
            memory=memory,
            now=now(),
            poll_seconds=self.settings.poll_seconds,
            secret_conflict=secret_conflict,
        )
        decided = plan(observed)
        self.memory[key] = decided.memory
        await self._carry_out(key, ref, job, body, pods, decided)
        self.metrics.job_phase(key, str(decided.status.phase))
        if decided.status.phase in TERMINAL_PHASES:
            self.metrics.job_backlog(key, None)
        elif coordinator is not None:
            self.metrics.job_backlog(key, coordinator.data_shards_free)
        if decided.invalid:
            raise InvalidSpecError(decided.invalid)
        return decided.requeue_after

    async def _coordinator_status(
        self, key: Key, ref: JobRef, pods: tuple[PodView, ...]
    ) -> CoordinatorView | None:
        pod = _coordinator_pod(ref, pods)
        if pod is None:
            return None
        token = await self._token(key, ref)
        if token is None:
            log.warning("%s/%s: the job's Secret is missing: its coordinator cannot be asked", *key)
            return None
        try:
            doc = await self.coordinators.status(pod.ip, token)
        except CoordinatorError as exc:
            self.metrics.coordinator_requests.labels(endpoint="status", result="error").inc()
            log.debug("%s/%s: coordinator unreachable: %s", ref.namespace, ref.name, exc)
            return None
        self.metrics.coordinator_requests.labels(endpoint="status", result="ok").inc()
        return parse_status(doc)

    async def _carry_out(
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
            await self._ensure_secret(key, ref)
            await self._apply_network_policy(ref)
        if job is not None and (p.create or key in self.configmaps):
            await self._apply_configmap(key, job, ref, p.restore_from)
        if job is not None and (p.create or key in self.pod_groups):
            # Before the pods: a gang scheduler holds a pod whose PodGroup it cannot find.
            await self._apply_pod_group(key, job, ref)
        if job is not None and p.create:
            not_ready += await self._create_pods(job, ref, p.create, p.status)
        await self._coordinator_actions(key, ref, pods, p)
        await self._write_status(ref, body, p)
        if p.delete_job:
            log.info("%s/%s: ttlSecondsAfterFinished passed: deleting the job", ref.namespace, ref.name)
            await self.api.delete(
                kube.path(names.JOB_PLURAL, ref.namespace, ref.name, group=GROUP),
                uid=ref.uid,
                propagation="Background",
            )
        if not_ready:
            raise ChildNotReadyError("; ".join(not_ready), delay=1.0)

    async def _token(self, key: Key, ref: JobRef) -> str | None:
        """The coordinator's HTTP token, read from the job's Secret once per job; None when the
        Secret is missing. A Secret owned by something else is never used."""
        if await self._secret_conflict(key, ref):
            raise ChildNotReadyError(_conflict_message(ref), delay=2.0)
        cached = self.tokens.get(key)
        return cached[1] if cached is not None else None

    async def _secret_conflict(self, key: Key, ref: JobRef) -> str:
        """Why the Secret of the job's name cannot be the job's ("" when it is, or is missing);
        its token is remembered once read."""
        cached = self.tokens.get(key)
        if cached is not None and cached[0] == ref.uid:
            return ""
        try:
            body = await self.api.get(kube.path("secrets", ref.namespace, names.secret_name(ref.name)))
        except NotFoundError:
            return ""
        token = security.token_of(body, ref.uid)
        if token is None:
            return _conflict_message(ref)
        self.tokens[key] = (ref.uid, token)
        return ""

    async def _ensure_secret(self, key: Key, ref: JobRef) -> None:
        """The job's Secret exists before any of its pods (they mount it)."""
        if await self._token(key, ref) is not None:
            return
        value = secret.new_secret()
        try:
            await self.api.create(kube.path("secrets", ref.namespace), builders.build_secret(ref, value))
        except ConflictError as exc:  # made meanwhile: read it on the next pass
            raise ChildNotReadyError(
                f"Secret {names.secret_name(ref.name)} appeared meanwhile", delay=0.2
            ) from exc
        self.tokens[key] = (ref.uid, secret.http_token(value))

    async def _apply_network_policy(self, ref: JobRef) -> None:
        policy = builders.build_network_policy(
            ref, self.settings.pod_namespace, self.settings.operator_labels
        )
        with contextlib.suppress(ConflictError):  # made on an earlier pass; it never changes
            await self.api.create(
                kube.path("networkpolicies", ref.namespace, group="networking.k8s.io/v1"), policy
            )

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
            await self.api.patch(
                kube.path("configmaps", ref.namespace, names.configmap_name(ref.name)),
                {"data": configmap["data"]},
            )
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
            await self.api.patch(path, {"spec": group["spec"]})
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
        self, job: ParameterServerJob, ref: JobRef, wanted: list[tuple[Role, int]], status: JobStatus
    ) -> list[str]:
        with contextlib.suppress(ConflictError):
            await self.api.create(kube.path("services", ref.namespace), builders.build_service(ref))
        level = self.settings.job_log_level.upper()
        # runPolicy.oomMemoryGrowth: pods get their role's grown memory, as the status records it.
        growths = {Role.SERVER: status.servers.memory_growths, Role.WORKER: status.workers.memory_growths}
        allow = self.settings.allow_privileged_jobs
        pods = [
            builders.build_pod(job, ref, role, index, level, growths.get(role, 0), allow)
            for role, index in wanted
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
        pod = _coordinator_pod(ref, pods)
        for action, request in requests:
            token = await self._token(key, ref) if pod is not None else None
            if pod is None or token is None:
                raise ChildNotReadyError(f"no running coordinator to ask for /{action}", delay=1.0)
            try:
                await self.coordinators.act(pod.ip, action, request, token)
                self.metrics.coordinator_requests.labels(endpoint=action, result="ok").inc()
            except CoordinatorUnsupportedError as exc:
                self.metrics.coordinator_requests.labels(endpoint=action, result="unsupported").inc()
                if action == "checkpoint":
                    self.memory[key] = replace(self.memory.get(key, Memory()), checkpoint_unsupported=True)
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
        path = kube.path(names.JOB_PLURAL, ref.namespace, ref.name, group=GROUP, subresource="status")
        await self.api.patch(path, patch)
        losses = {
            "failure": p.status.restarts - int(old.get("restarts") or 0),
            "preemption": p.status.preemptions - int(old.get("preemptions") or 0),
        }
        for kind, count in losses.items():
            if count > 0:
                self.metrics.pod_losses.labels(kind=kind).inc(count)


def _coordinator_pod(ref: JobRef, pods: tuple[PodView, ...]) -> PodView | None:
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
