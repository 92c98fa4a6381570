"""Splitting requests: by destination, and into the part that concerns some of the keys."""

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


def subset(msg: Message, idx: Index, sender: int, hops: int) -> Message:
    """The part of a request that concerns ``msg.keys[idx]``, remembering positions."""
    assert msg.keys is not None
    positions = msg.positions[idx] if msg.positions is not None else idx.astype(np.int32)
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
        positions=positions if msg.type not in NO_POSITIONS else None,
        values=msg.values[idx] if msg.values is not None else None,
        states=tuple(state[idx] for state in msg.states),
    )
