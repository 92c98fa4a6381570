"""Decisions outside plain running: invalid specs, the end of a job, suspension.

* an invalid spec: Failed/InvalidSpec naming the field (until the spec changes);
* the end: Succeeded when the coordinator exits 0 (with the final metrics), Failed otherwise;
  then ``cleanPodPolicy`` (after a success, the pods still running get :data:`SETTLE_SECONDS`
  to end on their own first) and ``ttlSecondsAfterFinished``;
* ``suspend``: ask the coordinator for a checkpoint, wait for it (at most
  ``drainTimeoutSeconds``), delete every pod; resuming is the planner's ordinary start.
"""

from __future__ import annotations

from dynaps.contract import CleanPodPolicy, JobPhase, ParameterServerJob
from dynaps_operator.coordinator_view import parse_final
from dynaps_operator.decisions import RETRY_SECONDS, C, Deletion, Observed, Plan, R, names_of, owned_pods
from dynaps_operator.podstate import PodView

# A job succeeds when its coordinator exits 0; the nodes end on its SHUTDOWN at the same
# moment, but the kubelet reports their pods' phases seconds later. cleanPodPolicy Running
# waits this long after a success before deleting the pods still running, so that the
# completed ones keep their logs instead of racing the kubelet's status sync. A failure
# deletes them at once: they may be stuck, and the cluster wants its resources back.
SETTLE_SECONDS = 30.0


def invalid(o: Observed, p: Plan) -> Plan:
    p.invalid = o.invalid or "the spec is invalid"
    failed = o.status.condition(C.FAILED)
    if failed is not None and failed.reason == R.INVALID_SPEC and failed.message == p.invalid:
        return p  # already reported for this spec
    p.update(
        phase=JobPhase.FAILED, message=p.invalid, observed_generation=o.generation, completion_time=o.now
    )
    p.condition(C.FAILED, True, R.INVALID_SPEC, p.invalid, o.now)
    if o.status.condition(C.RUNNING) is not None:
        p.condition(C.RUNNING, False, R.INVALID_SPEC, p.invalid, o.now)
    p.event(R.INVALID_SPEC, p.invalid, warning=True)
    for pod in o.pods:  # an update made a running job invalid: stop what it runs
        if pod.owner_uid == o.ref.uid and not pod.terminating:
            p.delete.append(Deletion(pod.name, pod.uid))
    return p


def finished(o: Observed, job: ParameterServerJob, p: Plan) -> Plan:
    clean_pods(o, job, p)
    ttl = job.spec.run_policy.ttl_seconds_after_finished
    if ttl is not None and o.status.completion_time is not None:
        left = ttl - (o.now - o.status.completion_time).total_seconds()
        if left <= 0:
            p.delete_job = True
        else:
            p.later(left)
    return p


def clean_pods(o: Observed, job: ParameterServerJob, p: Plan) -> None:
    policy = job.spec.run_policy.clean_pod_policy
    if policy == CleanPodPolicy.NONE:
        return
    completed = p.status.completion_time
    if policy == CleanPodPolicy.RUNNING and p.status.phase == JobPhase.SUCCEEDED and completed is not None:
        left = SETTLE_SECONDS - (o.now - completed).total_seconds()
        if left > 0 and any(pod.alive for pod in owned_pods(o)):
            p.later(left)  # the nodes are on their way out (see SETTLE_SECONDS)
            return
    doomed = [
        pod for pod in owned_pods(o) if not pod.terminating and (policy == CleanPodPolicy.ALL or pod.alive)
    ]
    if doomed:
        p.delete.extend(Deletion(pod.name, pod.uid) for pod in doomed)
        p.event("DeletingPods", f"cleanPodPolicy {policy}: deleting {names_of(doomed)}")


def finish(o: Observed, job: ParameterServerJob, p: Plan, phase: JobPhase, reason: str, message: str) -> Plan:
    p.update(phase=phase, message=message, completion_time=o.now)
    kind = C.SUCCEEDED if phase == JobPhase.SUCCEEDED else C.FAILED
    p.condition(kind, True, reason, message, o.now)
    if p.status.condition(C.RUNNING) is not None:
        p.condition(C.RUNNING, False, reason, message, o.now)
    p.event(reason, message, warning=phase == JobPhase.FAILED)
    clean_pods(o, job, p)
    if job.spec.run_policy.ttl_seconds_after_finished is not None:
        p.later(job.spec.run_policy.ttl_seconds_after_finished)
    return p


def fail(o: Observed, job: ParameterServerJob, p: Plan, reason: str, message: str) -> Plan:
    return finish(o, job, p, JobPhase.FAILED, reason, message)


def succeed(o: Observed, job: ParameterServerJob, p: Plan, coordinator: PodView) -> Plan:
    final = parse_final(coordinator.exit_message)
    seen = o.coordinator or o.memory.last_coordinator
    metrics = (final.metrics if final else {}) or (seen.metrics if seen else {}) or dict(p.status.metrics)
    p.update(final_quality=metrics or None, metrics=metrics)
    message = "the coordinator exited 0: every worker program succeeded"
    if metrics:
        message += "; final quality " + ", ".join(f"{k}={v:g}" for k, v in sorted(metrics.items()))
    return finish(o, job, p, JobPhase.SUCCEEDED, R.JOB_SUCCEEDED, message)


def suspend(o: Observed, p: Plan) -> Plan:
    owned = [pod for pod in owned_pods(o) if not pod.terminating]
    if not p.status.is_true(C.SUSPENDED):
        p.condition(C.SUSPENDED, True, R.JOB_SUSPENDING, "checkpointing, then deleting the pods", o.now)
        p.event(R.JOB_SUSPENDING, "runPolicy.suspend is true: checkpointing, then deleting the pods")
        if o.coordinator is not None and o.coordinator.running and not o.memory.checkpoint_unsupported:
            p.checkpoint = True
            p.later(RETRY_SECONDS)
            return suspended_phase(o, p)
    since = p.status.condition(C.SUSPENDED)
    assert since is not None
    waited = (o.now - since.last_transition_time).total_seconds()
    checkpoint = p.status.last_checkpoint
    checkpointed = checkpoint is not None and checkpoint.time >= since.last_transition_time
    timeout = o.job.spec.rebalance_policy.drain_timeout_seconds if o.job else 60
    waiting = (
        owned
        and o.coordinator is not None
        and o.coordinator.running
        and not o.memory.checkpoint_unsupported
        and not checkpointed
        and waited < timeout
    )
    if waiting:
        p.later(RETRY_SECONDS)
    elif owned:
        p.delete.extend(Deletion(pod.name, pod.uid) for pod in owned)
        p.event("DeletingPods", f"suspended: deleting {names_of(owned)}")
    return suspended_phase(o, p)


def suspended_phase(o: Observed, p: Plan) -> Plan:
    gone = not any(True for pod in owned_pods(o))
    reason = R.JOB_SUSPENDED if gone else R.JOB_SUSPENDING
    message = "suspended: no pods run" if gone else "suspending: the pods are being removed"
    p.condition(C.SUSPENDED, True, reason, message, o.now)
    if p.status.condition(C.RUNNING) is not None:
        p.condition(C.RUNNING, False, R.JOB_SUSPENDED, "the job is suspended", o.now)
    p.update(phase=JobPhase.SUSPENDED, message=message)
    if not gone:
        p.later(RETRY_SECONDS)
    return p
