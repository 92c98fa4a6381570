"""Membership as deltas: what the coordinator sends when the job changes, and how a process
follows it.

Sending the whole membership (every node, the whole shard map) to every process on every
change costs O(N) bytes to each of O(N) processes: 180 MB per change at 1,000 nodes
(bench/README.md).  A change touches a node or two and the shard rows that moved, so the
coordinator sends that (:class:`~dynaps.wire.control.MembershipDelta`, built by
:func:`diff`), with the version it applies to; each process keeps its last membership and
applies the delta to it (:func:`apply`, which checks it against what it holds).  The whole
document still goes to a process that has none (a joiner, a training process that just
registered) and to one that missed a version: its :class:`Follower` sees a delta whose base
is not the version it holds and asks for it (MEMBERSHIP_QUERY).

The coordinator may have sent a joiner a whole document between two announcements, one that
differs from what the others hold at the same version; :func:`diff` therefore takes every
document sent since the last announcement and lists whatever differs from any of them.  As
every field of a delta is an absolute value, applying it to any of them gives the new one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.errors import ProtocolError
from dynaps.wire import shard_rows
from dynaps.wire.control import Membership, MembershipDelta, NodeInfo

log = logging.getLogger(__name__)

ASK_AGAIN_SECONDS = 1.0  # a process behind asks for the whole membership at most this often
# a change that moves more shards goes whole: as JSON lists a delta's rows cost up to 40
# bytes a shard, at a million shards past the bound of a body; the packed map stays inside
DELTA_SHARDS_MAX = 1 << 16


def _shape(shard_map: dict[str, Any]) -> tuple[Any, ...]:
    """What a delta cannot change: the number of shards, the partition, the backup width."""
    return shard_map.get("numShards"), shard_map.get("partition"), shard_map.get("backupWidth")


def _columns(shard_map: dict[str, Any]) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16] | None]:
    """A shard map's homes and (with replication) backup rows, unpacked."""
    num_shards = int(shard_map["numShards"])
    homes = shard_rows.unpack(shard_map["homes"], num_shards)
    width = shard_map.get("backupWidth")
    if width is None:
        return homes, None
    return homes, shard_rows.unpack(shard_map["backups"], num_shards * int(width)).reshape(num_shards, -1)


def diff(bases: Sequence[Membership], new: Membership) -> MembershipDelta | None:
    """The delta that turns each of ``bases`` (one version, as sent since the last
    announcement) into ``new``; None where a delta cannot say it (another coordinator, a
    different shard-map shape, a node no longer lost) or would be large (more than
    DELTA_SHARDS_MAX shards moved): send the whole document then."""
    if not bases or any(b.incarnation != new.incarnation or b.version != bases[0].version for b in bases):
        return None
    new_map = new.shard_map
    if any(_shape(b.shard_map) != _shape(new_map) for b in bases):
        return None
    new_lost = set(new.lost)
    if any(not set(b.lost) <= new_lost for b in bases):
        return None
    homes, backups = _columns(new_map)
    moved = np.zeros(len(homes), dtype=bool)
    for base in bases:
        old_homes, old_backups = _columns(base.shard_map)
        moved |= old_homes != homes
        if backups is not None and old_backups is not None:
            moved |= (old_backups != backups).any(axis=1)
    shards = np.flatnonzero(moved)
    if len(shards) > DELTA_SHARDS_MAX:
        return None
    nodes = {info.id: info for info in new.nodes}
    changed: dict[int, NodeInfo] = {}
    removed: set[int] = set()
    lost: set[int] = set()
    for base in bases:
        held = {info.id: info for info in base.nodes}
        changed.update((i, info) for i, info in nodes.items() if held.get(i) != info)
        removed.update(i for i in held if i not in nodes)
        lost.update(new_lost - set(base.lost))
    return MembershipDelta(
        base=bases[0].version,
        version=new.version,
        incarnation=new.incarnation,
        phase=new.phase,
        num_workers=new.num_workers,
        changed=[nodes[i] for i in nodes if i in changed],  # in the membership's order
        removed=sorted(removed),
        lost=sorted(lost),
        epoch=int(new_map["epoch"]),
        shards=shards.tolist(),
        homes=homes[shards].tolist(),
        backups=None if backups is None else backups[shards].tolist(),
    )


