"""The planner's decisions, case by case (pure: no cluster)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from dynaps.contract import ConditionType, JobPhase, JobStatus
from dynaps_operator.decisions import Holdup
from dynaps_operator.lifecycle import SETTLE_SECONDS
from dynaps_operator.names import Role
from dynaps_operator.planner import WORKER_EXIT_GRACE_SECONDS, Memory, Plan, plan
from tests.dynaps_operator.helpers import T0, full_set, job, observed, pod, running_coordinator, started

ALL = [(Role.COORDINATOR, 0), (Role.SERVER, 0), (Role.WORKER, 0), (Role.WORKER, 1)]


def then(p: Plan, **kw: object) -> JobStatus:
    """The status after one more reconcile in which nothing else changed."""
    return p.status


def test_a_secret_of_the_jobs_name_with_another_owner_holds_the_pods_back_and_says_why() -> None:
    conflict = "Secret mf-secret is not this job's (another owner ...)"
    held = Holdup("SecretConflict", conflict)
    first = plan(replace(observed(), held_back=held))
    assert first.create == []  # they would mount another owner's secret
    assert first.status.phase == JobPhase.PENDING
    assert first.status.message == conflict
    running = first.status.condition(ConditionType.RUNNING)
    assert running is not None
    assert (running.status, running.reason, running.message) == ("False", "SecretConflict", conflict)
    assert [(e.reason, e.type) for e in first.events] == [("SecretConflict", "Warning")]
    again = plan(replace(observed(status=first.status), held_back=held))
    assert again.events == []  # one Event per new reason or message
    gone = plan(observed(status=again.status))  # the leftover was deleted
    assert gone.create == ALL


def test_a_new_job_creates_every_pod_coordinator_first() -> None:
    p = plan(observed())
    assert p.create == ALL
    assert p.status.phase == JobPhase.PENDING
    assert p.status.is_true(ConditionType.CREATED)
    assert p.status.start_time == T0
    assert p.status.observed_generation == 1
    assert [e.reason for e in p.events] == ["CreatedPods"]
    assert p.requeue_after is not None


def test_running_when_the_coordinator_says_so_and_the_status_then_settles() -> None:
    p = started()
    assert p.status.phase == JobPhase.RUNNING
    assert p.status.is_true(ConditionType.RUNNING)
    assert (p.status.servers.summary, p.status.workers.summary) == ("1/1", "2/2")
    assert "JobRunning" in [e.reason for e in p.events]
    again = plan(
        observed(pods=full_set(), status=p.status, coordinator=running_coordinator(), memory=p.memory)
    )
    assert again.status == p.status  # nothing new: nothing to write
    assert not again.events
    assert not again.create
    assert not again.delete


def test_a_job_that_is_ending_stays_running_until_the_coordinator_exits() -> None:
    p = started()
    ending = running_coordinator(phase="stopping", exit_code=0, metrics={"rmse": 0.3})
    pods = full_set()
    pods[2] = pod(Role.WORKER, 0, exit_code=0)
    again = plan(observed(pods=pods, status=p.status, memory=p.memory, coordinator=ending))
    assert again.status.phase == JobPhase.RUNNING
    assert not again.delete
    assert not again.create
    assert again.memory.last_coordinator == ending


def test_coordinator_exit_zero_is_success_with_the_final_metrics() -> None:
    p = started()
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=0, message='{"metrics": {"rmse": 0.25}}')
    done = plan(observed(pods=pods, status=p.status, memory=p.memory, now=T0 + timedelta(seconds=9)))
    assert done.status.phase == JobPhase.SUCCEEDED
    assert done.status.final_quality == {"rmse": 0.25}
    assert done.status.completion_time == T0 + timedelta(seconds=9)
    assert not done.status.is_true(ConditionType.RUNNING)
    # cleanPodPolicy Running after a success: the nodes are ending on the coordinator's
    # SHUTDOWN, so their pods get SETTLE_SECONDS to complete (and keep their logs) ...
    assert not done.delete
    assert done.requeue_after is not None
    assert done.requeue_after <= SETTLE_SECONDS
    # ... those that did are kept; those still running then are deleted
    pods[2] = pod(Role.WORKER, 0, exit_code=0)
    settling = observed(pods=pods, status=done.status, memory=done.memory, now=T0 + timedelta(seconds=20))
    assert not plan(settling).delete
    late = observed(pods=pods, status=done.status, memory=done.memory, now=T0 + timedelta(seconds=40))
    assert {d.name for d in plan(late).delete} == {"mf-server-0", "mf-worker-1"}


def test_final_metrics_fall_back_to_the_last_polled_status() -> None:
    p = started()
    last = running_coordinator(metrics={"rmse": 0.5})
    polled = plan(observed(pods=full_set(), status=p.status, coordinator=last, memory=p.memory))
    assert polled.status.metrics == {"rmse": 0.5}
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=0)
    done = plan(observed(pods=pods, status=polled.status, memory=polled.memory))
    assert done.status.final_quality == {"rmse": 0.5}


def test_coordinator_exit_non_zero_fails_the_job_with_its_reason() -> None:
    p = started()
    seen = running_coordinator(phase="stopping", exit_code=3, reason="worker rank 1 exited with code 3")
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=3)
    done = plan(observed(pods=pods, status=p.status, memory=Memory(last_coordinator=seen)))
    assert done.status.phase == JobPhase.FAILED
    failed = done.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert failed.reason == "JobFailed"
    assert "worker rank 1 exited with code 3" in failed.message
    assert done.status.restarts == 0


def test_a_failed_worker_waits_for_the_coordinator_to_end_the_job() -> None:
    p = started()
    pods = full_set()
    pods[3] = pod(Role.WORKER, 1, exit_code=3, finished=T0)
    early = plan(observed(pods=pods, status=p.status, memory=p.memory, now=T0 + timedelta(seconds=1)))
    assert not early.delete
    assert early.status.restarts == 0
    late = T0 + timedelta(seconds=WORKER_EXIT_GRACE_SECONDS + 1)
    counted = plan(observed(pods=pods, status=p.status, memory=p.memory, now=late))
    assert counted.status.restarts == 1
    assert [d.name for d in counted.delete] == ["mf-worker-1"]


def test_a_failed_server_counts_and_is_replaced_until_the_backoff_limit() -> None:
    p = started()
    pods = full_set()
    pods[1] = pod(Role.SERVER, exit_code=134)
    first = plan(observed(pods=pods, status=p.status, memory=p.memory))
    assert first.status.restarts == 1
    assert first.status.phase == JobPhase.RECOVERING
    assert [d.name for d in first.delete] == ["mf-server-0"]
    degraded = first.status.condition(ConditionType.DEGRADED)
    assert degraded is not None
    assert degraded.reason == "PodFailed"
    # The replacement is created once the old pod is gone; its loss is not counted twice.
    gone = [x for x in full_set() if x.name != "mf-server-0"]
    second = plan(observed(pods=gone, status=first.status, memory=first.memory))
    assert second.create == [(Role.SERVER, 0)]
    assert second.status.restarts == 1
    assert second.status.preemptions == 0


def test_backoff_limit_exceeded_fails_the_job() -> None:
    p = started()
    pods = full_set()
    pods[1] = pod(Role.SERVER, exit_code=1)
    strict = job(runPolicy={"backoffLimit": 0})
    done = plan(observed(strict, pods=pods, status=p.status, memory=p.memory))
    assert done.status.phase == JobPhase.FAILED
    failed = done.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert failed.reason == "BackoffLimitExceeded"
    assert "mf-server-0 exited with code 1" in failed.message


def test_preemptions_do_not_count_against_the_backoff_limit() -> None:
    strict = job(runPolicy={"backoffLimit": 0})
    p = started()
    for victim in (
        pod(Role.SERVER, exit_code=137),
        pod(Role.SERVER, exit_code=143),
        pod(Role.SERVER, phase="Failed", disrupted=True, ready=False),
    ):
        pods = full_set()
        pods[1] = victim
        done = plan(observed(strict, pods=pods, status=p.status, memory=p.memory))
        assert done.status.phase == JobPhase.RECOVERING, victim
        assert (done.status.preemptions, done.status.restarts) == (1, 0)
        assert [d.name for d in done.delete] == ["mf-server-0"]


def test_an_oom_kill_is_a_failure_not_a_preemption() -> None:
    p = started()
    pods = full_set()
    pods[1] = pod(Role.SERVER, exit_code=137, reason="OOMKilled")
    done = plan(observed(pods=pods, status=p.status, memory=p.memory))
    assert (done.status.restarts, done.status.preemptions) == (1, 0)
    assert "OOMKilled" in done.events[0].message


def test_a_deleted_pod_counts_once_as_a_preemption_and_is_recreated() -> None:
    p = started()
    pods = full_set()
    pods[2] = pod(Role.WORKER, 0, terminating=True)
    seen = plan(observed(pods=pods, status=p.status, memory=p.memory, coordinator=running_coordinator()))
    assert seen.status.preemptions == 1
    assert seen.status.phase == JobPhase.RECOVERING
    still = plan(observed(pods=pods, status=seen.status, memory=seen.memory))
    assert still.status.preemptions == 1
    gone = [x for x in full_set() if x.name != "mf-worker-0"]
    again = plan(observed(pods=gone, status=still.status, memory=still.memory))
    assert again.create == [(Role.WORKER, 0)]
    assert again.status.preemptions == 1


def test_a_pod_that_vanished_unseen_is_counted_and_recreated() -> None:
    p = started()
    gone = [x for x in full_set() if x.name != "mf-worker-1"]
    again = plan(observed(pods=gone, status=p.status, memory=p.memory))
    assert again.create == [(Role.WORKER, 1)]
    assert again.status.preemptions == 1
    assert "PodLost" in [e.reason for e in again.events]


def test_losing_the_coordinator_with_its_nodes_shut_down_restarts_every_pod() -> None:
    """A coordinator asked to stop ends the job on its way out: nothing is left to adopt."""
    p = started()
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=143)
    pods[2] = pod(Role.WORKER, 0, exit_code=0)
    first = plan(observed(pods=pods, status=p.status, memory=p.memory))
    assert first.status.phase == JobPhase.RECOVERING
    assert first.status.preemptions == 1
    assert {d.name for d in first.delete} == {"mf-coordinator", "mf-server-0", "mf-worker-0", "mf-worker-1"}
    running = first.status.condition(ConditionType.RUNNING)
    assert running is not None
    assert running.reason == "JobRestarting"
    assert not first.create
    # Once every pod is gone, all are created again; nothing is counted twice.
    again = plan(observed(pods=[], status=first.status, memory=first.memory))
    assert again.create == ALL
    assert again.status.preemptions == 1


def test_scale_out_creates_pods_and_asks_the_coordinator() -> None:
    p = started()
    bigger = job(workers={"replicas": 3, "command": ["python", "train.py"]})
    grown = plan(
        observed(bigger, pods=full_set(), status=p.status, memory=p.memory, coordinator=running_coordinator())
    )
    assert grown.create == [(Role.WORKER, 2)]
    assert grown.scale == (1, 3)
    assert grown.status.preemptions == 0  # a new index is no loss
    assert grown.status.phase == JobPhase.REBALANCING
    rebalancing = grown.status.condition(ConditionType.REBALANCING)
    assert rebalancing is not None
    assert rebalancing.reason == "ScalingOut"


def test_scale_in_drains_then_deletes_the_surplus_pod() -> None:
    p = started()
    smaller = job(workers={"replicas": 1, "command": ["python", "train.py"]})
    coordinator = running_coordinator()
    first = plan(
        observed(smaller, pods=full_set(), status=p.status, memory=p.memory, coordinator=coordinator)
    )
    assert first.drain == ["mf-worker-1"]
    assert first.scale == (1, 1)
    assert not first.delete
    asked = plan(
        observed(smaller, pods=full_set(), status=first.status, memory=first.memory, coordinator=coordinator)
    )
    assert not asked.drain
    assert not asked.delete
    pods = full_set()
    pods[3] = pod(Role.WORKER, 1, exit_code=0)
    left = plan(
        observed(smaller, pods=pods, status=asked.status, memory=asked.memory, coordinator=coordinator)
    )
    assert [d.name for d in left.delete] == ["mf-worker-1"]


def test_a_drain_that_times_out_deletes_the_pod() -> None:
    p = started()
    smaller = job(workers={"replicas": 1, "command": ["python", "train.py"]})
    coordinator = running_coordinator()
    first = plan(
        observed(smaller, pods=full_set(), status=p.status, memory=p.memory, coordinator=coordinator)
    )
    late = T0 + timedelta(seconds=61)
    timed_out = plan(
        observed(
            smaller,
            pods=full_set(),
            status=first.status,
            memory=first.memory,
            coordinator=coordinator,
            now=late,
        )
    )
    assert [d.name for d in timed_out.delete] == ["mf-worker-1"]


def test_suspend_checkpoints_then_deletes_and_resume_restores() -> None:
    p = started()
    paused = job(runPolicy={"suspend": True})
    coordinator = running_coordinator()
    first = plan(observed(paused, pods=full_set(), status=p.status, memory=p.memory, coordinator=coordinator))
    assert first.checkpoint
    assert not first.delete
    assert first.status.phase == JobPhase.SUSPENDED
    # The coordinator reports the checkpoint: the pods go.
    from dynaps_operator.coordinator_view import CheckpointRef

    done = running_coordinator(last_checkpoint=CheckpointRef("/ckpt/3", T0 + timedelta(seconds=1)))
    later = T0 + timedelta(seconds=2)
    second = plan(
        observed(
            paused, pods=full_set(), status=first.status, memory=first.memory, coordinator=done, now=later
        )
    )
    assert {d.name for d in second.delete} == {x.name for x in full_set()}
    empty = plan(observed(paused, pods=[], status=second.status, memory=second.memory, now=later))
    suspended = empty.status.condition(ConditionType.SUSPENDED)
    assert suspended is not None
    assert suspended.reason == "JobSuspended"
    # Resume: everything is created again, restoring the checkpoint, and the deadline clock restarts.
    resumed = plan(observed(job(), pods=[], status=empty.status, memory=empty.memory, now=later))
    assert resumed.create == ALL
    assert resumed.restore_from is not None or empty.status.last_checkpoint is None
    condition = resumed.status.condition(ConditionType.SUSPENDED)
    assert condition is not None
    assert (condition.status, condition.reason) == ("False", "JobResumed")
    assert resumed.status.start_time == later
    assert resumed.status.preemptions == 0


def test_suspend_without_checkpoint_support_deletes_at_once() -> None:
    p = started()
    paused = job(runPolicy={"suspend": True})
    memory = Memory(checkpoint_unsupported=True)
    first = plan(
        observed(paused, pods=full_set(), status=p.status, memory=memory, coordinator=running_coordinator())
    )
    assert not first.checkpoint
    assert len(first.delete) == 4


def test_a_job_created_suspended_creates_nothing() -> None:
    p = plan(observed(job(runPolicy={"suspend": True})))
    assert not p.create
    assert p.status.phase == JobPhase.SUSPENDED


def test_deadline_exceeded_fails_and_cleans_up() -> None:
    p = started()
    timed = job(runPolicy={"activeDeadlineSeconds": 30})
    done = plan(
        observed(timed, pods=full_set(), status=p.status, memory=p.memory, now=T0 + timedelta(seconds=31))
    )
    assert done.status.phase == JobPhase.FAILED
    failed = done.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert failed.reason == "DeadlineExceeded"
    assert len(done.delete) == 4
    waiting = plan(
        observed(timed, pods=full_set(), status=p.status, memory=p.memory, now=T0 + timedelta(seconds=10))
    )
    assert waiting.requeue_after is not None
    assert waiting.requeue_after <= 20


def test_ttl_deletes_the_finished_job() -> None:
    p = started()
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=0)
    ttl = job(runPolicy={"ttlSecondsAfterFinished": 60, "cleanPodPolicy": "None"})
    done = plan(observed(ttl, pods=pods, status=p.status, memory=p.memory))
    assert not done.delete  # cleanPodPolicy None
    soon = plan(observed(ttl, pods=pods, status=done.status, now=T0 + timedelta(seconds=30)))
    assert not soon.delete_job
    assert soon.requeue_after == 30
    due = plan(observed(ttl, pods=pods, status=done.status, now=T0 + timedelta(seconds=60)))
    assert due.delete_job


def test_clean_pod_policy_all_deletes_finished_pods_too() -> None:
    p = started()
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=0)
    done = plan(
        observed(job(runPolicy={"cleanPodPolicy": "All"}), pods=pods, status=p.status, memory=p.memory)
    )
    assert len(done.delete) == 4


def test_an_invalid_spec_fails_once_and_a_fixed_one_starts_afresh() -> None:
    message = "spec.workers.command: is empty"
    first = plan(observed(invalid=message))
    assert first.invalid == message
    assert first.status.phase == JobPhase.FAILED
    failed = first.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert (failed.reason, failed.message) == ("InvalidSpec", message)
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "InvalidSpec")]
    again = plan(observed(invalid=message, status=first.status))
    assert not again.events  # reported once per spec
    fixed = plan(observed(status=first.status, generation=2))
    assert fixed.create == ALL
    assert fixed.status.condition(ConditionType.FAILED) is None


def test_a_job_being_deleted_is_left_to_garbage_collection() -> None:
    p = plan(observed(pods=[], deleting=True))
    assert not p.create
    assert not p.events
    assert p.status == JobStatus()


def test_pods_of_another_job_with_the_same_name_block_creation() -> None:
    p = started()
    stale = [x for x in full_set() if x.name != "mf-worker-1"] + [pod(Role.WORKER, 1, owner="old-uid")]
    again = plan(observed(pods=stale, status=p.status, memory=p.memory))
    assert (Role.WORKER, 1) not in again.create


def test_ownership_is_reported_from_the_coordinator() -> None:
    first = plan(observed())
    coordinator = running_coordinator(
        epoch=7, shards_per_server={"mf-server-0": 1024}, migrations_in_flight=2, unsynced_shards=5
    )
    p = plan(observed(pods=full_set(), status=first.status, coordinator=coordinator))
    assert p.status.ownership.epoch == 7
    assert p.status.ownership.shards_per_server == {"mf-server-0": 1024}
    assert p.status.ownership.unsynced_shards == 5
    assert p.status.phase == JobPhase.REBALANCING
    rebalancing = p.status.condition(ConditionType.REBALANCING)
    assert rebalancing is not None
    assert rebalancing.reason == "ShardsMigrating"
