"""A worker program for the operator's e2e tests: additive counters whose end value is exact.

``python counter_program.py DIR``: push +1 to every key of table ``counts`` until ``DIR/stop``
exists, counting the acknowledged pushes; then a barrier, after which every push of every
worker is applied. Each worker writes its count to ``DIR/acked-<rank>``, and rank 0 the
smallest and largest value in the table to ``DIR/table`` (both must equal the sum of the counts).
A worker killed and replaced resumes its predecessor's count; one push acknowledged (or in flight)
when it was killed may be applied without being counted, so the table may then exceed the sum by
at most one per killed worker.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

import dynaps


def record(path: Path, count: int) -> None:
    """Atomically: a worker killed mid-write must leave its last count, not an empty file."""
    partial = path.with_name(f".{path.name}.partial")  # not matched by progress-*
    partial.write_text(str(count))
    os.replace(partial, path)


def main(folder: str) -> int:
    # a test whose job does not end sends SIGUSR1 to its pods: the stacks say where this waits
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    out = Path(folder)
    ps = dynaps.connect()
    counts = ps.table("counts")
    keys = np.arange(counts.num_keys)
    ones = np.ones((len(keys), counts.dim))
    # A replaced worker goes on counting where its predecessor's record ends.
    progress = out / f"progress-{ps.rank}"
    pushes = int(progress.read_text() or 0) if progress.exists() else 0
    (out / f"started-{ps.rank}").touch()
    while not (out / "stop").exists():
        counts.push(keys, ones)  # returns once the servers acknowledged it
        pushes += 1
        record(progress, pushes)
    (out / f"acked-{ps.rank}").write_text(str(pushes))
    ps.barrier()
    if ps.rank == 0:
        values = counts.pull(keys)
        (out / "table").write_text(json.dumps({"min": float(values.min()), "max": float(values.max())}))
    ps.barrier()  # rank 0 read the table before anyone leaves
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
