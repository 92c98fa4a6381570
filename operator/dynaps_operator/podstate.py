"""What an observed pod means for its job: a small view of the pod and how it ended.

Exit-reason aware, as DLRover's relaunch policy is: a pod that was evicted or preempted, has a
``DisruptionTarget`` condition, or was killed by SIGKILL/SIGTERM (exit 137/143, not an OOM kill)
was *preempted* and does not count against ``backoffLimit``; so was a node that exited with
``FENCED_EXIT_CODE`` (the job declared it lost while it hung, and it stopped itself: its pod is
replaced like a preempted one); any other non-zero exit *failed*.

A pod that has not started may be stuck: :class:`StartProblem` says why, in Kubernetes' own
words (``Unschedulable``, ``ImagePullBackOff``, ``CreateContainerConfigError``, ...), so the job's
conditions can quote it instead of "waiting for the pods to start".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from dynaps.contract import FENCED_EXIT_CODE
from dynaps_operator import names
from dynaps_operator.names import Role

# 128 + SIGKILL, 128 + SIGTERM, and a node that fenced itself after the job declared it lost
PREEMPTION_EXIT_CODES = frozenset({137, 143, FENCED_EXIT_CODE})
PREEMPTION_POD_REASONS = frozenset({"Evicted", "Preempting", "Terminated", "NodeShutdown", "Shutdown"})
MESSAGE_LIMIT = 400  # characters of a termination message quoted in Events and conditions
# Waiting reasons of a container that will not start by itself (the kubelet retries, in vain,
# until someone fixes the image, the ConfigMap, ...). ContainerCreating and PodInitializing are
# the normal way to start and are not listed.
STUCK_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
INIT_CONTAINER_FAILED = "InitContainerFailed"


@dataclass(frozen=True)
class StartProblem:
    """Why a pod does not start: Kubernetes' reason, and a message that names the pod."""

    reason: str
    message: str


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"  # exit 0
    FAILED = "failed"  # counts against backoffLimit
    PREEMPTED = "preempted"  # does not count
    FATAL = "fatal"  # fails the job at once (only through runPolicy.failurePolicy)


@dataclass(frozen=True)
class PodView:
    name: str
    uid: str
    role: Role
    index: int
    owner_uid: str  # uid of the controlling owner ("" when none)
    phase: str
    ready: bool
    terminating: bool
    ip: str
    exit_code: int | None  # of the main container, once it terminated
    exit_reason: str  # e.g. Completed, Error, OOMKilled
    exit_message: str  # the termination message (or, on failure, the log tail)
    finished_at: datetime | None  # when the main container terminated
    disrupted: bool  # DisruptionTarget condition, or evicted/preempted by the node
    created_at: datetime | None = None
    start_problem: StartProblem | None = None  # why it does not start (None: starting or started)
    conditions: frozenset[str] = frozenset()  # types of the pod's conditions that are True
    memory: str = ""  # the main container's memory limit, else request ("" when neither is set)
    running_since: datetime | None = None  # when the main container last started running

    @property
    def alive(self) -> bool:
        """Exists, is not going away, and has not exited."""
        return not self.terminating and self.exit_code is None and self.phase not in ("Succeeded", "Failed")

    @property
    def outcome(self) -> Outcome | None:
        """How the pod ended, or None while it runs (or is starting)."""
        if self.disrupted:
            return Outcome.PREEMPTED
        if self.exit_code is None:
            return Outcome.FAILED if self.phase == "Failed" else None
        if self.exit_code == 0:
            return Outcome.SUCCEEDED
        if self.exit_code in PREEMPTION_EXIT_CODES and self.exit_reason != "OOMKilled":
            return Outcome.PREEMPTED
        return Outcome.FAILED

    def describe_exit(self) -> str:
        if self.disrupted:
            return f"pod {self.name} was disrupted (evicted or preempted)"
        if self.exit_code is None and self.start_problem is not None:
            return self.start_problem.message  # failed before its main container ran
        text = f"pod {self.name} exited with code {self.exit_code}"
        if self.exit_reason and self.exit_reason not in ("Error", "Completed"):
            text += f" ({self.exit_reason})"
        message = _clip(self.exit_message)
        if message:
            text += ": " + message
        return text


