"""Splitting requests by destination (ps-lite's Slicer): which keys go where, and the
message each destination gets."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.wire.protocol import NO_POSITIONS, Message

Index = npt.NDArray[np.intp]


def group_by(dests: npt.NDArray[Any]) -> list[tuple[int, Index | None]]:
    """Split request indices by destination; ``None`` means "all of them" (the common case)."""
    if len(dests) == 0:
        return []
    first = dests[0]
    if len(dests) == 1 or bool((dests == first).all()):
        return [(int(first), None)]
    order = np.argsort(dests, kind="stable")
    ordered = dests[order]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    return [(int(dests[part[0]]), part) for part in np.split(order, cuts)]


def positions_of(msg: Message, idx: Index) -> npt.NDArray[np.int32]:
    """Where the keys ``msg.keys[idx]`` stand in the original request."""
    return msg.positions[idx] if msg.positions is not None else idx.astype(np.int32)


def subset(msg: Message, idx: Index, sender: int, hops: int) -> Message:
    """The part of a request that concerns ``msg.keys[idx]``, remembering positions."""
    positions = positions_of(msg, idx)
    return _part(msg, idx, sender, hops, positions if msg.type not in NO_POSITIONS else None)


def split_rows(msg: Message, dests: npt.NDArray[Any]) -> list[tuple[int, Message]]:
    """``msg`` (REPLICATE, WRITEBACK, TRANSFER: rows of keys) split by the destination of
    each key: ``msg`` itself when all go to one place, else parts that keep exactly its
    sections (its positions, if any, sliced; none added, unlike a request's parts)."""
    groups = group_by(dests)
    if len(groups) == 1 and groups[0][1] is None:
        return [(groups[0][0], msg)]
    parts = []
    for dest, idx in groups:
        assert idx is not None  # several destinations: each has its indices
        positions = None if msg.positions is None else msg.positions[idx]
        parts.append((dest, _part(msg, idx, msg.sender, msg.hops, positions)))
    return parts


def _part(msg: Message, idx: Index, sender: int, hops: int, positions: Any) -> Message:
    assert msg.keys is not None
    return Message(
        type=msg.type,
        sender=sender,
        requester=msg.requester,
        req_id=msg.req_id,
        table=msg.table,
        count=len(idx),
        aux=msg.aux,
        flags=msg.flags,  # RETRY must survive forwarding (exactly-once needs it)
        hops=hops,
        epoch=msg.epoch,
        keys=msg.keys[idx],
        positions=positions,
        values=msg.values[idx] if msg.values is not None else None,
        states=tuple(state[idx] for state in msg.states),
    )


def split(
    msg: Message,
    dests: npt.NDArray[Any],
    idx: Index | None = None,
    sender: int | None = None,
    hops: int | None = None,
) -> list[tuple[int, Message]]:
    """``msg`` split by destination: ``dests[i]`` is where ``msg.keys[idx[i]]`` goes (``idx``
    defaults to all keys).  ``msg`` itself when all its keys go to one place unchanged,
    else one :func:`subset` per destination, with positions so the replies reassemble."""
    sender = msg.sender if sender is None else sender
    hops = msg.hops if hops is None else hops
    groups = group_by(dests)
    if (
        idx is None
        and len(groups) == 1
        and groups[0][1] is None
        and sender == msg.sender
        and hops == msg.hops
    ):
        return [(groups[0][0], msg)]
    chosen = np.arange(msg.count) if idx is None else idx
    return [
        (dest, subset(msg, chosen if part is None else chosen[part], sender, hops)) for dest, part in groups
    ]
