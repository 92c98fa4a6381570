"""What a node does when other nodes leave or die, and when it leaves itself.

* Nodes that **left** gracefully handed their keys back first; the location caches that
  still point at them are pointed back at the keys' homes (:meth:`Departures.forget_departed`).
* Nodes that **died** held keys a home must take back, with the home's last copy of
  their values, and were sending keys to nodes that now wait for them; the home re-sends
  its own copy of those (:meth:`Departures.take_back_from_lost`).  Either loses what the
  dead node did to them since that copy (all of it without replication, its last flush
  interval with write-back), so the home tells the coordinator how many (TOOK_BACK), which
  counts it as data loss.  Rebuilding the shards a
  dead *server* homed is :mod:`dynaps.node.recovery`'s job.
* A node that **drains** gives every key it holds back to the key's home
  (:meth:`Departures.release_owned`).

:class:`Departures` owns what these change beyond the stores: the set of lost nodes (to
which nothing is sent any more), the relocation fence that follows a loss, and which
keys a draining node has released.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from dynaps.node.context import NodeContext
from dynaps.node.recovery import RecordsFor, resend_copies
from dynaps.store.table_store import INCOMING, NOT_MOVING
from dynaps.wire import control, messages, routing
from dynaps.wire.protocol import MsgType

log = logging.getLogger(__name__)

RELOCATION_FENCE = 2.0  # seconds without relocations after a node is lost (see ``fenced_until``)


class Departures:
    """Nodes that left or died, as this node knows them, and its own leaving."""

    def __init__(self, node: NodeContext, on_lost: Callable[[int], None], records_for: RecordsFor) -> None:
        self.node = node
        self.on_lost = on_lost  # a node died: whatever else the node must forget about it
        self.records_for = records_for  # re-sent copies carry the records of their keys
        self.lost: set[int] = set()  # nodes that died: nothing is sent to them any more
        # After a node is lost, no key changes owner for a while: requests sent again by
        # their clients must find the keys where the originals were applied (and remembered).
        self.fenced_until = 0.0
        self.released: list[npt.NDArray[np.bool_]] | None = None  # keys given back while draining

    @property
    def fenced(self) -> bool:
        return bool(self.fenced_until)

    def lift_fence(self, now: float) -> bool:
        """End the relocation fence once its time is up; returns whether it ended now."""
        if self.fenced_until and now >= self.fenced_until:
            self.fenced_until = 0.0
            return True
        return False

    def forget_departed(self, departed: set[int]) -> None:
        """Nodes left gracefully: point cached owners of theirs back at the keys' homes."""
        if not departed:
            return
        node = self.node
        gone = np.asarray(sorted(departed), dtype=np.int16)
        for store in node.stores:
            node.lock.acquire()
            try:
                stale = np.flatnonzero(np.isin(store.loc, gone))
                guess = node.shard_map.home_of(stale.astype(np.int64), store.spec.num_keys)
                if store.owner is not None:
                    # at their home, the directory knows the owner; the home's own id in
                    # loc would mean "owned here", which only a transfer may write
                    homed = guess == node.me
                    guess[homed] = store.owner[stale[homed]]
                    keep = guess == node.me
                    stale, guess = stale[~keep], guess[~keep]
                store.loc[stale] = guess
            finally:
                node.lock.release()

    def take_back_from_lost(self, lost: set[int]) -> set[int]:
        """Nodes died: a home takes back the keys they held (its last copy of their values)
        and re-sends the keys they were sending to nodes that wait for them.

        Returns the nodes not known to be lost before.  Tells the coordinator how many keys
        it took back from each (TOOK_BACK): what their holder did to them since the home's
        copy is lost.
        """
        node = self.node
        new = lost - self.lost
        if not new:
            return new
        self.lost |= new
        if any(store.owner is not None for store in node.stores):
            self.fenced_until = time.monotonic() + RELOCATION_FENCE
        dead = np.asarray(sorted(new), dtype=np.int16)
        for lost_node in new:
            self.on_lost(lost_node)
        taken: dict[int, list[npt.NDArray[np.int64]]] = {
            lost_node: [] for lost_node in new
        }  # shards, per key
        for table, store in enumerate(node.stores):
            if store.owner is None or store.moving_from is None:
                continue
            homed = node.homed(table)
            node.lock.acquire()
            try:
                orphaned = np.flatnonzero(homed & np.isin(store.owner, dead))
                holders = store.owner[orphaned]  # a copy (fancy indexing), before it changes
                store.owner[orphaned] = node.me
                store.moving_from[orphaned] = NOT_MOVING
                store.loc[orphaned] = node.me
                stranded = np.flatnonzero(homed & np.isin(store.moving_from, dead))
                targets = store.owner[stranded]
                senders = store.moving_from[stranded]
                values = store.values.take(stranded, axis=0)
                states = tuple(state.take(stranded, axis=0) for state in store.states)
            finally:
                node.lock.release()
            node.table_stats[table]["keys_recovered"] += len(orphaned)
            if len(orphaned) or len(stranded):
                log.warning(
                    "node %d: table %s: took back %d keys of lost nodes %s and re-sent %d they were sending,"
                    " with its own copy of their values (their last write-back under replication)",
                    node.me,
                    store.name,
                    len(orphaned),
                    sorted(new),
                    len(stranded),
                )
            resend_copies(node, table, stranded, targets, values, states, self.records_for)
            num_keys = store.spec.num_keys
            for lost_node, parts in taken.items():
                keys = np.concatenate((orphaned[holders == lost_node], stranded[senders == lost_node]))
                parts.append(node.shard_map.shard_of(keys.astype(np.int64), num_keys))
        for lost_node, parts in taken.items():
            shards = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            if len(shards):
                shard_list = np.unique(shards).tolist()
                epoch = node.shard_map.epoch
                node.report_loss(
                    control.TookBack(node=lost_node, keys=len(shards), shards=shard_list, epoch=epoch)
                )
        return new

    def release_owned(self) -> int:
        """Give the keys this node holds (and does not home) back to their homes.

        Called repeatedly while draining; returns how many keys are still here or on
        their way here.  Each key is released once.
        """
        node = self.node
        if self.released is None:
            self.released = [np.zeros(store.spec.num_keys, dtype=np.bool_) for store in node.stores]
        remaining = 0
        for table, store in enumerate(node.stores):
            node.lock.acquire()
            try:
                held = store.loc == node.me
                if store.owner is not None:
                    held &= ~node.homed(table)
                remaining += int(held.sum()) + int((store.loc == INCOMING).sum())
                fresh = np.flatnonzero(held & ~self.released[table])
                self.released[table][fresh] = True
            finally:
                node.lock.release()
            if not len(fresh):
                continue
            homes = node.shard_map.home_of(fresh.astype(np.int64), store.spec.num_keys)
            release = messages.request(MsgType.RELEASE, node.me, 0, table, fresh.astype(np.int64))
            for home, piece in routing.split(release, homes):
                node.send(home, piece)
        return remaining
