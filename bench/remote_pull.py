"""Remote pull latency only, for comparing trees: bench/micro.py's 1-key remote pull and a
100-key pull on one LocalCluster (1 server, 2 workers), medians of ``--repeat`` 1-s
measurements.  Run it from the tree under test, with that tree's runtime on PYTHONPATH:

    cd TREE && PYTHONPATH=TREE/runtime python /path/to/bench/remote_pull.py LABEL
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

import dynaps

sys.path.insert(0, str(Path.cwd() / "bench"))  # the micro benchmark of the tree under test
import micro


def pull_100(ps: Any, seconds: float) -> dict[str, float]:
    if ps.rank != 0:
        return {}
    table = ps.table("W")
    keys = np.arange(10_000, 10_100, dtype=np.int64)  # homed on the server, never localized
    return {"remote_pull_100_s": micro.timeit(lambda: table.pull(keys), seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("label", help="names the tree in the output line")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each figure")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    one: list[float] = []
    hundred: list[float] = []
    tables = {"W": dynaps.TableSpec(num_keys=micro.NUM_KEYS, dim=micro.DIM)}
    with dynaps.LocalCluster(servers=1, workers=2, tables=tables) as cluster:
        cluster.run(micro.prepare)
        for _ in range(args.repeat):
            for part in cluster.run(micro.measure_remote, 1.0, False):
                one.extend(v * 1e6 for v in part.values())
            for part in cluster.run(pull_100, 1.0):
                hundred.extend(v * 1e6 for v in part.values())
    result = {
        "tree": args.label,
        "remote_pull_1_us": round(statistics.median(one), 1),
        "remote_pull_100_us": round(statistics.median(hundred), 1),
        "each_1": [round(v) for v in one],
        "each_100": [round(v) for v in hundred],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