def apply(base: Membership, delta: MembershipDelta) -> Membership:
    """``base`` changed by ``delta``, checked against it: ProtocolError when the delta names
    a node it does not know, a lost node again, a shard out of range or of another shape."""
    if delta.base != base.version or delta.incarnation != base.incarnation:
        raise ProtocolError(
            f"membership delta {delta.base}->{delta.version} does not apply to {base.version}"
        )
    held = {info.id: info for info in base.nodes}
    lost = set(base.lost)
    unknown = [i for i in delta.removed if i not in held]
    if unknown:
        raise ProtocolError(f"membership delta removes nodes it does not list: {unknown[:5]}")
    returning = [info.id for info in delta.changed if info.id in lost]
    if returning:
        raise ProtocolError(f"membership delta lists lost nodes again: {returning[:5]}")
    removed = set(delta.removed)
    changed = {info.id: info for info in delta.changed}
    nodes = [changed.pop(info.id, info) for info in base.nodes if info.id not in removed]
    nodes.extend(changed.values())  # joined
    ids = {info.id for info in nodes}
    strangers = [i for i in delta.lost if i not in held or i in ids]
    if strangers:
        raise ProtocolError(f"membership delta declares lost nodes it does not remove: {strangers[:5]}")
    shard_map = dict(base.shard_map)
    num_shards, _, width = _shape(shard_map)
    if delta.epoch < int(shard_map["epoch"]):
        raise ProtocolError(f"membership delta goes back to epoch {delta.epoch}")
    if delta.shards:
        if max(delta.shards) >= num_shards:
            raise ProtocolError(f"membership delta names shard {max(delta.shards)} of {num_shards}")
        # nodes this process knows of: a lost server homes its shards until another joins
        known = ids | set(held) | lost
        strange = set(delta.homes) - known
        if strange:
            raise ProtocolError(f"membership delta homes shards on unknown nodes: {sorted(strange)[:5]}")
        homes, backups = _columns(shard_map)
        homes[delta.shards] = delta.homes
        shard_map["homes"] = shard_rows.pack(homes)
        if (delta.backups is None) != (width is None):
            raise ProtocolError("membership delta's backups do not match the shard map's")
        if delta.backups is not None:
            if any(len(row) != width for row in delta.backups):
                raise ProtocolError(f"membership delta's backup rows are not {width} wide")
            strange = {b for row in delta.backups for b in row} - known - {shard_rows.NO_BACKUP}
            if strange:
                raise ProtocolError(
                    f"membership delta backs shards up on unknown nodes: {sorted(strange)[:5]}"
                )
            assert backups is not None
            rows = np.asarray(delta.backups, dtype=np.int16).reshape(len(delta.shards), width)
            if not (backups[delta.shards] == rows).all():  # most moves keep their backups
                backups[delta.shards] = rows
                shard_map["backups"] = shard_rows.pack(backups)
    shard_map["epoch"] = delta.epoch
    return base.model_copy(
        update={
            "version": delta.version,
            "phase": delta.phase,
            "nodes": nodes,
            "shard_map": shard_map,
            "num_workers": delta.num_workers,
            "lost": [*base.lost, *delta.lost],
        }
    )


class Follower:
    """The membership a process last applied, and the next one a delta makes of it.

    ``ask`` sends MEMBERSHIP_QUERY to the coordinator with the version held (0: none); a
    process behind asks again at most every :data:`ASK_AGAIN_SECONDS` while deltas it cannot
    apply keep arriving, and the whole document it then gets is applied like any other.
    """

    def __init__(self, ask: Callable[[int], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.current: Membership | None = None
        self.asked = 0  # how often it asked for the whole document
        self._ask = ask
        self._clock = clock
        self._asked_at: float | None = None

    def took(self, membership: Membership) -> None:
        """The process applied ``membership`` (a whole one, or what :meth:`next` made)."""
        self.current = membership
        self._asked_at = None

    def next(self, delta: MembershipDelta) -> Membership | None:
        """The membership ``delta`` leads to, or None (old news, or a version was missed: the
        whole document is asked for).  A delta that does not fit what is held raises
        ProtocolError, after asking."""
        current = self.current
        if current is not None and current.incarnation == delta.incarnation:
            if delta.version <= current.version:
                return None  # the whole document asked for already covered it
            if delta.base == current.version:
                try:
                    return apply(current, delta)
                except ProtocolError:
                    self._behind(current)
                    raise
        self._behind(current)
        return None

    def _behind(self, current: Membership | None) -> None:
        now = self._clock()
        if self._asked_at is not None and now - self._asked_at < ASK_AGAIN_SECONDS:
            return
        self._asked_at = now
        self.asked += 1
        version = current.version if current is not None else 0
        log.info("membership: version %d held, a later delta does not apply: asking for the whole", version)
        self._ask(version)
