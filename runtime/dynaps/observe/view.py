"""One picture of a job, whichever source it comes from.

:func:`from_coordinator` reads a coordinator's ``/status`` document (a local run, or any
coordinator reached over HTTP); :func:`from_kubernetes` reads a ParameterServerJob as
``kubectl get -o json`` prints it, with its pods and events. Both tolerate missing fields:
a job that has just been created has no status yet, and an older operator or coordinator
may not write every field this version knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from dynaps.contract import JobStatus
from dynaps.errors import DynapsError

ROLES = ("coordinator", "server", "worker")
LABEL_JOB = "dynaps.io/job"  # the operator's labels on a job's pods (dynaps_operator.names)
LABEL_ROLE = "dynaps.io/role"
MAX_EVENTS = 5  # the latest events shown under a Kubernetes job


class BadDocumentError(DynapsError):
    """A status document that is not what its source should have sent."""


@dataclass(frozen=True)
class Member:
    """One process of the job (a coordinator member, or a pod)."""

    name: str
    role: str  # coordinator, server or worker
    state: str  # what it is doing, in a few words


@dataclass(frozen=True)
class ConditionLine:
    type: str
    status: str
    reason: str
    message: str
    since: float | None  # unix seconds of the last transition


@dataclass(frozen=True)
class Count:
    ready: int
    desired: int
    finished: int | None = None  # workers whose program exited (coordinator only)


@dataclass(frozen=True)
class JobView:
    job: str
    where: str  # "namespace ns" or the coordinator's address
    phase: str
    message: str = ""
    conditions: tuple[ConditionLine, ...] = ()
    counts: dict[str, Count] = field(default_factory=dict)  # "servers"/"workers"
    members: tuple[Member, ...] = ()
    shard_epoch: int = 0  # of the committed shard map
    shards_per_server: dict[str, int] = field(default_factory=dict)  # server name -> shards
    migrations_in_flight: int = 0
    unsynced_shards: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    data_shards: dict[int, tuple[int, int]] = field(default_factory=dict)  # epoch -> (done, total)
    losses: tuple[str, ...] = ()  # one line per data-loss entry (the latest)
    loss_entries: int = 0  # over the job's life
    loss_keys: int = 0
    started: float | None = None  # unix seconds
    finished: float | None = None
    restarts: int = 0
    last_checkpoint: str = ""
    events: tuple[str, ...] = ()  # the latest, oldest first

    @property
    def member_names(self) -> dict[str, list[str]]:
        return {role: [m.name for m in self.members if m.role == role] for role in ROLES}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _metrics(value: Any) -> dict[str, float]:
    numbers = {str(k): _number(v) for k, v in _dict(value).items()}
    return {k: v for k, v in numbers.items() if v is not None}


def _count(value: Any, ready: str = "ready") -> Count:
    doc = _dict(value)
    finished = doc.get("finished")
    return Count(
        _int(doc.get(ready)), _int(doc.get("desired")), finished if isinstance(finished, int) else None
    )


def from_coordinator(doc: Any, where: str) -> JobView:
    """The view of a coordinator's ``/status`` document."""
    if not isinstance(doc, dict) or "phase" not in doc:
        raise BadDocumentError(f"{where} answered something other than a dynaps /status document")
    members = [m for m in _list(doc.get("members")) if isinstance(m, dict)]
    names = {str(m.get("id")): str(m.get("name") or m.get("id")) for m in members}
    phase = str(doc.get("phase"))
    exit_code = doc.get("exitCode")
    message = str(doc.get("reason") or "")
    if isinstance(exit_code, int):
        message = f"exit code {exit_code}" + (f": {message}" if message else "")
    data_shards: dict[int, tuple[int, int]] = {}
    for epoch, leases in _dict(doc.get("dataShards")).items():
        if str(epoch).isdigit():
            data_shards[int(epoch)] = (_int(_dict(leases).get("done")), _int(_dict(leases).get("shards")))
    checkpoint = _dict(doc.get("lastCheckpoint"))
    totals = _dict(doc.get("dataLossTotal"))
    started = _number(doc.get("startedAt"))
    return JobView(
        job=str(doc.get("job") or ""),
        where=where,
        phase=phase,
        message=message,
        counts={"servers": _count(doc.get("servers")), "workers": _count(doc.get("workers"))},
        members=tuple(sorted((_coordinator_member(m) for m in members), key=_member_order)),
        shard_epoch=_int(doc.get("epoch")),
        shards_per_server={
            names.get(str(node), f"node {node}"): count
            for node, count in _dict(doc.get("shardsPerServer")).items()
            if isinstance(count, int)
        },
        migrations_in_flight=_int(doc.get("migrationsInFlight")),
        unsynced_shards=_int(_dict(doc.get("replication")).get("unsynced")),
        metrics=_metrics(doc.get("metrics")),
        data_shards=data_shards,
        losses=tuple(str(_dict(e).get("message") or e) for e in _list(doc.get("dataLoss"))),
        loss_entries=_int(totals.get("entries")),
        loss_keys=_int(totals.get("keys")),
        started=started,
        last_checkpoint=str(checkpoint.get("path") or ""),
    )


