"""One entry per update (issue 18): MF with ``--batch 1``, Lapse's granularity.

Trains ``dynaps.apps.mf`` with one entry per pull/push on a LocalCluster (1 server and
``--workers`` worker nodes, dynamic allocation: every access is local), and prints one JSON
line per run: the epoch times (rank 0, barrier to barrier), the CPU seconds (user +
system) per epoch of all the job's processes and of the training processes alone, the
test RMSE and the load average.  The figure to compare is the epoch time against Lapse's
0.24-0.30 s on the same data (issue 18; Lapse is not built here).

Run it with the runtime of the tree under test on ``PYTHONPATH`` (it uses only the public
API, so the same script measures an older tree), alternating trees for a comparison:

    PYTHONPATH=TREE/runtime python -P bench/per_entry.py LABEL --workers 1
    PYTHONPATH=TREE/runtime python -P bench/per_entry.py LABEL --profile /tmp/prof   # + cProfile
    PYTHONPATH=TREE/runtime python -P bench/per_entry.py LABEL --ops   # 1 and 1000 keys, CPU us/call
    PYTHONPATH=TREE/runtime python -P bench/per_entry.py LABEL --ops --replication 1   # write-back

``--ops`` also times ``pull_one`` (with and without ``out``) and ``push_one`` where the
tree has them (a Python int key, one row).

``--profile DIR`` runs every process under cProfile (``DYNAPS_PROFILE_DIR``) and prints
the training processes' 25 most expensive functions by own time (slower: compare the
functions with each other, not the times with an unprofiled run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import dynaps
from dynaps.apps import mf

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the sibling benchmark
from cpu_scaling import cpu_seconds

# the data: 20,000 x 2,000, 400,000 entries, rank 50 as in its other MF figures
CONFIG = mf.Config(
    epochs=2, batch=1, rows=20_000, cols=2_000, entries=400_000, rank=50, test_entries=50_000, quiet=True
)


def preload(ps: Any, config: mf.Config) -> int:
    """Generate the data in each runner before the timed run."""
    mf.load(config)
    return int(ps.rank)


def run(config: mf.Config, workers: int) -> dict[str, Any]:
    with dynaps.LocalCluster(servers=1, workers=workers, tables=mf.tables(config)) as cluster:
        cluster.run(preload, config)
        pids = cluster.pids()
        load_before = os.getloadavg()[0]
        before, started = cpu_seconds(pids), time.perf_counter()
        reports = cluster.run(mf.train, config)[0]
        wall = time.perf_counter() - started
        after = cpu_seconds(pids)
    epochs = len(reports)
    spent = {name: after[name] - before[name] for name in pids}
    return {
        "epoch_s": [round(r["seconds"], 3) for r in reports],
        "wall_s_per_epoch": round(wall / epochs, 3),
        "cpu_s_per_epoch": round(sum(spent.values()) / epochs, 3),
        "runner_cpu_s_per_epoch": round(
            sum(s for name, s in spent.items() if name.startswith("runner")) / epochs, 3
        ),
        "test_rmse": reports[-1]["quality"]["test RMSE"],
        "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def cpu_per_call(fn: Callable[[], object], calls: int, batches: int = 9) -> float:
    """Microseconds of this thread's CPU per call, the least of ``batches`` batches: on a
    shared machine the CPU clock moves far less with load than wall time does."""
    best = float("inf")
    for _ in range(batches):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, time.thread_time() - started)
    return round(best / calls * 1e6, 3)


def measure_ops(ps: Any) -> dict[str, float]:
    """Local pulls and pushes of 1 and 1000 keys on MF's row shape (rank 50), rank 0 only;
    and the one-key calls with a Python int key where the tree has them."""
    if ps.rank != 0:
        return {}
    table = ps.table("rows")
    table.localize(np.arange(1000))
    one, many = np.array([5]), np.random.default_rng(1).integers(0, 1000, 1000)
    row, rows = np.ones((1, table.dim), np.float32), np.ones((1000, table.dim), np.float32)
    before = ps.stats()["keys_pulled_remote"]
    figures = {
        "local_pull_1_cpu_us": cpu_per_call(lambda: table.pull(one), 20_000),
        "local_push_1_cpu_us": cpu_per_call(lambda: table.push(one, row), 20_000),
        "local_pull_1000_cpu_us": cpu_per_call(lambda: table.pull(many), 500),
        "local_push_1000_cpu_us": cpu_per_call(lambda: table.push(many, rows), 500),
    }
    if hasattr(table, "pull_one"):  # a tree with the one-key calls (Python int keys)
        out, update = np.empty(table.dim, table.dtype), np.ones(table.dim, table.dtype)
        figures["local_pull_one_cpu_us"] = cpu_per_call(lambda: table.pull_one(5), 20_000)
        figures["local_pull_one_out_cpu_us"] = cpu_per_call(lambda: table.pull_one(5, out), 20_000)
        figures["local_push_one_cpu_us"] = cpu_per_call(lambda: table.push_one(5, update), 20_000)
        figures.update(step_parts(table, ps.table("cols")))
    assert ps.stats()["keys_pulled_remote"] == before, "a local figure touched remote keys"
    return figures


def step_parts(rows: Any, cols: Any, n: int = 100_000) -> dict[str, float]:
    """CPU microseconds per entry of MF's one-entry step (``mf._sgd_entries`` on ``n``
    random local entries) and of its parts alone: the two pulls (into the rows of one
    array), the two pushes, and MF's own arithmetic without the parameter server."""
    rows.localize(np.arange(rows.num_keys))
    cols.localize(np.arange(cols.num_keys))
    rng = np.random.default_rng(2)
    i, j = rng.integers(0, rows.num_keys, n), rng.integers(0, cols.num_keys, n)
    v = rng.normal(size=n).astype(np.float32)
    pairs = list(zip(i.tolist(), j.tolist(), v.tolist(), strict=True))
    pair, both = np.zeros((2, rows.dim), rows.dtype), np.zeros((2, rows.dim), rows.dtype)
    left, right = pair
    coef = np.full((2, 2), 1e-4, dtype=np.float32)
    off_diagonal = coef.reshape(-1)

    def step() -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            mf._sgd_entries(rows, cols, i, j, v, 0.01, -1e-4)

    def pulls() -> None:
        pull_row, pull_col = rows.pull_one, cols.pull_one
        for r, c, _ in pairs:
            pull_row(r, left)
            pull_col(c, right)

    def pushes() -> None:  # zero rows: the parameters stay as they are
        push_row, push_col = rows.push_one, cols.push_one
        row_step, col_step = both
        for r, c, _ in pairs:
            push_row(r, row_step)
            push_col(c, col_step)

    def arithmetic() -> None:  # _sgd_entries' own lines on fixed rows
        dot, vdot = np.dot, np.vdot
        squared = 0.0
        for _, _, target in pairs:
            error = float(vdot(left, right)) - target
            squared += error * error
            off_diagonal[1] = off_diagonal[2] = -1e-4 * error
            dot(coef, pair, out=both)

    parts = {"step": step, "two_pulls": pulls, "two_pushes": pushes, "arithmetic": arithmetic}
    # one call per batch runs all ``n`` entries: microseconds per entry
    return {f"entry_{name}_cpu_us": round(cpu_per_call(fn, 1, 3) / n, 3) for name, fn in parts.items()}


