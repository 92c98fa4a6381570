"""Local operations only, for comparing trees: bench/micro.py's local pull of 1 and 1000
keys and local push of 1000 keys and of 1 key on one LocalCluster (1 server, 2 workers),
medians of ``--repeat`` 1-s measurements.  Run it from the tree under test, with that tree's runtime
on PYTHONPATH (like bench/remote_pull.py):

    cd TREE && PYTHONPATH=TREE/runtime python /path/to/bench/local_pull.py LABEL
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import dynaps

sys.path.insert(0, str(Path.cwd() / "bench"))  # the micro benchmark of the tree under test
import micro


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("label", help="names the tree in the output line")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each figure")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    figures: dict[str, list[float]] = {}
    tables = {"W": dynaps.TableSpec(num_keys=micro.NUM_KEYS, dim=micro.DIM)}
    with dynaps.LocalCluster(servers=1, workers=2, tables=tables) as cluster:
        cluster.run(micro.prepare)
        for _ in range(args.repeat):
            for part in cluster.run(micro.measure_local, 1.0):
                for name, seconds in part.items():
                    figures.setdefault(name.removesuffix("_s") + "_us", []).append(seconds * 1e6)
    result = {
        "tree": args.label,
        **{name: round(statistics.median(each), 2) for name, each in figures.items()},
        "each": {name: [round(v, 2) for v in each] for name, each in figures.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
