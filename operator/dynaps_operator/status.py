"""Status helpers: conditions that keep their transition time, replica counts, comparisons.

Conditions follow Kubernetes' convention: ``lastTransitionTime`` changes only when ``status``
flips, so a reconcile that finds nothing new writes nothing (status is patched only when the
computed document differs from the stored one).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from dynaps.contract import (
    Condition,
    ConditionStatus,
    ConditionType,
    JobStatus,
    ReplicaStatus,
)
from dynaps_operator.podstate import PodView

ORDER = {kind: i for i, kind in enumerate(ConditionType)}


def set_condition(
    conditions: list[Condition],
    kind: ConditionType,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
) -> list[Condition]:
    """``conditions`` with ``kind`` set; the transition time moves only when the value flips."""
    status = ConditionStatus.TRUE if value else ConditionStatus.FALSE
    existing = next((c for c in conditions if c.type == kind), None)
    if existing is not None and (existing.status, existing.reason, existing.message) == (
        status,
        reason,
        message,
    ):
        return conditions
    since = existing.last_transition_time if existing is not None and existing.status == status else now
    updated = Condition(type=kind, status=status, reason=reason, message=message, last_transition_time=since)
    others = [c for c in conditions if c.type != kind]
    return sorted([*others, updated], key=lambda c: ORDER[ConditionType(c.type)])


def replica_status(desired: int, pods: Iterable[PodView], selector: str) -> ReplicaStatus:
    """Counts over the pods of one role that the spec wants (index < desired)."""
    wanted = [p for p in pods if p.index < desired and not p.terminating]
    current = sum(1 for p in wanted if p.alive)
    ready = sum(1 for p in wanted if p.alive and p.ready)
    return ReplicaStatus(
        desired=desired, current=current, ready=ready, summary=f"{ready}/{desired}", selector=selector
    )


def status_document(status: JobStatus) -> dict[str, Any]:
    """The status as stored in the resource (camelCase, no nulls)."""
    return status.to_wire()


def merge_patch(old: Any, new: Any) -> Any:
    """An RFC 7386 merge patch that turns ``old`` into ``new`` (removed keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value) if isinstance(value, dict) else value
    return patch
