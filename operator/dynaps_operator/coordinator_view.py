"""The coordinator's ``/status`` document, as the operator reads it (tolerant of what is missing).

The operator reads: ``phase`` (registering, prepare, running, stopping), ``exitCode`` and
``reason`` once the job ends, ``servers``/``workers`` ``.desired`` (what the coordinator is
sized for, to know whether a scale request is still pending), ``epoch``, ``shardsPerServer``
(node id -> shards) with ``members`` (id -> name), ``migrationsInFlight``, ``replication.unsynced``
(shards whose backups are not synced yet), and two fields the
runtime is asked to add: ``stage`` (with ``spec.stages``: the stage the job is in, its
progress and worker count), ``metrics`` (name -> number, the latest the workers reported with
``ps.report``) and ``lastCheckpoint`` (``{"path": str, "time": unix seconds}``).  From
``members`` (``name``, ``role``, ``attached``, ``exitCode``) it also learns which nodes registered
and which workers' programs have not attached yet: why a job does not start.  ``dataLoss``
lists the recoveries that restored keys from other than a synced replica (cause, lost server,
shards, keys, checkpoint age); the operator keeps only the latest :data:`MAX_LOSSES` of them
and the first :data:`MAX_SHARDS` shards of each, whatever the coordinator sends.

Whatever the coordinator sends (its image may be the job author's own), the view is bounded:
it is kept per job until the next poll, and parts of it go into the job's status.  At most
``MAX_NODES`` members and ``shardsPerServer`` entries are read, a member's name must be a
pod name (at most 63 characters) and its id an integer, the metrics are the runtime's
``MAX_REPORTED_NAMES`` of at most ``MAX_REPORTED_NAME_LENGTH`` characters, and texts are cut.

The coordinator's termination message (``/dev/termination-log``) may hold the same document
as it was when the job ended; :func:`parse_final` reads the metrics from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from pydantic import ValidationError

from dynaps.contract import MAX_NODES, MAX_REPORTED_NAME_LENGTH, MAX_REPORTED_NAMES, StageStatus
from dynaps_operator.names import MAX_HOSTNAME


@dataclass(frozen=True)
class CheckpointRef:
    path: str
    time: datetime


MAX_LOSSES = 32  # dataLoss entries read per poll (the latest): more is never new since the last
MAX_SHARDS = 8  # shards kept per entry: enough to tell entries apart and to show where
MAX_MESSAGE = 300  # characters kept of an entry's message
MAX_TEXT = 1000  # characters kept of the coordinator's reason (it reaches the job's status)
MAX_PATH = 4096  # characters of a checkpoint's path (PATH_MAX)
_MAX_ID_DIGITS = 6  # a node id as text (int16 on the wire)


@dataclass(frozen=True)
class Loss:
    """One entry of ``dataLoss``."""

    cause: str  # checkpoint, initial or replicas-exhausted
    node: int  # the lost server's node id
    epoch: int
    shard_count: int
    shards: tuple[int, ...]  # the first MAX_SHARDS
    keys: int
    counted: bool  # keys is what the new home rebuilt, not the shards' size
    time: datetime
    checkpoint_age: float | None
    message: str


@dataclass(frozen=True)
class CoordinatorView:
    phase: str = ""
    exit_code: int | None = None
    reason: str = ""
    servers_desired: int | None = None
    workers_desired: int | None = None
    epoch: int = 0
    shards_per_server: dict[str, int] = field(default_factory=dict)
    migrations_in_flight: int = 0
    unsynced_shards: int = 0  # replication.unsynced: shards whose backups are not synced yet
    metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint: CheckpointRef | None = None
    registered: frozenset[str] = frozenset()  # names of the nodes that registered
    unattached: tuple[str, ...] = ()  # workers whose program has not connected (nor exited)
    node_names: dict[int, str] = field(default_factory=dict)  # node id -> pod name (every role)
    losses: tuple[Loss, ...] = ()  # the latest dataLoss entries, oldest first
    # data-shard pieces no worker has leased yet, over the epochs the coordinator tracks: the
    # work waiting for a worker (dataShards: epoch -> shards/done/held/free)
    data_shards_free: int = 0
    stage: StageStatus | None = None  # spec.stages: the stage the job is in

    @property
    def running(self) -> bool:
        return self.phase == "running"

    @property
    def ending(self) -> bool:
        """The coordinator decided the job's outcome and is shutting the nodes down."""
        return self.phase == "stopping" or self.exit_code is not None


