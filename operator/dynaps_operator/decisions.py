"""The planner's vocabulary: what it observes, what it remembers, what it decides.

Separate from the decisions themselves (:mod:`dynaps_operator.planner` and
:mod:`dynaps_operator.lifecycle`) so both can share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dynaps.contract import ConditionReason, ConditionType, JobStatus, ParameterServerJob
from dynaps_operator.builders import JobRef
from dynaps_operator.coordinator_view import CoordinatorView
from dynaps_operator.names import Role
from dynaps_operator.podstate import PodView
from dynaps_operator.status import set_condition

R = ConditionReason
C = ConditionType
RETRY_SECONDS = 1.0  # how soon to look again while pods terminate or start


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Deletion:
    name: str
    uid: str


@dataclass(frozen=True)
class Holdup:
    """Why the job (or part of it) does not start."""

    reason: str
    message: str


@dataclass(frozen=True)
class Memory:
    """What the operator remembers about a job between reconciles (lost on restart, which at
    worst counts one replaced pod twice or repeats a drain request)."""

    accounted: frozenset[str] = frozenset()  # pods whose loss was counted; awaiting their replacement
    drains: tuple[tuple[str, datetime], ...] = ()  # pods asked to drain, and when
    last_coordinator: CoordinatorView | None = None  # the latest /status seen
    checkpoint_unsupported: bool = False  # the runtime answered 404 to POST /checkpoint


@dataclass(frozen=True)
class Observed:
    ref: JobRef
    generation: int
    deleting: bool
    job: ParameterServerJob | None  # None when the spec is invalid
    invalid: str  # why the spec is invalid, naming the field ("" when valid)
    status: JobStatus
    pods: tuple[PodView, ...]
    coordinator: CoordinatorView | None  # None when the coordinator is not running or not reachable
    memory: Memory
    now: datetime
    poll_seconds: float = 2.0
    # why no pod may be created (None: nothing stops it): a child of the job's name owned by
    # something else, e.g. a leftover of a deleted job of the same name (``SecretConflict``,
    # ``NameConflict``), or an object its templates name that the namespace did not mark for
    # jobs (``ReferenceNotAllowed``); see guards.py
    held_back: Holdup | None = None


@dataclass
class Plan:
    status: JobStatus
    memory: Memory
    create: list[tuple[Role, int]] = field(default_factory=list)
    delete: list[Deletion] = field(default_factory=list)
    drain: list[str] = field(default_factory=list)
    scale: tuple[int, int] | None = None  # (servers, workers) to POST /scale
    checkpoint: bool = False  # POST /checkpoint
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False  # ttlSecondsAfterFinished passed
    restore_from: str | None = None  # for the ConfigMap
    requeue_after: float | None = None
    invalid: str = ""  # the permanent error to raise after the status is written

    def later(self, seconds: float) -> None:
        seconds = max(seconds, 0.05)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def update(self, **changes: Any) -> None:
        self.status = self.status.model_copy(update=changes)

    def condition(self, kind: ConditionType, value: bool, reason: str, message: str, now: datetime) -> None:
        self.update(conditions=set_condition(list(self.status.conditions), kind, value, reason, message, now))

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))


def desired_count(job: ParameterServerJob, role: Role, status: JobStatus | None = None) -> int:
    """The pods of ``role`` the job wants. With ``spec.stages`` the coordinator applies each
    stage's worker count (fewer at once, more once the leavers are gone): the workers follow
    the count it last reported, kept in ``status`` (the first stage's before it reported)."""
    if role is Role.COORDINATOR:
        return 1
    if role is Role.SERVER:
        return job.spec.servers.replicas
    if not job.spec.stages:
        return job.spec.workers.replicas
    if status is not None and status.stage is not None and status.workers.desired > 0:
        return status.workers.desired
    return job.spec.stages[0].workers


def staged_workers(job: ParameterServerJob, coordinator: CoordinatorView | None, status: JobStatus) -> int:
    """A staged job's worker count this pass: the coordinator's, when it says."""
    if coordinator is not None and coordinator.stage is not None and coordinator.workers_desired is not None:
        return coordinator.workers_desired
    return desired_count(job, Role.WORKER, status)


def owned_pods(o: Observed) -> list[PodView]:
    return [pod for pod in o.pods if pod.owner_uid == o.ref.uid]


def count(p: Plan, counter: str, reason: str, message: str, warning: bool = False) -> None:
    p.update(**{counter: getattr(p.status, counter) + 1})
    p.event(reason, message, warning=warning or counter == "restarts")


def names_of(pods: list[PodView]) -> str:
    return ", ".join(pod.name for pod in pods)
