"""The control block: the few bytes a worker node shares with its training process.

It carries what the node must tell a program that may never read a message (one that
touches only keys its node holds, served in place), and what the program needs to know of
its node without asking::

    byte 0       state: RUNNING; DRAINING (the node leaves: the program raises Drained at
                 its next call); FENCED (the node was declared lost: it raises ClusterError)
    bytes 8-15   float64: when the node's loop last did its periodic duties (heartbeat,
                 write-back), in ``time.monotonic()`` seconds: CLOCK_MONOTONIC, one clock for
                 every process of a machine
    bytes 16-23  int64: the node's process id
    bytes 24-31  int64: the program's watermark (0: none yet): every request of the
                 program below this id is answered and no copy of it can still arrive,
                 written before each LOCALIZE it sends

Why the watermark: nodes keep a record of the updates they applied, per requester, until
the requester's watermark (carried by its pushes and sets) says no copy can come; the
records of keys travel with the keys.  A program's updates to keys that then move (an
app's initial ``set`` of a table, say) were never followed by another push to the same
node, so their records travelled with every later move of those keys (MF: every column
block's move, 625 keys' worth).  The program's own node reads the watermark here when
keys arrive or leave, so those records end where the program localizes them.

Why the stamp: under replication's write-back the program updates keys in place and its
node sends them to their homes every flush interval.  A node that stops (SIGSTOP, a hang)
or dies while its program goes on writes back nothing more, and once the coordinator
declares it lost the homes take those keys back with the last write-back: every update
the program acknowledged since is lost.  So the program applies no local update while the
stamp is older than :data:`STALE_SECONDS`; it waits for its node instead (see
:meth:`dynaps.client.requests.Requests.node_running_until`).

A program started without a node (one byte: in-process tests) has no stamp and no pid.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

CONTROL_BYTES = 64
RUNNING = 0
DRAINING = 1
FENCED = 2
_STAMP = slice(8, 16)
_PID = slice(16, 24)
_WATERMARK = slice(24, 32)

# How old the node's stamp may be before local updates wait for the node. Not the
# coordinator's loss timeout (3 s or more): the homes take the keys back with their last
# write-back once the node is declared lost, so every update applied until then would be
# acknowledged and lost. Not the flush interval either: that one is lost anyway (the write-
# back in flight), and this only has to cover how often a running node stamps: every
# CHORES_INTERVAL (50 ms) plus one turn of its loop (at most another 50 ms of requests), with
# room for a loaded machine's scheduling. A program that waits loses latency, not data. What
# a worker whose program outlives its node loses is its last flush interval plus this.
STALE_SECONDS = 0.25


class ControlBlock:
    """Typed views of a control block (an array of CONTROL_BYTES bytes, or of one)."""

    def __init__(self, array: npt.NDArray[np.uint8]) -> None:
        self.array = array  # keeps the memory alive as long as the views
        self.state = array.data  # byte 0, read without a numpy scalar (on every local call)
        stamped = array.size >= _PID.stop
        self.stamp = array.data[_STAMP].cast("d") if stamped else None
        self.pid = array.data[_PID].cast("q") if stamped else None
        self.watermark = array.data[_WATERMARK].cast("q") if array.size >= _WATERMARK.stop else None

    def beat(self, now: float) -> None:
        """The node's loop did its duties at ``now`` (the node writes it)."""
        if self.stamp is not None:
            self.stamp[0] = now

    def publish_watermark(self, below: int) -> None:
        """Every request of the program below ``below`` is settled (the program writes it)."""
        if self.watermark is not None:
            self.watermark[0] = below

    def settled_below(self) -> int:
        """The program's watermark as last published (0: none)."""
        return 0 if self.watermark is None else int(self.watermark[0])

    def set_pid(self, pid: int) -> None:
        if self.pid is not None:
            self.pid[0] = pid

    def drain(self) -> None:
        """Make the program raise Drained at its next call (unless it was told worse)."""
        if self.state[0] == RUNNING:
            self.state[0] = DRAINING

    def fence(self) -> None:
        """Make the program raise ClusterError at its next call: its node was declared lost."""
        self.state[0] = FENCED