def parse_status(doc: Any) -> CoordinatorView:
    if not isinstance(doc, dict):
        return CoordinatorView()
    listed = doc.get("members")
    members = [
        (m, name)
        for m in (listed[:MAX_NODES] if isinstance(listed, list) else [])
        if isinstance(m, dict) and (name := _member_name(m))
    ]
    names = {str(m["id"]): name for m, name in members if m.get("role") == "server" and _is_int(m.get("id"))}
    per_server = doc.get("shardsPerServer")
    shards = {
        names.get(node, node): count
        for node, count in (islice(per_server.items(), MAX_NODES) if isinstance(per_server, dict) else ())
        if isinstance(node, str) and node.isdigit() and len(node) <= _MAX_ID_DIGITS and _is_int(count)
    }
    exit_code = doc.get("exitCode")
    return CoordinatorView(
        phase=str(doc.get("phase") or "")[:MAX_MESSAGE],
        exit_code=exit_code if _is_int(exit_code) else None,
        reason=str(doc.get("reason") or "")[:MAX_TEXT],
        servers_desired=_desired(doc.get("servers")),
        workers_desired=_desired(doc.get("workers")),
        epoch=_int(doc.get("epoch")),
        shards_per_server=shards,
        migrations_in_flight=_int(doc.get("migrationsInFlight")),
        unsynced_shards=_unsynced(doc.get("replication")),
        metrics=_metrics(doc.get("metrics")),
        last_checkpoint=_checkpoint(doc.get("lastCheckpoint")),
        registered=frozenset(name for m, name in members if m.get("name")),
        unattached=tuple(
            sorted(
                name
                for m, name in members
                if m.get("role") == "worker" and m.get("attached") is False and m.get("exitCode") is None
            )
        ),
        node_names={int(m["id"]): name for m, name in members if _is_int(m.get("id"))},
        losses=_losses(doc.get("dataLoss")),
        data_shards_free=_free_shards(doc.get("dataShards")),
        stage=_stage(doc.get("stage")),
    )


def parse_final(message: str) -> CoordinatorView | None:
    """The coordinator's final status from its termination message, if it wrote one."""
    try:
        doc = json.loads(message)
    except ValueError:
        return None
    return parse_status(doc) if isinstance(doc, dict) else None


def _member_name(member: dict[str, Any]) -> str:
    """A member's name (else its id), "" unless it can be a pod's: no pod has a longer name."""
    name = str(member.get("name") or member.get("id"))
    return name if len(name) <= MAX_HOSTNAME else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _free_shards(epochs: Any) -> int:
    if not isinstance(epochs, dict):
        return 0
    return sum(_int(counts.get("free")) for counts in epochs.values() if isinstance(counts, dict))


def _unsynced(replication: Any) -> int:
    return _int(replication.get("unsynced")) if isinstance(replication, dict) else 0


def _desired(role: Any) -> int | None:
    if isinstance(role, dict) and isinstance(role.get("desired"), int):
        return int(role["desired"])
    return None


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    numbers = (
        (k, _finite(v)) for k, v in value.items() if isinstance(k, str) and len(k) <= MAX_REPORTED_NAME_LENGTH
    )
    return dict(islice(((k, v) for k, v in numbers if v is not None), MAX_REPORTED_NAMES))


def _checkpoint(value: Any) -> CheckpointRef | None:
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        return None
    stamp = _time(value.get("time"))
    if stamp is None or len(value["path"]) > MAX_PATH:
        return None
    return CheckpointRef(value["path"], stamp)


def _time(value: Any) -> datetime | None:
    """Unix seconds as a time; None when not a number or out of range."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _finite(value: Any) -> float | None:
    """A finite number (a metric, seconds), or None."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def _stage(value: Any) -> StageStatus | None:
    if not isinstance(value, dict):
        return None
    fields = ("name", "index", "count", "unit", "done", "length", "workers", "progress")
    try:
        stage = StageStatus.model_validate({key: value[key] for key in fields if key in value})
    except ValidationError:
        return None
    # bounded, whatever the coordinator sends: it ends up in the job's status
    return stage.model_copy(
        update={"name": stage.name[:63], "unit": stage.unit[:8], "progress": stage.progress[:40]}
    )


def _losses(value: Any) -> tuple[Loss, ...]:
    if not isinstance(value, list):
        return ()
    parsed = (_loss(entry) for entry in value[-MAX_LOSSES:])
    return tuple(loss for loss in parsed if loss is not None)


def _loss(entry: Any) -> Loss | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("cause"), str):
        return None
    node, stamp, shards = entry.get("server"), _time(entry.get("time")), entry.get("shards")
    if not isinstance(node, int) or stamp is None or not isinstance(shards, list):
        return None
    return Loss(
        cause=entry["cause"][:40],
        node=node,
        epoch=_int(entry.get("epoch")),
        # the coordinator lists the first shards and counts them all (shardCount)
        shard_count=_int(entry.get("shardCount")) or len(shards),
        shards=tuple(s for s in shards[:MAX_SHARDS] if isinstance(s, int)),
        keys=_int(entry.get("keys")),
        counted=entry.get("keysCounted") is True,
        # whole seconds, as the job's status stores times: an entry read back compares equal
        time=stamp.replace(microsecond=0),
        checkpoint_age=_finite(entry.get("checkpointAgeSeconds")),
        message=str(entry.get("message") or "")[:MAX_MESSAGE],
    )