def _coordinator_member(member: dict[str, Any]) -> Member:
    role = str(member.get("role") or "?")
    state = str(member.get("state") or "?")
    if role == "worker":
        exit_code = member.get("exitCode")
        if isinstance(exit_code, int):
            state = f"program exited {exit_code}"
        elif member.get("attached"):
            state += ", program attached"
        else:
            state += ", program not attached"
    rank = member.get("rank")
    if isinstance(rank, int) and role == "worker":
        state += f" (rank {rank})"
    return Member(str(member.get("name") or member.get("id")), role, state)


def from_kubernetes(job: Any, pods: list[Any], events: list[Any]) -> JobView:
    """The view of a ParameterServerJob (``kubectl get -o json``), its pods and its events."""
    if not isinstance(job, dict):
        raise BadDocumentError("kubectl printed something other than a ParameterServerJob")
    meta = _dict(job.get("metadata"))
    try:
        status = JobStatus.model_validate(_dict(job.get("status")))
    except ValidationError as exc:
        raise BadDocumentError(f"the job's status does not follow the CRD: {exc.errors()[0]['msg']}") from exc
    conditions = tuple(
        ConditionLine(str(c.type), str(c.status), c.reason, c.message, c.last_transition_time.timestamp())
        for c in status.conditions
    )
    loss = status.data_loss
    checkpoint = status.last_checkpoint
    return JobView(
        job=str(meta.get("name") or ""),
        where=f"namespace {meta.get('namespace') or '?'}",
        phase=str(status.phase),
        message=status.message,
        conditions=conditions,
        counts={
            "servers": Count(status.servers.ready, status.servers.desired),
            "workers": Count(status.workers.ready, status.workers.desired),
        },
        members=tuple(sorted((_pod_member(p) for p in pods if isinstance(p, dict)), key=_member_order)),
        shard_epoch=status.ownership.epoch,
        shards_per_server=dict(status.ownership.shards_per_server),
        migrations_in_flight=status.ownership.migrations_in_flight,
        unsynced_shards=status.ownership.unsynced_shards,
        metrics=dict(status.final_quality or status.metrics),
        losses=tuple(e.message or f"{e.keys} keys of {e.server} ({e.cause})" for e in loss.recent)
        if loss
        else (),
        loss_entries=loss.entries if loss else 0,
        loss_keys=loss.keys if loss else 0,
        started=_timestamp(status.start_time),
        finished=_timestamp(status.completion_time),
        restarts=status.restarts,
        last_checkpoint=checkpoint.path if checkpoint else "",
        events=tuple(_event_line(e) for e in _latest(events)),
    )


def _timestamp(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def member_order(role: str, name: str) -> tuple[int, int, str]:
    """Coordinator, servers, workers; by index within a role (worker-2 before worker-10)."""
    index = name.rsplit("-", 1)[-1]
    return ROLES.index(role) if role in ROLES else len(ROLES), int(index) if index.isdigit() else -1, name


def _member_order(member: Member) -> tuple[int, int, str]:
    return member_order(member.role, member.name)


def _pod_member(pod: dict[str, Any]) -> Member:
    """A pod's role (its label) and state, as ``kubectl get pods`` would summarise it."""
    meta, status = _dict(pod.get("metadata")), _dict(pod.get("status"))
    role = str(_dict(meta.get("labels")).get(LABEL_ROLE) or "?")
    state = str(status.get("phase") or "Unknown")
    if meta.get("deletionTimestamp"):
        state = "Terminating"
    containers = [c for c in _list(status.get("containerStatuses")) if isinstance(c, dict)]
    restarts = sum(_int(c.get("restartCount")) for c in containers)
    for container in containers:
        current = _dict(container.get("state"))
        waiting, terminated = _dict(current.get("waiting")), _dict(current.get("terminated"))
        if waiting.get("reason"):
            state += f" ({waiting['reason']})"
        elif terminated:
            state += f" (exit {_int(terminated.get('exitCode'))}"
            state += f", {terminated['reason']})" if terminated.get("reason") else ")"
    if state.startswith("Running"):
        ready = all(c.get("ready") for c in containers) and bool(containers)
        state += ", ready" if ready else ", not ready"
    if restarts:
        state += f", {restarts} restart{'s' if restarts != 1 else ''}"
    return Member(str(meta.get("name") or "?"), role, state)


def _latest(events: list[Any]) -> list[dict[str, Any]]:
    def when(event: dict[str, Any]) -> str:
        return str(event.get("lastTimestamp") or event.get("eventTime") or "")

    return sorted((e for e in events if isinstance(e, dict)), key=when)[-MAX_EVENTS:]


def _event_line(event: dict[str, Any]) -> str:
    count = _int(event.get("count"), 1)
    times = f" (x{count})" if count > 1 else ""
    return (
        f"{event.get('type') or 'Normal'} {event.get('reason') or '?'}: {event.get('message') or ''}{times}"
    )
