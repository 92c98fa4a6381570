"""Pods that cannot start and nodes that do not register: the reason shows, and the start
deadline fails the job (pure: no cluster)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from dynaps.contract import ConditionType, JobPhase
from dynaps_operator import starting
from dynaps_operator.coordinator_view import parse_status
from dynaps_operator.names import Role
from dynaps_operator.planner import plan
from dynaps_operator.podstate import Outcome, StartProblem, pod_view
from tests.dynaps_operator.helpers import T0, full_set, job, observed, pod, running_coordinator, started

C = ConditionType
UNSCHEDULABLE = StartProblem("Unschedulable", "pod mf-worker-1 cannot be scheduled: 0/1 nodes are available")
PULL = StartProblem("ImagePullBackOff", "pod mf-worker-1: container dynaps: ImagePullBackOff: no such image")


def raw_pod(status: dict[str, Any], name: str = "mf-worker-1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": "u",
            "creationTimestamp": "2026-01-01T12:00:00Z",
            "labels": {"dynaps.io/role": "worker", "dynaps.io/index": "1"},
        },
        "status": status,
    }


def waiting(
    reason: str, message: str, key: str = "containerStatuses", name: str = "dynaps"
) -> dict[str, Any]:
    return {
        "phase": "Pending",
        key: [{"name": name, "state": {"waiting": {"reason": reason, "message": message}}}],
    }


@pytest.mark.parametrize(
    ("status", "reason", "quoted"),
    [
        (
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity.",
                    }
                ],
            },
            "Unschedulable",
            "pod mf-worker-1 cannot be scheduled: 0/1 nodes are available: 1 node(s) didn't match",
        ),
        (
            waiting("ImagePullBackOff", 'Back-off pulling image "nope"'),
            "ImagePullBackOff",
            'pulling image "nope"',
        ),
        (
            waiting("ErrImagePull", "manifest unknown"),
            "ErrImagePull",
            "container dynaps: ErrImagePull: manifest",
        ),
        (
            waiting("CreateContainerConfigError", "configmap x not found"),
            "CreateContainerConfigError",
            "configmap x not found",
        ),
        (
            waiting("ErrImagePull", "denied", key="initContainerStatuses", name="fetch"),
            "ErrImagePull",
            "init container fetch: ErrImagePull: denied",
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {
                        "name": "fetch",
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 3, "message": "no data"}},
                    }
                ],
            },
            "InitContainerFailed",
            "pod mf-worker-1: init container fetch exited with code 3: no data",
        ),
    ],
)
def test_a_pod_that_cannot_start_says_why(status: dict[str, Any], reason: str, quoted: str) -> None:
    view = pod_view(raw_pod(status))
    assert view is not None
    assert view.start_problem is not None
    assert view.start_problem.reason == reason
    assert quoted in view.start_problem.message
    assert view.created_at == T0
    assert view.outcome is None


def test_a_pod_that_is_just_starting_has_no_problem() -> None:
    view = pod_view(raw_pod(waiting("ContainerCreating", "")))
    assert view is not None
    assert view.start_problem is None


def test_a_failed_init_container_fails_the_pod_and_its_exit_says_so() -> None:
    status = {
        "phase": "Failed",
        "initContainerStatuses": [
            {"name": "fetch", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
        ],
        "containerStatuses": [{"name": "dynaps", "state": {"waiting": {"reason": "PodInitializing"}}}],
    }
    view = pod_view(raw_pod(status))
    assert view is not None
    assert view.outcome is Outcome.FAILED
    assert view.describe_exit() == "pod mf-worker-1: init container fetch exited with code 1"


def pending_with(problem: StartProblem | None, **kw: Any) -> list[Any]:
    pods = full_set()
    pods[3] = pod(Role.WORKER, 1, phase="Pending", ready=False, problem=problem, **kw)
    return pods


def test_an_unschedulable_pod_shows_in_the_first_pass_with_one_event() -> None:
    first = plan(observed())
    p = plan(observed(pods=pending_with(UNSCHEDULABLE), status=first.status, memory=first.memory))
    running = p.status.condition(C.RUNNING)
    assert running is not None
    assert (running.status, running.reason, running.message) == (
        "False",
        "Unschedulable",
        UNSCHEDULABLE.message,
    )
    assert p.status.phase == JobPhase.PENDING
    assert p.status.message == UNSCHEDULABLE.message
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "Unschedulable")]
    again = plan(observed(pods=pending_with(UNSCHEDULABLE), status=p.status, memory=p.memory))
    assert again.status == p.status
    assert not again.events


def test_a_pod_that_does_not_start_fails_the_job_at_the_start_deadline() -> None:
    the_job = job(runPolicy={"startTimeoutSeconds": 60})
    first = plan(observed(the_job))
    pods = pending_with(PULL)
    waiting_ = plan(observed(the_job, pods=pods, status=first.status, now=T0 + timedelta(seconds=45)))
    assert waiting_.status.phase == JobPhase.PENDING
    assert waiting_.requeue_after is not None
    assert waiting_.requeue_after <= 15
    late = plan(observed(the_job, pods=pods, status=waiting_.status, now=T0 + timedelta(seconds=60)))
    assert late.status.phase == JobPhase.FAILED
    failed = late.status.condition(C.FAILED)
    assert failed is not None
    assert failed.reason == "StartTimeoutExceeded"
    assert failed.message == (
        "pod mf-worker-1 did not start within runPolicy.startTimeoutSeconds (60 s): " + PULL.message
    )
    assert {d.name for d in late.delete} == {"mf-coordinator", "mf-server-0", "mf-worker-0", "mf-worker-1"}


def test_a_pending_pod_without_a_known_problem_also_meets_the_deadline() -> None:
    the_job = job(runPolicy={"startTimeoutSeconds": 60})
    p = plan(
        observed(
            the_job,
            pods=pending_with(None),
            status=plan(observed(the_job)).status,
            now=T0 + timedelta(seconds=61),
        )
    )
    failed = p.status.condition(C.FAILED)
    assert failed is not None
    assert failed.message.endswith(": pod mf-worker-1 is still Pending")


def test_start_timeout_zero_waits_forever() -> None:
    the_job = job(runPolicy={"startTimeoutSeconds": 0})
    first = plan(observed(the_job))
    p = plan(observed(the_job, pods=pending_with(PULL), status=first.status, now=T0 + timedelta(days=3)))
    assert p.status.phase == JobPhase.PENDING
    assert p.status.message == PULL.message


def running_of(p: Any) -> tuple[str, str]:
    """The plan's Running condition: (reason, message)."""
    running = p.status.condition(C.RUNNING)
    assert running is not None
    return running.reason, running.message


