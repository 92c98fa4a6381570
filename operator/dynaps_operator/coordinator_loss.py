"""A lost coordinator: replace it alone when the nodes can rejoin it, else restart every pod. Pure.

The runtime's nodes outlive their coordinator: they keep their ids, their stores and their
shard map, and heartbeat the coordinator's address (a stable DNS name: the pod's hostname under
the job's headless Service).  A coordinator started again under the same pod name adopts them
(the runtime's ``ADOPT``/``REJOIN``, phase ``adopting``) and the job goes on without losing an
update.  So a coordinator that was preempted, deleted or vanished is replaced alone, and every
other pod keeps running (``Recovering``, ``Degraded=True``/``CoordinatorLost``).

Every pod restarts instead (``JobRestarting``, from the latest checkpoint) when there is nothing
to adopt:

* the job never ran (no shard map exists yet: a fresh start is as good and simpler);
* a node of the job exited 0 while no coordinator had decided the job's outcome: the lost
  coordinator ended the job on its way out (a coordinator asked to stop shuts its nodes down),
  so the nodes that would rejoin are gone.
"""

from __future__ import annotations

from dataclasses import replace

from dynaps.contract import JobPhase, ParameterServerJob
from dynaps_operator import names
from dynaps_operator.decisions import (
    RETRY_SECONDS,
    C,
    Deletion,
    Observed,
    Plan,
    R,
    count,
    desired_count,
    owned_pods,
)
from dynaps_operator.names import NODE_ROLES, Role
from dynaps_operator.podstate import Outcome, PodView


def nodes_can_rejoin(o: Observed, job: ParameterServerJob, p: Plan) -> bool:
    """Whether a new coordinator can adopt the job's nodes (see the module docstring)."""
    if not p.status.is_true(C.RUNNING):
        return False
    return not any(
        pod.role is not Role.COORDINATOR
        and pod.index < desired_count(job, pod.role, p.status)
        and not pod.terminating
        and pod.outcome is Outcome.SUCCEEDED
        for pod in owned_pods(o)
    )


def replace_alone(
    o: Observed, p: Plan, coordinator: PodView | None, accounted: set[str], foreign: set[str]
) -> str:
    """Count the loss once, delete the old pod, create the new one once the old is gone.

    Returns what is being done, for the status message."""
    name = names.pod_name(o.ref.name, Role.COORDINATOR)
    if name not in accounted:
        accounted.add(name)
        what = _what_happened(name, coordinator)
        count(p, "preemptions", R.COORDINATOR_LOST, f"{what}; replacing it alone: the nodes rejoin it")
    if coordinator is not None and not coordinator.terminating:
        p.delete.append(Deletion(coordinator.name, coordinator.uid))
        return f"replacing {name}"
    if coordinator is not None or name in foreign:
        p.later(RETRY_SECONDS)
        return f"{name} is terminating"
    p.create.insert(0, (Role.COORDINATOR, 0))
    accounted.discard(name)
    return f"recreating {name}; the nodes rejoin it"


def restart_all(
    o: Observed, job: ParameterServerJob, p: Plan, coordinator: PodView | None, accounted: set[str]
) -> Plan:
    """Nothing to adopt: every pod starts again, from the latest checkpoint if any."""
    name = names.pod_name(o.ref.name, Role.COORDINATOR)
    if name not in accounted:
        accounted.add(name)
        count(p, "preemptions", R.POD_PREEMPTED, f"{_what_happened(name, coordinator)}; restarting every pod")
    alive = [pod for pod in owned_pods(o) if not pod.terminating]
    accounted.update(pod.name for pod in owned_pods(o))
    p.delete.extend(Deletion(pod.name, pod.uid) for pod in alive)
    p.memory = replace(p.memory, accounted=frozenset(accounted), last_coordinator=None)
    if not owned_pods(o):  # everything is gone: start again
        p.memory = replace(p.memory, accounted=frozenset())
        p.create = [(Role.COORDINATOR, 0)] + [
            (role, i) for role in NODE_ROLES for i in range(desired_count(job, role))
        ]
        p.update(start_time=o.now, stage=None)  # a new coordinator starts the stages afresh
    p.later(RETRY_SECONDS)
    message = "the coordinator was lost: restarting every pod" + (
        f" from checkpoint {p.restore_from}" if p.restore_from else ""
    )
    p.update(phase=JobPhase.RECOVERING, message=message)
    p.condition(C.DEGRADED, True, R.POD_PREEMPTED, message, o.now)
    if p.status.condition(C.RUNNING) is not None:
        p.condition(C.RUNNING, False, R.JOB_RESTARTING, message, o.now)
    return p


def _what_happened(name: str, coordinator: PodView | None) -> str:
    if coordinator is not None and coordinator.outcome is not None:
        return coordinator.describe_exit()
    if coordinator is not None:
        return f"pod {name} is being deleted"
    return f"pod {name} was deleted"
