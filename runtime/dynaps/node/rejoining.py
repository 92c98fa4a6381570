"""What a node tells a restarted coordinator that rebuilds the running job (REJOIN, the answer
to ADOPT; :mod:`dynaps.coordinator.adoption` is the other side)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dynaps.wire import control


def rejoin(
    heartbeat: control.Heartbeat,
    shard_map: dict[str, Any],
    highest_node_id: int,
    known: control.Membership | None,
    loss_reports: Sequence[control.TookBack | control.HandoffLost],
    members: bool,
    replicas: Sequence[control.ReplicaSynced] = (),
) -> control.Rejoin:
    """The REJOIN: with ``members``, the members and lost nodes of ``known`` (the node's last
    membership) too; always the latest loss reports that fit :data:`LOSS_REPORT_SHARDS`, and
    the synced replicas this node holds at its epoch (``replicas``)."""
    listed = known if members else None
    losses = recent_losses(loss_reports)
    return control.Rejoin(
        heartbeat=heartbeat,
        shard_map=shard_map,
        highest_node_id=highest_node_id,
        members=[(info.id, info.rank) for info in listed.nodes] if listed else [],
        member_names=[(info.id, info.name) for info in listed.nodes if info.name] if listed else [],
        members_version=known.version if known else 0,
        lost=list(listed.lost) if listed else [],
        took_back=[r for r in losses if isinstance(r, control.TookBack)],
        handoff_lost=[r for r in losses if isinstance(r, control.HandoffLost)],
        replicas=list(replicas),
    )


def recent_losses(
    reports: Sequence[control.TookBack | control.HandoffLost],
) -> list[control.TookBack | control.HandoffLost]:
    """The newest ``reports`` whose shards add up to at most
    :data:`~dynaps.wire.control.LOSS_REPORT_SHARDS` (the newest one in any case), oldest first."""
    kept: list[control.TookBack | control.HandoffLost] = []
    shards = 0
    for report in reversed(reports):
        shards += len(report.shards)
        if kept and shards > control.LOSS_REPORT_SHARDS:
            break
        kept.append(report)
    kept.reverse()
    return kept
