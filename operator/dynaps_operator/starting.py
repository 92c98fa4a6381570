"""A job that does not start: why (in one reason and one message), and the start deadline. Pure.

What holds a job up, the first that applies:

* something that keeps the operator from creating pods (:attr:`Observed.held_back`,
  :mod:`dynaps_operator.guards`): a Secret of the job's name that is not the job's
  (``SecretConflict``: a pod would mount another owner's secret), another child of the job's
  name that is someone else's (``NameConflict``), or an object a template names that the
  namespace did not mark for jobs (``ReferenceNotAllowed``), until that changes;
* a pod that cannot start (:class:`~dynaps_operator.podstate.StartProblem`: ``Unschedulable``,
  ``ImagePullBackOff``, ``ErrImagePull``, ``CreateContainerConfigError``,
  ``InitContainerFailed``, ...), quoting the pod's own message;
* every pod runs, but some nodes did not register with the coordinator (``NodesNotRegistered``);
* every node registered, but some workers' programs did not connect (``WorkersNotAttached``):
  the coordinator's ``/status`` lists them.

A node registers, and its program connects, within a second or two of its pod running: the
last two name only pods that have run for :data:`REGISTER_GRACE_SECONDS` (a healthy start
posted a Warning event for nodes still registering, one per new list of them as they came),
except in the message of a job that the start deadline fails, which names every one.

``runPolicy.startTimeoutSeconds`` bounds both kinds of waiting: a pod still ``Pending`` that long
after it was created, or a job not running that long after its pods were created (or after it
stopped running), fails the job with ``StartTimeoutExceeded`` and the reason it waited for.
"""

from __future__ import annotations

from dynaps.contract import JobStatus, ParameterServerJob
from dynaps_operator.decisions import C, Holdup, Observed, Plan, R, desired_count, owned_pods
from dynaps_operator.names import Role
from dynaps_operator.podstate import PodView

NAMES_QUOTED = 5  # pods named in one message; more are counted
REGISTER_GRACE_SECONDS = 10.0  # a running pod's node (or program) not in the job this long is named
# holdups whose message is a list that shrinks as nodes join: one Warning event per reason,
# not one per new list (the condition's message still follows the list)
PROGRESS_HOLDUPS = frozenset({R.NODES_NOT_REGISTERED, R.WORKERS_NOT_ATTACHED})


def wanted_pods(o: Observed, job: ParameterServerJob, status: JobStatus | None = None) -> list[PodView]:
    """The job's pods that the spec (and, with stages, ``status``) wants and that are not going away."""
    return [
        pod
        for pod in owned_pods(o)
        if pod.index < desired_count(job, pod.role, status) and not pod.terminating
    ]


def holdup(o: Observed, wanted: list[PodView], grace: float = REGISTER_GRACE_SECONDS) -> Holdup | None:
    """What the job waits for that will not come by itself (None: nothing, or just starting);
    nodes and programs are named once their pods have run for ``grace`` seconds."""
    if o.held_back is not None:
        return o.held_back
    stuck = [pod for pod in wanted if pod.alive and pod.start_problem is not None]
    if stuck:
        problems = [pod.start_problem for pod in stuck if pod.start_problem is not None]
        message = "; ".join(problem.message for problem in problems[:NAMES_QUOTED])
        if len(problems) > NAMES_QUOTED:
            message += f"; and {len(problems) - NAMES_QUOTED} more pods"
        return Holdup(problems[0].reason, message)
    c = o.coordinator
    if c is None or c.running or c.ending or c.phase == "adopting":
        return None
    if not all(pod.alive and pod.phase == "Running" for pod in wanted):
        return None  # still starting
    overdue = {pod.name for pod in wanted if _running_for(o, pod, grace)}
    unregistered = [
        pod.name for pod in wanted if pod.role is not Role.COORDINATOR and pod.name not in c.registered
    ]
    missing = [name for name in unregistered if name in overdue]
    if missing:
        return Holdup(
            R.NODES_NOT_REGISTERED,
            f"pods {_names(missing)} run but their nodes have not registered with the coordinator",
        )
    if unregistered:
        return None  # still registering
    unattached = [name for name in c.unattached if name in overdue]
    if unattached:
        return Holdup(
            R.WORKERS_NOT_ATTACHED,
            f"the programs of workers {_names(unattached)} have not connected to the job (dynaps.connect())",
        )
    return None


def _running_for(o: Observed, pod: PodView, seconds: float) -> bool:
    """Whether ``pod`` has run for ``seconds`` (or since when is not known)."""
    return pod.running_since is None or (o.now - pod.running_since).total_seconds() >= seconds


def start_deadline(
    o: Observed, job: ParameterServerJob, p: Plan, wanted: list[PodView], held: Holdup | None
) -> str:
    """Why the job fails for starting too slowly ("" while it may still wait; then ``p.later``
    is set to look again when the deadline comes)."""
    timeout = job.spec.run_policy.start_timeout_seconds
    if not timeout:
        return ""
    limit = f"within runPolicy.startTimeoutSeconds ({timeout} s)"
    for pod in wanted:
        if not pod.alive or pod.phase != "Pending" or pod.created_at is None:
            continue
        left = timeout - (o.now - pod.created_at).total_seconds()
        if left <= 0:
            why = pod.start_problem.message if pod.start_problem else f"pod {pod.name} is still Pending"
            return f"pod {pod.name} did not start {limit}: {why}"
        p.later(left)
    if p.status.is_true(C.RUNNING) or p.status.start_time is None:
        return ""  # running, or no pods were created yet
    start = p.status.start_time
    running = p.status.condition(C.RUNNING)
    if running is not None:  # it stopped running then (or never ran)
        start = max(start, running.last_transition_time)
    left = timeout - (o.now - start).total_seconds()
    if left <= 0:
        why = held.message if held else "the pods did not all start and register"
        return f"the job did not start {limit}: {why}"
    p.later(left)
    return ""


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_QUOTED])
    return shown + (f" and {len(names) - NAMES_QUOTED} more" if len(names) > NAMES_QUOTED else "")