def pod_view(pod: dict[str, Any]) -> PodView | None:
    """The view of one of a job's pods; None for a pod without our role/index labels."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        role = Role(labels.get(names.LABEL_ROLE, ""))
        index = int(labels.get(names.LABEL_INDEX, "0"))
    except ValueError:
        return None
    status = pod.get("status") or {}
    owner: dict[str, Any] = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), {})
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    exit_code, exit_reason, exit_message, finished_at = _termination(status)
    name = meta.get("name", "")
    disrupted = conditions.get("DisruptionTarget") == "True" or (
        status.get("phase") == "Failed" and status.get("reason") in PREEMPTION_POD_REASONS
    )
    return PodView(
        name=name,
        uid=meta.get("uid", ""),
        role=role,
        index=index,
        owner_uid=owner.get("uid", ""),
        phase=status.get("phase", "Pending"),
        ready=conditions.get("Ready") == "True",
        terminating=meta.get("deletionTimestamp") is not None,
        ip=status.get("podIP", ""),
        exit_code=exit_code,
        exit_reason=exit_reason,
        exit_message=exit_message,
        finished_at=finished_at,
        disrupted=disrupted,
        created_at=_time(meta.get("creationTimestamp")),
        conditions=frozenset(str(kind) for kind, value in conditions.items() if value == "True"),
        start_problem=None if exit_code is not None else start_problem(name, status),
        memory=_memory(pod.get("spec") or {}),
        running_since=_running_since(status),
    )


def _memory(spec: dict[str, Any]) -> str:
    for container in spec.get("containers") or []:
        if container.get("name") == names.CONTAINER:
            resources = container.get("resources") or {}
            for kind in ("limits", "requests"):
                value = (resources.get(kind) or {}).get("memory")
                if value is not None:
                    return str(value)
    return ""


def start_problem(name: str, status: dict[str, Any]) -> StartProblem | None:
    """Why the pod ``name`` cannot start, from its status; None when nothing holds it up."""
    for condition in status.get("conditions") or []:
        unscheduled = (condition.get("type"), condition.get("status")) == ("PodScheduled", "False")
        if unscheduled and condition.get("reason") == "Unschedulable":
            why = _clip(condition.get("message") or "no node fits")
            return StartProblem("Unschedulable", f"pod {name} cannot be scheduled: {why}")
    for kind, key in (("init container", "initContainerStatuses"), ("container", "containerStatuses")):
        for container in status.get(key) or []:
            problem = _container_problem(name, kind, container)
            if problem is not None:
                return problem
    return None


def _container_problem(pod: str, kind: str, container: dict[str, Any]) -> StartProblem | None:
    state = container.get("state") or {}
    where = f"pod {pod}: {kind} {container.get('name', '')}"
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in STUCK_WAITING_REASONS:
        message = _clip(waiting.get("message") or "")
        return StartProblem(
            waiting["reason"], f"{where}: {waiting['reason']}" + (f": {message}" if message else "")
        )
    if kind != "init container":
        return None
    # An init container that exited non-zero: the pod fails (restartPolicy Never) or the kubelet
    # restarts it in a loop; either way the main container does not start.
    terminated = state.get("terminated") or (
        (container.get("lastState") or {}).get("terminated")
        if waiting.get("reason") == "CrashLoopBackOff"
        else None
    )
    if terminated and int(terminated.get("exitCode", 0)) != 0:
        text = f"{where} exited with code {terminated.get('exitCode')}"
        message = _clip(terminated.get("message") or "")
        return StartProblem(INIT_CONTAINER_FAILED, text + (f": {message}" if message else ""))
    return None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else "..." + text[-MESSAGE_LIMIT:]


def _running_since(status: dict[str, Any]) -> datetime | None:
    for container in status.get("containerStatuses") or []:
        if container.get("name") == names.CONTAINER:
            return _time(((container.get("state") or {}).get("running") or {}).get("startedAt"))
    return None


def _termination(status: dict[str, Any]) -> tuple[int | None, str, str, datetime | None]:
    for container in status.get("containerStatuses") or []:
        if container.get("name") != names.CONTAINER:
            continue
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return (
                int(terminated.get("exitCode", 0)),
                terminated.get("reason") or "",
                terminated.get("message") or "",
                _time(terminated.get("finishedAt")),
            )
    return None, "", "", None


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
