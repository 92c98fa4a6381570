"""Builders of observed state for the operator's unit tests (no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dynaps.contract import JobStatus, ParameterServerJob
from dynaps_operator.builders import JobRef
from dynaps_operator.coordinator_view import CoordinatorView
from dynaps_operator.names import Role, pod_name
from dynaps_operator.planner import Memory, Observed, Plan, plan
from dynaps_operator.podstate import PodView, StartProblem

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
REF = JobRef("mf", "ns", "uid-1")


def job(**spec: Any) -> ParameterServerJob:
    doc: dict[str, Any] = {
        "metadata": {"name": "mf", "namespace": "ns"},
        "spec": {
            "tables": [{"name": "W", "numKeys": 100, "dim": 4}],
            "servers": {"replicas": 1},
            "workers": {"replicas": 2, "command": ["python", "train.py"]},
        },
    }
    doc["spec"].update(spec)
    return ParameterServerJob.model_validate(doc)


def pod(
    role: Role,
    index: int = 0,
    *,
    phase: str = "Running",
    ready: bool = True,
    exit_code: int | None = None,
    reason: str = "",
    terminating: bool = False,
    disrupted: bool = False,
    owner: str = REF.uid,
    finished: datetime | None = None,
    message: str = "",
    created: datetime | None = None,
    problem: StartProblem | None = None,
    conditions: frozenset[str] = frozenset(),
    running_since: datetime | None = None,
) -> PodView:
    if exit_code is not None and phase == "Running":
        phase = "Succeeded" if exit_code == 0 else "Failed"
    return PodView(
        name=pod_name(REF.name, role, index),
        uid=f"{role.value}-{index}-uid",
        role=role,
        index=index,
        owner_uid=owner,
        phase=phase,
        ready=ready and exit_code is None,
        terminating=terminating,
        ip="10.0.0.1",
        exit_code=exit_code,
        exit_reason=reason,
        exit_message=message,
        finished_at=finished
        if finished is not None
        else (T0 - timedelta(minutes=1) if exit_code is not None else None),
        disrupted=disrupted,
        created_at=created or T0,
        start_problem=problem,
        conditions=conditions,
        running_since=running_since,
    )


def full_set(servers: int = 1, workers: int = 2, **kw: Any) -> list[PodView]:
    pods = [pod(Role.COORDINATOR, **kw)]
    pods += [pod(Role.SERVER, i, **kw) for i in range(servers)]
    pods += [pod(Role.WORKER, i, **kw) for i in range(workers)]
    return pods


def running_coordinator(**kw: Any) -> CoordinatorView:
    values: dict[str, Any] = {"phase": "running", "servers_desired": 1, "workers_desired": 2, "epoch": 1}
    values.update(kw)
    return CoordinatorView(**values)


def observed(
    the_job: ParameterServerJob | None = None,
    *,
    pods: list[PodView] | None = None,
    status: JobStatus | None = None,
    coordinator: CoordinatorView | None = None,
    memory: Memory | None = None,
    now: datetime = T0,
    invalid: str = "",
    generation: int = 1,
    deleting: bool = False,
) -> Observed:
    return Observed(
        ref=REF,
        generation=generation,
        deleting=deleting,
        job=None if invalid else (the_job or job()),
        invalid=invalid,
        status=status or JobStatus(),
        pods=tuple(pods or ()),
        coordinator=coordinator,
        memory=memory or Memory(),
        now=now,
    )


def started(the_job: ParameterServerJob | None = None) -> Plan:
    """The plan of a job whose pods were all created and run, the coordinator reporting running."""
    first = plan(observed(the_job))
    return plan(observed(the_job, pods=full_set(), status=first.status, coordinator=running_coordinator()))
