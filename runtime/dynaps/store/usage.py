"""A training process's counters, kept in memory its worker node reads: per table, the
operations it issued, the keys it served in place or asked other nodes for, and how long
the requests that needed other nodes took.

The training process (the client) is not the node: it serves nothing over HTTP, and a
thread of its own would compete with the training loop for the GIL.  So it counts into an
int64 array shared with its node (one more memfd handed over at attach), and the node's
``/metrics`` reads the array when it is scraped.  Only the client writes it, only the
node reads it: aligned 8-byte words, so a reader sees each count whole.

The client increments through a ``memoryview`` of the array (about 40 ns, against a
numpy scalar's 150 ns): the local path of a pull, a few microseconds, is the hot path.

Layout: ``num_tables`` rows of :data:`WIDTH` words; in each row the counters
(:data:`COUNTERS`, in that order), then per operation (:data:`OPERATIONS`) a latency
histogram: one count per bucket of :data:`LATENCY_BOUNDS` plus the overflow, the sum of
the observations in nanoseconds, and their number.
"""

from __future__ import annotations

import bisect
from typing import Final

import numpy as np
import numpy.typing as npt

# Per table: what each counter counts (the names are also the keys of ``PS.stats()``).
COUNTERS: Final = (
    "pulls",  # pull calls
    "pushes",  # push and set calls
    "keys_pulled_local",  # keys a pull read in place (owned by this worker's node)
    "keys_pulled_remote",  # keys a pull asked other nodes for
    "keys_pushed_local",  # keys a push or set updated in place
    "keys_pushed_remote",  # keys a push or set sent to other nodes
    "keys_localized",  # keys a localize asked to move to this worker's node
    "keys_pulled_cached",  # remote keys a pull read from a copy: per-clock cache or hot-key replica
    "requests_resent_membership",  # requests sent again after a node was lost or left
    "requests_resent_silence",  # requests sent again after no answer came for long
)
(
    PULLS,
    PUSHES,
    PULLED_LOCAL,
    PULLED_REMOTE,
    PUSHED_LOCAL,
    PUSHED_REMOTE,
    LOCALIZED,
    PULLED_CACHED,
    RESENT_MEMBERSHIP,
    RESENT_SILENCE,
) = range(len(COUNTERS))
OPERATIONS: Final = ("pull", "push", "localize")  # a set counts as a push
# Seconds: a remote request on one host takes tens of microseconds, across a network and
# behind a relocation or a migration milliseconds, and one held for a recovery seconds.
LATENCY_BOUNDS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    5.0,
)
BUCKETS: Final = len(LATENCY_BOUNDS) + 1  # the last one: above every bound
HISTOGRAM_WIDTH: Final = BUCKETS + 2  # buckets, sum (ns), count
WIDTH: Final = len(COUNTERS) + len(OPERATIONS) * HISTOGRAM_WIDTH
_BOUNDS_NS: Final = tuple(int(bound * 1e9) for bound in LATENCY_BOUNDS)


def words(num_tables: int) -> int:
    """The array's length for a job of ``num_tables`` tables."""
    return num_tables * WIDTH


class UsageWriter:
    """The client's side: cheap increments into the shared array (or a private one)."""

    def __init__(self, array: npt.NDArray[np.int64] | None, num_tables: int) -> None:
        if array is None:
            array = np.zeros(words(num_tables), dtype=np.int64)  # not attached to a node
        if array.dtype != np.int64 or array.size < words(num_tables):
            raise ValueError(f"usage array of {array.size} {array.dtype} for {num_tables} tables")
        self._array = array  # keeps the memory alive as long as the views
        flat = array.data.cast("B").cast("q")
        self.rows = [flat[t * WIDTH : (t + 1) * WIDTH] for t in range(num_tables)]

    def observe(self, table: int, operation: int, seconds_ns: int) -> None:
        """One request of ``OPERATIONS[operation]`` on ``table`` took ``seconds_ns`` nanoseconds."""
        row = self.rows[table]
        base = len(COUNTERS) + operation * HISTOGRAM_WIDTH
        row[base + bisect.bisect_left(_BOUNDS_NS, seconds_ns)] += 1
        row[base + BUCKETS] += seconds_ns
        row[base + BUCKETS + 1] += 1

    def totals(self) -> dict[str, int]:
        """Each counter summed over the tables."""
        return {name: sum(row[i] for row in self.rows) for i, name in enumerate(COUNTERS)}


class Histogram:
    """One latency histogram as read: cumulative bucket counts (Prometheus' ``le``)."""

    def __init__(self, cumulative: list[int], sum_seconds: float) -> None:
        self.cumulative = cumulative  # one per LATENCY_BOUNDS, then +Inf (= the count)
        self.sum_seconds = sum_seconds

    @property
    def count(self) -> int:
        return self.cumulative[-1]


def read(array: npt.NDArray[np.int64], table: int) -> tuple[dict[str, int], dict[str, Histogram]]:
    """The node's side: ``table``'s counters and histograms, copied at once."""
    row = np.array(array[table * WIDTH : (table + 1) * WIDTH])  # a copy: the client goes on
    counters = {name: int(row[i]) for i, name in enumerate(COUNTERS)}
    histograms = {}
    for op, name in enumerate(OPERATIONS):
        base = len(COUNTERS) + op * HISTOGRAM_WIDTH
        buckets = row[base : base + BUCKETS]
        cumulative = [int(c) for c in np.cumsum(buckets)]
        histograms[name] = Histogram(cumulative, float(row[base + BUCKETS]) / 1e9)
    return counters, histograms