def ops(config: mf.Config, replication: int = 0) -> dict[str, float]:
    # a backup needs a server of its own; the worker writes back every 100 ms (the default)
    servers = 1 + replication
    with dynaps.LocalCluster(
        servers=servers, workers=1, tables=mf.tables(config), replication=replication
    ) as cluster:
        figures: dict[str, float] = cluster.run(measure_ops)[0]
    return figures


def print_profile(directory: Path, top: int = 25) -> None:
    """The training processes' functions by own time (summed over runners)."""
    files = sorted(str(p) for p in directory.glob("runner-*.exit.prof"))
    if not files:
        print(f"no runner profiles in {directory}", file=sys.stderr)
        return
    stats = pstats.Stats(*files, stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("label", help="names the tree in the output line")
    parser.add_argument("--workers", type=int, default=1, help="worker nodes (default 1)")
    parser.add_argument("--epochs", type=int, default=CONFIG.epochs, help="epochs (default 2)")
    parser.add_argument("--batch", type=int, default=CONFIG.batch, help="minibatch size (default 1)")
    parser.add_argument(
        "--entries", type=int, default=CONFIG.entries, help="training entries (default 400000)"
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="instead of training: CPU microseconds per local pull and push of 1 and 1000 keys "
        "(and per pull_one/push_one where the tree has them)",
    )
    parser.add_argument(
        "--replication",
        type=int,
        default=0,
        help="with --ops: backups per shard (default 0); 1 measures the write-back path, on which "
        "a local update first checks that its node ran lately",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="profile the run, keep the .prof files in DIR"
    )
    args = parser.parse_args()
    if args.workers < 1 or args.epochs < 1 or args.batch < 1 or args.entries < 1:
        parser.error("--workers, --epochs, --batch and --entries must be at least 1")
    config = dataclasses.replace(CONFIG, epochs=args.epochs, batch=args.batch, entries=args.entries)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ["DYNAPS_PROFILE_DIR"] = str(args.profile)  # the cluster's processes inherit it
    if args.ops:
        line = {"tree": args.label, "replication": args.replication, **ops(config, args.replication)}
        print(json.dumps(line), flush=True)
        return 0
    result = run(config, args.workers)
    line = {"tree": args.label, "workers": args.workers, "batch": args.batch, **result}
    print(json.dumps(line), flush=True)
    if args.profile:
        print_profile(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
