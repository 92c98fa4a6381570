"""What a node does when other nodes leave or die, and when it leaves itself.

* Nodes that **left** gracefully handed their keys back first; the location caches that
  still point at them are pointed back at the keys' homes (:func:`forget_departed`).
* Nodes that **died** held keys a home must take back, with the home's last copy of
  their values, and were sending keys to nodes that now wait for them; the home re-sends
  its own copy of those (:func:`take_back_from_lost`).  Rebuilding the shards a dead
  *server* homed is :mod:`dynaps.node.recovery`'s job.
* A node that **drains** gives every key it holds back to the key's home
  (:func:`release_owned`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from dynaps.node.recovery import resend_copies
from dynaps.store.table_store import INCOMING, NOT_MOVING
from dynaps.wire.protocol import Message, MsgType, client_of, node_of
from dynaps.wire.routing import group_by

if TYPE_CHECKING:
    from dynaps.node.server import NodeServer

log = logging.getLogger(__name__)

RELOCATION_FENCE = 2.0  # seconds without relocations after a node is lost (see ``fenced_until``)


def forget_departed(server: NodeServer, departed: set[int]) -> None:
    """Nodes left gracefully: point cached owners of theirs back at the keys' homes."""
    if not departed:
        return
    gone = np.asarray(sorted(departed), dtype=np.int16)
    for store in server.stores:
        server.lock.acquire()
        try:
            stale = np.flatnonzero(np.isin(store.loc, gone))
            guess = server.shard_map.home_of(stale.astype(np.int64), store.spec.num_keys)
            if store.owner is not None:
                # at their home, the directory knows the owner; the home's own id in
                # loc would mean "owned here", which only a transfer may write
                homed = guess == server.me
                guess[homed] = store.owner[stale[homed]]
                keep = guess == server.me
                stale, guess = stale[~keep], guess[~keep]
            store.loc[stale] = guess
        finally:
            server.lock.release()


def take_back_from_lost(server: NodeServer, lost: set[int]) -> None:
    """Nodes died: a home takes back the keys they held (its last copy of their values)
    and re-sends the keys they were sending to nodes that wait for them."""
    new = lost - server.lost
    if not new:
        return
    server.lost |= new
    if any(store.owner is not None for store in server.stores):
        server.fenced_until = time.monotonic() + RELOCATION_FENCE
    dead = np.asarray(sorted(new), dtype=np.int16)
    for node in new:
        server.transport.forget(node)
        server.transport.forget(client_of(node))
        server.recoveries.forget_node(node)
    for table, store in enumerate(server.stores):
        if store.owner is None or store.moving_from is None:
            continue
        homed = server.homed(table)
        server.lock.acquire()
        try:
            orphaned = np.flatnonzero(homed & np.isin(store.owner, dead))
            store.owner[orphaned] = server.me
            store.moving_from[orphaned] = NOT_MOVING
            store.loc[orphaned] = server.me
            stranded = np.flatnonzero(homed & np.isin(store.moving_from, dead))
            targets = store.owner[stranded]
            values = store.values.take(stranded, axis=0)
            states = tuple(state.take(stranded, axis=0) for state in store.states)
        finally:
            server.lock.release()
        server.stats["keys_recovered"] += len(orphaned)
        if len(orphaned) or len(stranded):
            log.warning(
                "node %d: table %s: took back %d keys of lost nodes %s, re-sent %d in flight",
                server.me,
                store.name,
                len(orphaned),
                sorted(new),
                len(stranded),
            )
        resend_copies(server, table, stranded, targets, values, states)
    for queue in server.pending:  # requests of dead clients need no answer
        queue[:] = [m for m in queue if node_of(m.requester) not in new]


def release_owned(server: NodeServer) -> int:
    """Give the keys this node holds (and does not home) back to their homes.

    Called repeatedly while draining; returns how many keys are still here or on
    their way here.  Each key is released once.
    """
    if server.released is None:
        server.released = [np.zeros(store.spec.num_keys, dtype=np.bool_) for store in server.stores]
    remaining = 0
    for table, store in enumerate(server.stores):
        server.lock.acquire()
        try:
            held = store.loc == server.me
            if store.owner is not None:
                held &= ~server.homed(table)
            remaining += int(held.sum()) + int((store.loc == INCOMING).sum())
            fresh = np.flatnonzero(held & ~server.released[table])
            server.released[table][fresh] = True
        finally:
            server.lock.release()
        if not len(fresh):
            continue
        homes = server.shard_map.home_of(fresh.astype(np.int64), store.spec.num_keys)
        for home, part in group_by(homes):
            chosen = fresh if part is None else fresh[part]
            server.send(
                home,
                Message(
                    MsgType.RELEASE, server.me, server.me, 0, table, len(chosen), keys=chosen.astype(np.int64)
                ),
            )
    return remaining
