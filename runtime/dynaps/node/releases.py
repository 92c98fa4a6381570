"""Keys a node gave back to their home (a drain's RELEASE), until the home confirms them.

A draining node sends the keys it holds back to their homes and keeps a record of each
transfer (not its rows) until it is confirmed: by the ACKs of the tails of the keys'
chains under replication (every backup has the rows), or by the home's LOCALIZED when it
has none.  The drain ends only once nothing is unconfirmed.  A home that dies first has
lost what the node changed since its last write-back, as its successor rebuilds the keys
from a replica: the node reports those keys (HANDOFF_LOST), which the coordinator counts
in ``dataLoss``.  The rows are not kept to repair the loss: whether the new home's replica
already includes later updates of other workers cannot be told from here
(docs/architecture.md, Known limits).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dynaps.node.context import NodeContext
from dynaps.wire import control
from dynaps.wire.protocol import Message

log = logging.getLogger(__name__)


@dataclass
class Release:
    """Keys a node gave back and sent to their home, until confirmed: by the ACKs of the tails
    of their chains (every backup has them), or by the home's LOCALIZED when it has none."""

    table: int
    dest: int  # the home they were sent to
    keys: npt.NDArray[np.int64]
    unacked: int  # keys no tail acknowledged yet
    arrived: bool = False  # the home's LOCALIZED came; the ACKs are still to come
    loss_seen: bool = False  # a node died since they were sent: a backup's ACK may never come


class Releases:
    """The transfers of keys this node gave back that their home has not confirmed yet."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.unconfirmed: dict[int, Release] = {}  # by transfer id (the TRANSFER's req_id)
        self.last = 0  # the latest transfer id

    def sent(self, table: int, dest: int, keys: npt.NDArray[np.int64]) -> int:
        """Keys of ``table`` given back and sent to their home ``dest``: the transfer's id."""
        self.last += 1
        self.unconfirmed[self.last] = Release(table, dest, keys, len(keys))
        return self.last

    def on_released(self, msg: Message) -> None:
        """A home confirms that keys this node released are back (the end of a drain)."""
        self.node.stats["keys_released"] += msg.count
        release = self.unconfirmed.get(msg.req_id)
        if release is None:
            return
        if not msg.aux or release.loss_seen:
            # no backups to wait for; or one may have died with the rows: the home, alive,
            # syncs its new backups, and a loss before that is counted by its recovery
            del self.unconfirmed[msg.req_id]
        else:
            release.arrived = True

    def on_release_acked(self, msg: Message) -> None:
        """The tail of a chain acknowledges keys this node gave back: on every backup now."""
        release = self.unconfirmed.get(msg.req_id)
        if release is None:
            return  # confirmed already
        release.unacked -= msg.count
        if release.unacked <= 0:
            del self.unconfirmed[msg.req_id]

    def count(self) -> int:
        """Keys this node gave back that are not confirmed on their home's backups yet."""
        return sum(len(release.keys) for release in self.unconfirmed.values())

    def lost_destination(self, lost: int) -> None:
        """Node ``lost`` died: keys this node was giving back to it and whose arrival it
        never confirmed went back to their last write-back at the shard's new home (its
        replica) or further; tell the coordinator, which counts the loss (HANDOFF_LOST).

        Some may have arrived (the confirmation died on its way): counted all the same, as
        the loss of what changed since the last flush is possible and nothing can tell."""
        node = self.node
        dead = []
        for tid, release in list(self.unconfirmed.items()):
            if release.dest == lost:
                dead.append(release)
                del self.unconfirmed[tid]
            elif release.arrived:  # its ACK may have died with a backup (see on_released)
                del self.unconfirmed[tid]
            else:
                release.loss_seen = True
        if not dead:
            return
        count = sum(len(release.keys) for release in dead)
        shards: set[int] = set()
        for release in dead:
            of = node.shard_map.shard_of(release.keys, node.stores[release.table].spec.num_keys)
            shards.update(int(s) for s in np.unique(of))
        log.error(
            "node %d: %d keys it was giving back to node %d were lost with it before they arrived:"
            " its updates since its last write-back may be lost",
            node.me,
            count,
            lost,
        )
        node.report_loss(
            control.HandoffLost(node=lost, keys=count, shards=sorted(shards), epoch=node.shard_map.epoch)
        )
