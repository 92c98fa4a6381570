"""A lost coordinator is replaced alone and the nodes rejoin it (pure: no cluster)."""

from __future__ import annotations

from dynaps.contract import ConditionType, JobPhase
from dynaps_operator.names import Role
from dynaps_operator.planner import plan
from tests.dynaps_operator.helpers import full_set, observed, pod, running_coordinator, started

C = ConditionType


def test_a_killed_coordinator_is_replaced_alone_and_counted_once() -> None:
    p = started()
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=137)
    first = plan(observed(pods=pods, status=p.status, memory=p.memory))
    assert [d.name for d in first.delete] == ["mf-coordinator"]
    assert not first.create
    assert first.status.phase == JobPhase.RECOVERING
    assert first.status.preemptions == 1
    degraded = first.status.condition(C.DEGRADED)
    assert degraded is not None
    assert degraded.reason == "CoordinatorLost"
    assert first.status.is_true(C.RUNNING), "the nodes run on"
    assert [e.reason for e in first.events] == ["CoordinatorLost"]
    # The old pod terminates, then is gone: the new one is created; the nodes are left alone.
    terminating = full_set()
    terminating[0] = pod(Role.COORDINATOR, exit_code=137, terminating=True)
    waiting = plan(observed(pods=terminating, status=first.status, memory=first.memory))
    assert not waiting.delete
    assert not waiting.create
    gone = plan(observed(pods=full_set()[1:], status=waiting.status, memory=waiting.memory))
    assert gone.create == [(Role.COORDINATOR, 0)]
    assert not gone.delete
    assert gone.status.preemptions == 1
    assert gone.status.phase == JobPhase.RECOVERING


def test_a_deleted_coordinator_is_replaced_alone() -> None:
    p = started()
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, terminating=True)
    first = plan(observed(pods=pods, status=p.status, memory=p.memory))
    assert not first.delete
    assert not first.create
    assert first.status.preemptions == 1
    assert "is being deleted; replacing it alone" in first.events[0].message


def test_a_vanished_coordinator_is_recreated_at_once() -> None:
    p = started()
    first = plan(observed(pods=full_set()[1:], status=p.status, memory=p.memory))
    assert first.create == [(Role.COORDINATOR, 0)]
    assert first.status.preemptions == 1
    assert not first.delete


def test_while_the_new_coordinator_adopts_the_job_recovers_then_runs() -> None:
    p = started()
    gone = plan(observed(pods=full_set()[1:], status=p.status, memory=p.memory))
    adopting = running_coordinator(phase="adopting")
    a = plan(observed(pods=full_set(), status=gone.status, memory=gone.memory, coordinator=adopting))
    assert a.status.phase == JobPhase.RECOVERING
    assert "adopts the running nodes" in a.status.message
    assert not a.create
    assert not a.delete
    back = plan(
        observed(pods=full_set(), status=a.status, memory=a.memory, coordinator=running_coordinator())
    )
    assert back.status.phase == JobPhase.RUNNING
    degraded = back.status.condition(C.DEGRADED)
    assert degraded is not None
    assert (degraded.status, degraded.reason) == ("False", "AllPodsReady")
    assert back.status.preemptions == 1


def test_a_coordinator_lost_before_the_job_ran_restarts_every_pod() -> None:
    first = plan(observed())
    pods = full_set(ready=False)
    pods[0] = pod(Role.COORDINATOR, exit_code=137)
    p = plan(observed(pods=pods, status=first.status, memory=first.memory))
    assert {d.name for d in p.delete} == {"mf-coordinator", "mf-server-0", "mf-worker-0", "mf-worker-1"}


def test_a_coordinator_that_failed_still_fails_the_job() -> None:
    p = started()
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=3)
    done = plan(observed(pods=pods, status=p.status, memory=p.memory))
    assert done.status.phase == JobPhase.FAILED