def registering(phase: str, members: list[dict[str, Any]]) -> Any:
    return parse_status(
        {"phase": phase, "members": members, "servers": {"desired": 1}, "workers": {"desired": 2}}
    )


def member(name: str, role: str, attached: bool = True) -> dict[str, Any]:
    return {"name": name, "role": role, "attached": attached, "exitCode": None}


def test_a_worker_program_that_never_attaches_is_the_reason_and_then_the_failure() -> None:
    the_job = job(runPolicy={"startTimeoutSeconds": 120})
    first = plan(observed(the_job))
    c = registering(
        "prepare",
        [
            member("mf-server-0", "server"),
            member("mf-worker-0", "worker"),
            member("mf-worker-1", "worker", False),
        ],
    )
    p = plan(
        observed(the_job, pods=full_set(), status=first.status, coordinator=c, now=T0 + timedelta(seconds=5))
    )
    running = p.status.condition(C.RUNNING)
    assert running is not None
    assert running.reason == "WorkersNotAttached"
    assert (
        running.message
        == "the programs of workers mf-worker-1 have not connected to the job (dynaps.connect())"
    )
    late = plan(
        observed(the_job, pods=full_set(), status=p.status, coordinator=c, now=T0 + timedelta(seconds=120))
    )
    failed = late.status.condition(C.FAILED)
    assert failed is not None
    assert failed.reason == "StartTimeoutExceeded"
    assert failed.message.endswith(": " + running.message)


def test_nodes_that_do_not_register_are_named() -> None:
    first = plan(observed())
    c = registering("registering", [member("mf-worker-0", "worker"), member("mf-worker-1", "worker")])
    p = plan(observed(pods=full_set(), status=first.status, coordinator=c))
    running = p.status.condition(C.RUNNING)
    assert running is not None
    assert running.reason == "NodesNotRegistered"
    assert "pods mf-server-0 run but their nodes have not registered" in running.message


def test_nodes_still_starting_are_not_a_problem() -> None:
    first = plan(observed())
    pods = pending_with(None)
    p = plan(observed(pods=pods, status=first.status, coordinator=registering("registering", [])))
    running = p.status.condition(C.RUNNING)
    assert running is not None
    assert running.reason == "JobStarting"


