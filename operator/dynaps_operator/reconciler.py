"""The controller: a work queue of jobs, reconciled by a few workers, level-triggered.

Triggers only say *which* job to look at: a job's own watch events, events of its pods (kopf
watches both, with a server-side label selector on pods), a requeue the last pass asked for
(pods starting, a running coordinator to poll), and a resync of every known job every
``resync_seconds`` as a safety net.  A reconcile then reads the current state afresh, asks the
planner what to do (:meth:`Controller.reconcile`), and has :class:`~dynaps_operator.applier.PlanApplier`
do it.

Why not kopf timers or daemons: both put a finalizer on every job, so deleting a job would hang
whenever the operator is not running (e.g. after ``helm uninstall``); and per-object timers do
not coalesce the bursts of pod events a starting job produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

import kopf

from dynaps.contract import TERMINAL_PHASES
from dynaps_operator import kube, names
from dynaps_operator.applier import Key, PlanApplier, coordinator_pod
from dynaps_operator.builders import JobRef
from dynaps_operator.coordinator_client import CoordinatorClient
from dynaps_operator.coordinator_view import CoordinatorView, parse_status
from dynaps_operator.errors import (
    ConflictError,
    CoordinatorError,
    InvalidSpecError,
    KubeApiError,
    NamespaceTerminatingError,
    NotFoundError,
)
from dynaps_operator.events import EventRecorder
from dynaps_operator.kube import KubeClient
from dynaps_operator.metrics import Metrics
from dynaps_operator.planner import Memory, Observed, plan
from dynaps_operator.podstate import PodView, pod_view
from dynaps_operator.settings import OperatorSettings
from dynaps_operator.sockets import OpenSockets
from dynaps_operator.validation import parse_job
from dynaps_operator.validation import parse_status as parse_job_status
from dynaps_operator.workqueue import QueueClosedError, WorkQueue

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
POD_EVENT_DELAY = 0.05  # coalesce the burst of events a starting pod produces


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
        self.applier = PlanApplier(
            self.api, self.coordinators, self.events, self.metrics, settings, self._checkpoint_unsupported
        )
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
        self.applier.forget(key)
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
            body = await self.api.get(
                kube.path(names.JOB_PLURAL, namespace, name, group=names.JOB_API_VERSION)
            )
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
        held_back = await self.applier.guards.held_back(key, ref, job) if job is not None else None
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
            held_back=held_back,
        )
        decided = plan(observed)
        self.memory[key] = decided.memory
        await self.applier.apply(key, ref, job, body, pods, decided)
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
        pod = coordinator_pod(ref, pods)
        if pod is None:
            return None
        token = await self.applier.guards.token(key, ref)
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

    def _checkpoint_unsupported(self, key: Key) -> None:
        """The job's runtime answered that it has no POST /checkpoint: the planner asks for none again."""
        self.memory[key] = replace(self.memory.get(key, Memory()), checkpoint_unsupported=True)
