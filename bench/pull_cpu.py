"""Remote pulls, wall and CPU: rank 0 of a LocalCluster (1 server, 2 workers) pulls ``K``
keys homed on the server ``--count`` times; prints the wall time per pull and the CPU time
per pull of every process of the cluster (coordinator, nodes, training processes: all
threads, from psutil), and the minor page faults per pull.  CPU is what a busy machine
disturbs least; compare trees by running this alternately from each, its runtime on
``PYTHONPATH``:

    cd TREE && PYTHONPATH=TREE/runtime python -P /path/to/bench/pull_cpu.py 100 --label TREE

Issue 12's ratio is this with the MAC against the same tree with ``Authenticator.sign``
and ``verify`` returning the frames at once (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import dynaps

NUM_KEYS = 100_000
DIM = 100
WARM_UP = 300


def pulls(ps: Any, count: int, keys: int) -> dict[str, float]:
    if ps.rank != 0:
        return {}
    table = ps.table("W")
    wanted = np.arange(10_000, 10_000 + keys, dtype=np.int64)  # homed on the server, never localized
    for _ in range(WARM_UP):
        table.pull(wanted)
    started = time.perf_counter()
    for _ in range(count):
        table.pull(wanted)
    return {"wall_s": (time.perf_counter() - started) / count}


def cluster_usage() -> tuple[float, int]:
    """CPU seconds and minor page faults of every process below this one."""
    cpu, faults = 0.0, 0
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            times = proc.cpu_times()
            cpu += times.user + times.system
            faults += int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
        except (psutil.NoSuchProcess, OSError):
            continue
    return cpu, faults


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("keys", type=int, help="keys per pull (1 to 1000)")
    parser.add_argument("--count", type=int, default=5000, help="pulls measured (default 5000)")
    parser.add_argument("--label", default="", help="names the tree in the output line")
    args = parser.parse_args()
    if not 1 <= args.keys <= 1000 or args.count < 1:
        parser.error("keys must be 1 to 1000 and --count at least 1")
    tables = {"W": dynaps.TableSpec(num_keys=NUM_KEYS, dim=DIM)}
    with dynaps.LocalCluster(servers=1, workers=2, tables=tables) as cluster:
        cluster.run(pulls, 200, args.keys)
        cpu_before, faults_before = cluster_usage()
        wall = cluster.run(pulls, args.count, args.keys)[0]["wall_s"]
        cpu_after, faults_after = cluster_usage()
    total = args.count + WARM_UP  # the warm-up pulls ran inside the measured window too
    print(
        json.dumps(
            {
                "tree": args.label,
                "keys": args.keys,
                "wall_us_per_pull": round(wall * 1e6, 1),
                "cluster_cpu_us_per_pull": round((cpu_after - cpu_before) / total * 1e6, 1),
                "minor_faults_per_pull": round((faults_after - faults_before) / total, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