def test_nodes_and_programs_joining_within_the_grace_are_no_warning() -> None:
    """A healthy start: every pod runs and the nodes register one by one, then the programs
    connect, all within the grace: the job says it is starting, with no Warning event (one
    per new list of nodes used to be posted as they came). Past the grace, the ones still
    missing are named."""
    status = plan(observed()).status
    since = T0 - timedelta(seconds=5)
    pods = full_set(running_since=since)
    joining = [
        [],
        [member("mf-server-0", "server")],
        [member("mf-server-0", "server"), member("mf-worker-0", "worker", attached=False)],
        [
            member("mf-server-0", "server"),
            member("mf-worker-0", "worker", attached=False),
            member("mf-worker-1", "worker", attached=False),
        ],
    ]
    for members in joining:
        p = plan(observed(pods=pods, status=status, coordinator=registering("registering", members)))
        assert running_of(p)[0] == "JobStarting", members
        assert not [e for e in p.events if e.type == "Warning"], members
        status = p.status
    late = T0 + timedelta(seconds=starting.REGISTER_GRACE_SECONDS)
    p = plan(observed(pods=pods, status=status, coordinator=registering("registering", joining[1]), now=late))
    assert running_of(p) == (
        "NodesNotRegistered",
        "pods mf-worker-0, mf-worker-1 run but their nodes have not registered with the coordinator",
    )
    p = plan(observed(pods=pods, status=status, coordinator=registering("registering", joining[3]), now=late))
    assert running_of(p)[0] == "WorkersNotAttached"
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "WorkersNotAttached")]


def test_nodes_registering_slowly_post_one_warning_while_the_message_follows_them() -> None:
    """Past the grace the list of nodes still missing shrinks as they register: the
    condition's message follows it, and one Warning event says so (not one per list)."""
    status = plan(observed()).status
    late = T0 + timedelta(seconds=starting.REGISTER_GRACE_SECONDS)
    pods = full_set(running_since=T0)
    warnings, messages = [], []
    for members in (
        [],
        [member("mf-server-0", "server")],
        [member("mf-server-0", "server"), member("mf-worker-0", "worker")],
    ):
        p = plan(
            observed(pods=pods, status=status, coordinator=registering("registering", members), now=late)
        )
        warnings += [e.reason for e in p.events if e.type == "Warning"]
        reason, message = running_of(p)
        assert reason == "NodesNotRegistered"
        messages.append(message.split(" run but")[0])
        status = p.status
    assert warnings == ["NodesNotRegistered"]
    assert messages == [
        "pods mf-server-0, mf-worker-0, mf-worker-1",
        "pods mf-worker-0, mf-worker-1",
        "pods mf-worker-1",
    ]


def test_a_pod_that_just_started_again_has_its_own_grace() -> None:
    """The grace counts from the container's start, not the pod's creation: a pod pulled for
    minutes, or restarted, is given its own."""
    status = plan(observed()).status
    pods = full_set(running_since=T0 - timedelta(minutes=10))
    pods[3] = pod(Role.WORKER, 1, created=T0 - timedelta(minutes=10), running_since=T0 - timedelta(seconds=2))
    members = [member("mf-server-0", "server"), member("mf-worker-0", "worker")]
    p = plan(observed(pods=pods, status=status, coordinator=registering("registering", members)))
    assert running_of(p)[0] == "JobStarting"


def test_the_start_deadline_names_what_is_missing_even_within_the_grace() -> None:
    the_job = job(runPolicy={"startTimeoutSeconds": 60})
    first = plan(observed(the_job))
    late = T0 + timedelta(seconds=61)
    pods = full_set(running_since=late - timedelta(seconds=2))  # restarted just now
    c = registering("registering", [member("mf-server-0", "server"), member("mf-worker-0", "worker")])
    p = plan(observed(the_job, pods=pods, status=first.status, coordinator=c, now=late))
    failed = p.status.condition(C.FAILED)
    assert failed is not None
    assert failed.reason == "StartTimeoutExceeded"
    assert failed.message.endswith(
        ": pods mf-worker-1 run but their nodes have not registered with the coordinator"
    )


def test_a_pods_running_start_is_read_from_its_main_container() -> None:
    status = {
        "phase": "Running",
        "containerStatuses": [
            {"name": "sidecar", "state": {"running": {"startedAt": "2026-01-01T11:00:00Z"}}},
            {"name": "dynaps", "state": {"running": {"startedAt": "2026-01-01T12:00:05Z"}}},
        ],
    }
    view = pod_view(raw_pod(status))
    assert view is not None
    assert view.running_since == T0 + timedelta(seconds=5)
    waiting_view = pod_view(raw_pod(waiting("ContainerCreating", "")))
    assert waiting_view is not None
    assert waiting_view.running_since is None


def test_a_replacement_that_cannot_start_degrades_a_running_job() -> None:
    p = started()
    later = T0 + timedelta(hours=2)  # the job ran for long: only the new pod's age counts
    pods = pending_with(PULL, created=later - timedelta(seconds=5))
    again = plan(
        observed(pods=pods, status=p.status, coordinator=running_coordinator(), memory=p.memory, now=later)
    )
    degraded = again.status.condition(C.DEGRADED)
    assert degraded is not None
    assert (degraded.status, degraded.reason, degraded.message) == ("True", "ImagePullBackOff", PULL.message)
    assert again.status.phase == JobPhase.RUNNING
    assert again.status.message == "training runs, but " + PULL.message
    assert again.status.is_true(C.RUNNING)
