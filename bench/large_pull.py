"""Large remote pulls and pushes: rank 0 of a LocalCluster (1 server, 2 workers, static
allocation) pulls and pushes 10,000 keys of dim 256 (10 MB of float32) homed on the server,
``--count`` times each; prints the median milliseconds of each.  A dense model's layer, a
block's transfer or a migration is a message of this size; compare trees by running this
file from each with its runtime on ``PYTHONPATH``:

    PYTHONPATH=TREE/runtime python -P bench/large_pull.py
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

import dynaps

KEYS, DIM = 10_000, 256


def measure(ps: Any, count: int) -> tuple[float, float] | None:
    if ps.rank != 0:
        return None
    table = ps.table("D")
    keys = np.arange(KEYS)
    table.pull(keys)  # connections open, pages touched
    pulls = []
    for _ in range(count):
        started = time.perf_counter()
        table.pull(keys)
        pulls.append(time.perf_counter() - started)
    update = np.ones((KEYS, DIM), np.float32)
    pushes = []
    for _ in range(count):
        started = time.perf_counter()
        table.push(keys, update)
        pushes.append(time.perf_counter() - started)
    return float(np.median(pulls)) * 1e3, float(np.median(pushes)) * 1e3


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--count", type=int, default=40, help="pulls and pushes each (default 40)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    tables = {"D": dynaps.TableSpec(num_keys=2 * KEYS, dim=DIM)}
    with dynaps.LocalCluster(1, 2, tables, allocation="static") as cluster:
        [(pull_ms, push_ms)] = [r for r in cluster.run(measure, args.count) if r]
    print(f"10 MB remote pull {pull_ms:.2f} ms, push {push_ms:.2f} ms (medians of {args.count})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
