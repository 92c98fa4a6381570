"""What an observed pod means for its job: a small view of the pod and how it ended.

Exit-reason aware, as DLRover's relaunch policy is: a pod that was evicted or preempted, has a
``DisruptionTarget`` condition, or was killed by SIGKILL/SIGTERM (exit 137/143, not an OOM kill)
was *preempted* and does not count against ``backoffLimit``; any other non-zero exit *failed*.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from dynaps_operator import names
from dynaps_operator.names import Role

PREEMPTION_EXIT_CODES = frozenset({137, 143})  # 128 + SIGKILL, 128 + SIGTERM
PREEMPTION_POD_REASONS = frozenset({"Evicted", "Preempting", "Terminated", "NodeShutdown", "Shutdown"})
MESSAGE_LIMIT = 400  # characters of a termination message quoted in Events and conditions


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"  # exit 0
    FAILED = "failed"  # counts against backoffLimit
    PREEMPTED = "preempted"  # does not count


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
        text = f"pod {self.name} exited with code {self.exit_code}"
        if self.exit_reason and self.exit_reason not in ("Error", "Completed"):
            text += f" ({self.exit_reason})"
        message = " ".join(self.exit_message.split())
        if message:
            text += ": " + (message if len(message) <= MESSAGE_LIMIT else "..." + message[-MESSAGE_LIMIT:])
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
    disrupted = conditions.get("DisruptionTarget") == "True" or (
        status.get("phase") == "Failed" and status.get("reason") in PREEMPTION_POD_REASONS
    )
    return PodView(
        name=meta.get("name", ""),
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
    )


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
