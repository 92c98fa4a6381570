"""The narrow view of a node that its helpers work through.

Serving, migrations, recoveries, replication, write-back, relocations and departures are
parts of one node.  Each gets this view of it (plus explicit callbacks for the little else
it needs) instead of the node itself, and each owns the state it changes: so no helper
writes another's fields, none imports the server, and each can be driven in tests by a
small stand-in.
:class:`~dynaps.node.server.NodeServer` provides it.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dynaps.node.gate import ShardGate
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock, SharedLock
from dynaps.store.table_store import TableStore
from dynaps.wire import control
from dynaps.wire.protocol import Message


class NodeContext(Protocol):
    @property
    def me(self) -> int:
        """This node's id."""

    @property
    def stores(self) -> Sequence[TableStore]:
        """One store per table, in table order."""

    @property
    def lock(self) -> SharedLock | NullLock:
        """Held around every read or write of the stores (a client process shares them)."""

    @property
    def stats(self) -> collections.Counter[str]:
        """The node's counters (reported by STATS)."""

    @property
    def table_stats(self) -> Sequence[collections.Counter[str]]:
        """Per table, the counters of what happened to its keys here (``TABLE_COUNTERS``)."""

    @property
    def gate(self) -> ShardGate:
        """The shards whose requests are held, and the requests held."""

    @property
    def shard_map(self) -> ShardMap:
        """The newest shard map this node has applied."""

    def send(self, dest: int, msg: Message) -> None:
        """Send a data message (held for a new epoch, or dropped, if ``dest`` died)."""

    def send_frames(self, dest: int, frames: Sequence[Any]) -> None:
        """Send encoded frames as they are (control messages)."""

    def report_loss(self, report: control.TookBack | control.HandoffLost) -> None:
        """Tell the coordinator of updates lost, and keep the report for a replacement."""

    def homed(self, table: int) -> npt.NDArray[np.bool_]:
        """Which keys of ``table`` this node is the home of, at the current epoch."""

    def release_gate(self) -> None:
        """Handle the held requests whose shards are no longer blocked."""

    def note_malformed(self, exc: Exception) -> None:
        """Count (and log, rate-limited) a message that was dropped as malformed."""
