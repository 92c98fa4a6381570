"""Localize alone: one LocalCluster (1 server, 2 workers), 5 batches of 150 localizes of 100
fresh keys by worker rank 0; prints the seconds per localize of each batch and their median,
and the CPU time per localize of the cluster's processes (all their threads; spinning
included) with the load average, since wall time on a shared machine says little alone.

A worker tells the coordinator once per shard, before its first localize of a key of that
shard, that it may hold keys of it (HOLDING, :mod:`dynaps.client.holdings`): a round trip
to the coordinator in front of the localize. Fresh keys swept in order reach a new shard
every other localize here, which a training job does only while it first touches its
shards. So the shards are noted first (by localizing the same key range of a one-column
table with the same number of keys, hence the same shards) and the figure is the steady
state; ``--first-touch`` measures with the notes in front, as before 2026-12-06.

For A/B comparisons of the localize path (run it against two trees, interleaved):

    python bench/localize.py LABEL [--first-touch]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np
import psutil

import dynaps

BATCHES = 5
PER_BATCH = 150
FIRST_KEY = 30_000
NUM_KEYS = 200_000


def note_shards(ps: Any) -> None:
    """Rank 0's HOLDING notes for every shard the batches reach (see the module docstring)."""
    if ps.rank == 0:
        ps.table("shards").localize(np.arange(FIRST_KEY, FIRST_KEY + BATCHES * PER_BATCH * 100))


def measure(ps: Any) -> list[float] | None:
    if ps.rank != 0:
        return None
    W = ps.table("W")
    seconds = []
    first = FIRST_KEY
    for _ in range(BATCHES):
        t0 = time.perf_counter()
        for _ in range(PER_BATCH):
            W.localize(np.arange(first, first + 100))
            first += 100
        seconds.append((time.perf_counter() - t0) / PER_BATCH)
    return seconds


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    """User and system time of ``processes`` (all their threads)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("label", nargs="?", default="localize", help="printed before the figures (a tree)")
    parser.add_argument("--first-touch", action="store_true", help="with each shard's first note in front")
    args = parser.parse_args()
    first_touch, label = args.first_touch, args.label
    tables = {
        "W": dynaps.TableSpec(num_keys=NUM_KEYS, dim=100),
        "shards": dynaps.TableSpec(num_keys=NUM_KEYS, dim=1),  # the same keys' shards, to note them
    }
    with dynaps.LocalCluster(servers=1, workers=2, tables=tables) as cluster:
        if not first_touch:
            cluster.run(note_shards)
        processes = psutil.Process().children(recursive=True)
        cpu_before = _cpu_seconds(processes)
        [seconds] = [r for r in cluster.run(measure) if r]
        cpu = (_cpu_seconds(processes) - cpu_before) / (BATCHES * PER_BATCH)
    shown = " ".join(f"{s * 1e6:.0f}" for s in seconds)
    print(
        f"{label}{' (first touch)' if first_touch else ''}: {shown} us per localize of 100 keys, "
        f"median {statistics.median(seconds) * 1e6:.0f}; "
        f"CPU {cpu * 1e6:.0f} us per localize; load average {psutil.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
