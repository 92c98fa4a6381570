"""The coordinator's ``/status`` document, as the operator reads it (tolerant of what is missing).

The operator reads: ``phase`` (registering, prepare, running, stopping), ``exitCode`` and
``reason`` once the job ends, ``servers``/``workers`` ``.desired`` (what the coordinator is
sized for, to know whether a scale request is still pending), ``epoch``, ``shardsPerServer``
(node id -> shards) with ``members`` (id -> name), ``migrationsInFlight``, and two fields the
runtime is asked to add: ``metrics`` (name -> number, the latest the workers reported with
``ps.report``) and ``lastCheckpoint`` (``{"path": str, "time": unix seconds}``).  From
``members`` (``name``, ``role``, ``attached``, ``exitCode``) it also learns which nodes registered
and which workers' programs have not attached yet: why a job does not start.

The coordinator's termination message (``/dev/termination-log``) may hold the same document
as it was when the job ended; :func:`parse_final` reads the metrics from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class CheckpointRef:
    path: str
    time: datetime


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
    metrics: dict[str, float] = field(default_factory=dict)
    last_checkpoint: CheckpointRef | None = None
    registered: frozenset[str] = frozenset()  # names of the nodes that registered
    unattached: tuple[str, ...] = ()  # workers whose program has not connected (nor exited)

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
    names = {
        str(m.get("id")): str(m.get("name") or m.get("id"))
        for m in doc.get("members") or []
        if isinstance(m, dict) and m.get("role") == "server"
    }
    shards = {
        names.get(str(node), str(node)): int(count)
        for node, count in (doc.get("shardsPerServer") or {}).items()
        if isinstance(count, int)
    }
    exit_code = doc.get("exitCode")
    members = [m for m in doc.get("members") or [] if isinstance(m, dict)]
    return CoordinatorView(
        phase=str(doc.get("phase") or ""),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        reason=str(doc.get("reason") or ""),
        servers_desired=_desired(doc.get("servers")),
        workers_desired=_desired(doc.get("workers")),
        epoch=_int(doc.get("epoch")),
        shards_per_server=shards,
        migrations_in_flight=_int(doc.get("migrationsInFlight")),
        metrics=_metrics(doc.get("metrics")),
        last_checkpoint=_checkpoint(doc.get("lastCheckpoint")),
        registered=frozenset(str(m.get("name")) for m in members if m.get("name")),
        unattached=tuple(
            sorted(
                str(m.get("name"))
                for m in members
                if m.get("role") == "worker" and m.get("attached") is False and m.get("exitCode") is None
            )
        ),
    )


def parse_final(message: str) -> CoordinatorView | None:
    """The coordinator's final status from its termination message, if it wrote one."""
    try:
        doc = json.loads(message)
    except ValueError:
        return None
    return parse_status(doc) if isinstance(doc, dict) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _desired(role: Any) -> int | None:
    if isinstance(role, dict) and isinstance(role.get("desired"), int):
        return int(role["desired"])
    return None


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in value.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _checkpoint(value: Any) -> CheckpointRef | None:
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        return None
    stamp = value.get("time")
    if not isinstance(stamp, int | float):
        return None
    return CheckpointRef(value["path"], datetime.fromtimestamp(float(stamp), UTC))
