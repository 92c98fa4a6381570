"""The decisions: observed state in, actions and the new status out. Pure; no I/O.

:func:`plan` is the one function that computes a job's status.  The reconciler reads the job,
its pods and its coordinator's ``/status``, calls :func:`plan`, and carries out the
:class:`Plan` (post the Events, then create, delete, drain, scale, checkpoint, and patch the
status if it changed).  Because the input is re-read every time, a decision taken once is never taken
twice: a pod that failed is deleted in the same pass that counts it, and afterwards it is
terminating or gone.

What the operator does, in order of precedence:

* a job being deleted: nothing (garbage collection removes the children);
* an invalid spec: Failed/InvalidSpec naming the field (until the spec changes);
* a finished job: ``cleanPodPolicy``, then ``ttlSecondsAfterFinished``;
* ``suspend``: checkpoint (bounded by ``drainTimeoutSeconds``), delete every pod;
* ``activeDeadlineSeconds`` passed: Failed/DeadlineExceeded;
* the coordinator pod exited: 0 is success, another code is the job's failure (``DataLoss``
  when ``faultTolerance.onDataLoss: Fail`` ended it); a preempted,
  deleted or vanished coordinator is replaced alone and the nodes rejoin it, or, when there
  is nothing to adopt, every pod restarts (:mod:`dynaps_operator.coordinator_loss`);
* each wanted node pod: missing -> create; failed -> count, delete, recreate under the same
  name (``backoffLimit``); preempted or deleted -> count as a preemption and recreate;
  OOMKilled under ``runPolicy.oomMemoryGrowth`` -> recreate with more memory, until the cap
  (:mod:`dynaps_operator.memory_growth`);
* surplus node pods (scale-in): ask the coordinator to drain them, delete them when they exit
  or after ``drainTimeoutSeconds``; a node count different from the coordinator's -> POST /scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dynaps.contract import (
    DATA_LOSS_EXIT_CODE,
    DATA_LOSS_REASON,
    TERMINAL_PHASES,
    CheckpointStatus,
    JobPhase,
    JobStatus,
    OwnershipStatus,
    ParameterServerJob,
    ReplicaStatus,
)
from dynaps_operator import data_loss, memory_growth, names
from dynaps_operator.coordinator_loss import nodes_can_rejoin, replace_alone, restart_all
from dynaps_operator.decisions import (
    RETRY_SECONDS,
    C,
    Deletion,
    Event,
    Holdup,
    Memory,
    Observed,
    Plan,
    R,
    count,
    desired_count,
    owned_pods,
    staged_workers,
)
from dynaps_operator.failure_policy import outcome as policy_outcome
from dynaps_operator.lifecycle import fail, finished, invalid, succeed, suspend
from dynaps_operator.names import NODE_ROLES, Role
from dynaps_operator.pod_builder import role_resources
from dynaps_operator.podstate import Outcome, PodView
from dynaps_operator.starting import PROGRESS_HOLDUPS, holdup, start_deadline, wanted_pods
from dynaps_operator.status import replica_status

__all__ = ["Deletion", "Event", "Memory", "Observed", "Plan", "plan"]

# A worker node exits with its program's exit code, and the coordinator ends the job when a
# program fails: give it this long to do so before the exit is treated as the pod's failure.
WORKER_EXIT_GRACE_SECONDS = 10.0


def plan(o: Observed) -> Plan:
    p = Plan(status=o.status, memory=o.memory)
    if o.deleting:
        return p
    if o.invalid or o.job is None:
        return invalid(o, p)
    failed = o.status.condition(C.FAILED)
    if (
        failed is not None
        and failed.reason == R.INVALID_SPEC
        and o.status.observed_generation != o.generation
    ):
        p.status = JobStatus()  # the spec was fixed: start afresh
        p.memory = Memory()
    elif o.status.phase in TERMINAL_PHASES:
        return finished(o, o.job, p)
    job = o.job
    p.update(observed_generation=o.generation)
    _observe(o, job, p)
    _absorb_coordinator(o, p)
    if job.spec.run_policy.suspend:
        return suspend(o, p)
    if p.status.is_true(C.SUSPENDED):
        p.condition(C.SUSPENDED, False, R.JOB_RESUMED, "the job was resumed", o.now)
        p.update(start_time=None)
        p.event(R.JOB_RESUMED, "resuming: creating the pods again")
    p.restore_from = p.status.last_checkpoint.path if p.status.last_checkpoint else None
    deadline = job.spec.run_policy.active_deadline_seconds
    if deadline is not None and p.status.start_time is not None:
        left = deadline - (o.now - p.status.start_time).total_seconds()
        if left <= 0:
            message = f"the job ran longer than runPolicy.activeDeadlineSeconds ({deadline} s)"
            return fail(o, job, p, R.DEADLINE_EXCEEDED, message)
        p.later(left)
    return _run(o, job, p)


# ------------------------------------------------------------------------------------------ running


@dataclass
class _Pass:
    """What one pass over the pods found."""

    recovering: list[str] = field(default_factory=list)  # why pods are being replaced
    degraded_reason: str = ""
    rebalancing: list[str] = field(default_factory=list)
    rebalance_reason: str = ""
    holdup: Holdup | None = None  # why pods or nodes do not start


def _run(o: Observed, job: ParameterServerJob, p: Plan) -> Plan:
    owned = {(pod.role, pod.index): pod for pod in owned_pods(o)}
    foreign = {pod.name for pod in o.pods if pod.owner_uid != o.ref.uid}
    started = p.status.start_time is not None
    accounted = set(p.memory.accounted)
    found = _Pass()
    coordinator = owned.get((Role.COORDINATOR, 0))
    seen = o.coordinator or o.memory.last_coordinator

    # The coordinator decides the job's outcome; losing it restarts every pod.
    if coordinator is not None and not coordinator.terminating and coordinator.outcome is not None:
        if coordinator.outcome is Outcome.SUCCEEDED:
            return succeed(o, job, p, coordinator)
        if coordinator.outcome is Outcome.FAILED:
            why = seen.reason if seen is not None and seen.reason else coordinator.describe_exit()
            message = f"the job failed (coordinator exit code {coordinator.exit_code}): {why}"
            return fail(o, job, p, _failure_reason(coordinator.exit_code, why), message)
    coordinator_lost = coordinator is None or coordinator.terminating or coordinator.outcome is not None
    if coordinator_lost and (started or owned):
        if not nodes_can_rejoin(o, job, p):
            return restart_all(o, job, p, coordinator, accounted)
        found.recovering.append(replace_alone(o, p, coordinator, accounted, foreign))
        found.degraded_reason = R.COORDINATOR_LOST
    elif o.coordinator is not None and o.coordinator.phase == "adopting":
        found.recovering.append("the new coordinator adopts the running nodes")
        found.degraded_reason = R.COORDINATOR_LOST

    ending = o.coordinator is not None and o.coordinator.ending
    rules = job.spec.run_policy.failure_policy
    for role in NODE_ROLES:
        desired = desired_count(job, role, p.status)
        # Pods below the previous pass's count existed before: a missing one was lost, not new.
        before = (o.status.servers if role is Role.SERVER else o.status.workers).desired
        for index in range(desired):
            name = names.pod_name(o.ref.name, role, index)
            pod = owned.get((role, index))
            if pod is None:
                if name in foreign:
                    found.recovering.append(f"{name} waits for an older pod of that name to go")
                    continue
                if started and index < before and name not in accounted:
                    count(p, "preemptions", R.POD_LOST, f"pod {name} disappeared; recreating it")
                    found.degraded_reason = R.POD_LOST
                p.create.append((role, index))
                accounted.discard(name)
                if started and index < before:
                    found.recovering.append(f"recreating {name}")
                elif started:
                    found.rebalancing.append(f"{name} joins")
                    found.rebalance_reason = found.rebalance_reason or R.SCALING_OUT
            elif pod.terminating:
                if name not in accounted:
                    accounted.add(name)
                    count(p, "preemptions", R.POD_LOST, f"pod {name} is being deleted; it will be recreated")
                    found.degraded_reason = R.POD_LOST
                found.recovering.append(f"{name} is terminating")
            elif (ended := policy_outcome(pod, rules)) is None or ended is Outcome.SUCCEEDED or ending:
                continue  # running, or the job is ending (nodes exit 0 after the coordinator's shutdown)
            elif _grow_memory(job, p, pod, found):  # before the policy: at the cap, the policy decides
                accounted.add(name)
                p.delete.append(Deletion(pod.name, pod.uid))
            elif _program_failure_pending(o, pod, coordinator):
                found.recovering.append(f"{name} exited {pod.exit_code}; waiting for the coordinator")
                p.later(RETRY_SECONDS)
            elif ended is Outcome.FATAL:
                message = f"{pod.describe_exit()}; a runPolicy.failurePolicy rule says FailJob"
                return fail(o, job, p, R.FAILURE_POLICY, message)
            else:
                accounted.add(name)
                if ended is Outcome.PREEMPTED:
                    count(p, "preemptions", R.POD_PREEMPTED, pod.describe_exit() + "; recreating it")
                    found.degraded_reason = R.POD_PREEMPTED
                else:
                    count(p, "restarts", R.POD_FAILED, pod.describe_exit(), warning=True)
                    found.degraded_reason = R.POD_FAILED
                    limit = job.spec.run_policy.backoff_limit
                    if p.status.restarts > limit:
                        message = (
                            f"{p.status.restarts} pod failures exceed runPolicy.backoffLimit ({limit}); "
                            f"last: {pod.describe_exit()}"
                        )
                        return fail(o, job, p, R.BACKOFF_LIMIT_EXCEEDED, message)
                p.delete.append(Deletion(pod.name, pod.uid))
                found.recovering.append(f"replacing {name}")
        _scale_in(o, job, p, role, desired, owned, found)

    if p.create and coordinator is None and (Role.COORDINATOR, 0) not in p.create:
        p.create.insert(0, (Role.COORDINATOR, 0))
    if o.held_back is not None:
        p.create.clear()  # e.g. they would mount another owner's Secret (the holdup says so)
    p.memory = replace(p.memory, accounted=frozenset(accounted))
    _request_scale(o, job, p, found)
    wanted = wanted_pods(o, job, p.status)
    found.holdup = holdup(o, wanted)
    # at the deadline, name what is missing even within the grace
    too_slow = start_deadline(o, job, p, wanted, found.holdup or holdup(o, wanted, grace=0.0))
    if too_slow:
        return fail(o, job, p, R.START_TIMEOUT_EXCEEDED, too_slow)
    return _settle(o, job, p, found, owned)


def _scale_in(
    o: Observed,
    job: ParameterServerJob,
    p: Plan,
    role: Role,
    desired: int,
    owned: dict[tuple[Role, int], PodView],
    found: _Pass,
) -> None:
    drains = dict(p.memory.drains)
    timeout = job.spec.rebalance_policy.drain_timeout_seconds
    for (pod_role, index), pod in sorted(owned.items()):
        if pod_role is not role or index < desired or pod.terminating:
            continue
        found.rebalancing.append(f"{pod.name} leaves")
        found.rebalance_reason = R.SCALING_IN
        asked = drains.get(pod.name)
        if pod.outcome is not None:
            p.delete.append(Deletion(pod.name, pod.uid))
            drains.pop(pod.name, None)
            p.event("DeletingPods", f"scale-in: {pod.name} has left the job; deleting it")
        elif asked is None and o.coordinator is not None and o.coordinator.running:
            p.drain.append(pod.name)
            drains[pod.name] = o.now
            p.event(R.SCALING_IN, f"scale-in: asked the coordinator to drain {pod.name}")
            p.later(RETRY_SECONDS)
        elif asked is None or (o.now - asked).total_seconds() >= timeout:
            p.delete.append(Deletion(pod.name, pod.uid))
            drains.pop(pod.name, None)
            why = "the job is not running" if asked is None else f"it did not drain within {timeout} s"
            p.event("DeletingPods", f"scale-in: deleting {pod.name} ({why})")
        else:
            p.later(RETRY_SECONDS)
    p.memory = replace(p.memory, drains=tuple(sorted(drains.items())))


def _request_scale(o: Observed, job: ParameterServerJob, p: Plan, found: _Pass) -> None:
    c = o.coordinator
    if c is None or not c.running or c.servers_desired is None or c.workers_desired is None:
        return
    want = (job.spec.servers.replicas, desired_count(job, Role.WORKER, p.status))
    have = (c.servers_desired, c.workers_desired)
    if want != have:
        p.scale = want
        grows = want[0] > have[0] or want[1] > have[1]
        found.rebalancing.append(f"the coordinator is sized for {have[0]} servers and {have[1]} workers")
        if not found.rebalance_reason:
            found.rebalance_reason = R.SCALING_OUT if grows else R.SCALING_IN
    if c.migrations_in_flight:
        found.rebalancing.append(f"{c.migrations_in_flight} shard migrations in flight")
        found.rebalance_reason = found.rebalance_reason or R.SHARDS_MIGRATING


def _settle(
    o: Observed, job: ParameterServerJob, p: Plan, found: _Pass, owned: dict[tuple[Role, int], PodView]
) -> Plan:
    """Phase, conditions and the rest of the status, after the actions were decided."""
    now = o.now
    if p.create:
        if not p.status.is_true(C.CREATED):
            p.condition(C.CREATED, True, R.JOB_CREATED, "created the job's pods, Service and ConfigMap", now)
        if p.status.start_time is None:
            p.update(start_time=now)
        p.event("CreatedPods", "creating " + ", ".join(names.pod_name(o.ref.name, r, i) for r, i in p.create))
    wanted = [pod for pod in owned.values() if pod.index < desired_count(job, pod.role, p.status)]
    count_wanted = 1 + job.spec.servers.replicas + desired_count(job, Role.WORKER, p.status)
    all_ready = len(wanted) == count_wanted and all(pod.alive and pod.ready for pod in wanted)
    c = o.coordinator
    # While the coordinator ends the job (and lingers to report it) the job still counts as running.
    running = (c.running or c.ending) if c is not None else (all_ready and not found.recovering)
    held = found.holdup
    if found.recovering:
        message = "recovering: " + "; ".join(found.recovering + ([held.message] if held else []))
        phase = (
            JobPhase.RECOVERING if p.status.start_time and p.status.is_true(C.CREATED) else JobPhase.PENDING
        )
        why = held.reason if held else found.degraded_reason or R.POD_LOST
        p.condition(C.DEGRADED, True, why, message, now)
    elif found.rebalancing:
        message = "rebalancing: " + "; ".join(found.rebalancing)
        phase = JobPhase.REBALANCING
    elif running:
        message, phase = "training runs on every node", JobPhase.RUNNING
        if held:
            message = "training runs, but " + held.message
    else:
        message = held.message if held else "waiting for the pods to start and the nodes to register"
        phase = JobPhase.PENDING
    if found.rebalancing:
        p.condition(C.REBALANCING, True, found.rebalance_reason, message, now)
    elif p.status.condition(C.REBALANCING) is not None:
        p.condition(C.REBALANCING, False, R.BALANCED, "the node set matches the spec", now)
    if held and running and not found.recovering:
        p.condition(C.DEGRADED, True, held.reason, held.message, now)
    elif not found.recovering and p.status.condition(C.DEGRADED) is not None:
        if all_ready:
            p.condition(C.DEGRADED, False, R.ALL_PODS_READY, "every pod is ready", now)
        elif running:
            p.condition(C.DEGRADED, True, R.PODS_NOT_READY, "some pods are not ready", now)
    if held and not any(
        x.reason == held.reason and (x.message == held.message or held.reason in PROGRESS_HOLDUPS)
        for x in o.status.conditions
    ):
        p.event(held.reason, held.message, warning=True)  # once per new reason or message
    if running:
        if not p.status.is_true(C.RUNNING):
            p.event(R.JOB_RUNNING, "every node registered: training runs")
        p.condition(C.RUNNING, True, R.JOB_RUNNING, "every node registered; training runs", now)
    elif not p.status.is_true(C.RUNNING):
        if held:
            p.condition(C.RUNNING, False, held.reason, held.message, now)
        else:
            p.condition(C.RUNNING, False, R.JOB_STARTING, "pods are starting and nodes are registering", now)
    p.update(phase=phase, message=message)
    p.later(o.poll_seconds if phase in (JobPhase.RUNNING, JobPhase.REBALANCING) else RETRY_SECONDS)
    return p


def _observe(o: Observed, job: ParameterServerJob, p: Plan) -> None:
    owned = owned_pods(o)
    growth = job.spec.run_policy.oom_memory_growth
    for role, key in ((Role.SERVER, "servers"), (Role.WORKER, "workers")):
        staged = role is Role.WORKER and job.spec.stages
        counts = replica_status(
            staged_workers(job, o.coordinator, o.status) if staged else desired_count(job, role),
            [x for x in owned if x.role is role],
            names.role_selector(o.ref.name, role),
        )
        # The growth count lives on in the status; the memory shown follows the spec as it is now.
        growths = getattr(p.status, key).memory_growths
        memory = memory_growth.shown_memory(role_resources(job, role), growth, growths)
        p.update(**{key: counts.model_copy(update={"memory_growths": growths, "memory": memory})})


def _grow_memory(job: ParameterServerJob, p: Plan, pod: PodView, found: _Pass) -> bool:
    """``runPolicy.oomMemoryGrowth``: True when the OOMKilled ``pod`` is to be replaced with more
    memory (or with the memory its role has grown to since it was created)."""
    growth = job.spec.run_policy.oom_memory_growth
    if growth is None or pod.exit_reason != memory_growth.OOM_KILLED:
        return False
    key = "servers" if pod.role is Role.SERVER else "workers"
    replicas: ReplicaStatus = getattr(p.status, key)
    resources = role_resources(job, pod.role)
    decision = memory_growth.decide(pod.name, pod.memory, resources, growth, replicas.memory_growths)
    if decision.verdict is memory_growth.Verdict.NO_GROWTH:
        p.event(R.MEMORY_LIMIT_REACHED, decision.message, warning=True)
        found.recovering.append(decision.message)
        return False
    memory = memory_growth.shown_memory(resources, growth, decision.steps)
    p.update(**{key: replicas.model_copy(update={"memory_growths": decision.steps, "memory": memory})})
    p.event(R.MEMORY_GROWN, decision.message, warning=True)
    found.recovering.append(decision.message)
    found.degraded_reason = R.MEMORY_GROWN
    return True


def _absorb_coordinator(o: Observed, p: Plan) -> None:
    """What the coordinator's /status says about ownership, metrics, checkpoints and data loss."""
    c = o.coordinator
    if c is None:
        return
    ownership = OwnershipStatus(
        epoch=c.epoch,
        shards_per_server=c.shards_per_server,
        migrations_in_flight=c.migrations_in_flight,
        unsynced_shards=c.unsynced_shards,
    )
    p.update(ownership=ownership)
    if c.stage is not None:
        p.update(stage=c.stage)
    if c.metrics:
        p.update(metrics=c.metrics)
    if c.last_checkpoint is not None:
        p.update(last_checkpoint=CheckpointStatus(path=c.last_checkpoint.path, time=c.last_checkpoint.time))
    data_loss.absorb(o, p, c)
    p.memory = replace(p.memory, last_coordinator=c)


def _failure_reason(exit_code: int | None, why: str) -> str:
    """DataLoss when ``faultTolerance.onDataLoss: Fail`` ended the job: its exit code alone could
    be a worker program's (the coordinator ends the job with a failed program's code)."""
    if exit_code == DATA_LOSS_EXIT_CODE and DATA_LOSS_REASON in why:
        return R.DATA_LOSS
    return R.JOB_FAILED


def _program_failure_pending(o: Observed, pod: PodView, coordinator: PodView | None) -> bool:
    """A worker whose program failed: the coordinator is about to end the job with that code."""
    if pod.role is not Role.WORKER or pod.outcome is not Outcome.FAILED or pod.finished_at is None:
        return False
    if pod.exit_reason == memory_growth.OOM_KILLED:
        return False  # the kernel killed the whole container: no program reported a failure
    if coordinator is None or not coordinator.alive:
        return False
    return (o.now - pod.finished_at).total_seconds() < WORKER_EXIT_GRACE_SECONDS
