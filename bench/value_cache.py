"""What the per-clock value cache (``cache: clock``) saves on an app with repeated keys.

Matrix factorisation (``dynaps.apps.mf``, DSGD) with static allocation: every parameter
stays on its server, so without the cache every minibatch pulls its rows and columns over
the network, and a popular column is pulled again in almost every minibatch of a block.
With ``--cache`` (``cache: clock`` on both tables) a key is fetched once per sub-epoch
(each sub-epoch's barrier ends the clock) and read from the worker's copy afterwards; the
worker's own pushes still go to the servers and are added to the copy, so the values it
reads are the ones the servers hold (DSGD: nobody else touches the block meanwhile).
Dynamic allocation (Lapse: the blocks are localized) is run beside them for comparison.
On a LocalCluster of 2 servers and 2 workers, variants interleaved round by round.

Per variant, medians over the rounds: epoch seconds (rank 0, barrier to barrier), CPU
seconds of all of the job's processes per epoch, remote key pulls per epoch (the workers'
counters), keys read from the cache, and the final test RMSE (same quality is part of the
claim).

    python bench/value_cache.py [--rounds 3] [--epochs 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

import dynaps
from dynaps.apps import mf

NODES = 2
STATS = ("keys_pulled_remote", "keys_pulled_cached", "keys_pulled_local")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (hardly changed by the machine's load)."""
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def load_data(ps: dynaps.PS, config: mf.Config) -> int:
    mf.load(config)  # data generation is not training time
    return ps.rank


def train_and_count(ps: dynaps.PS, config: mf.Config) -> dict[str, Any]:
    before = ps.stats()
    reports = mf.train(ps, config)
    after = ps.stats()
    return {"reports": reports, **{name: after.get(name, 0) - before.get(name, 0) for name in STATS}}


def run(config: mf.Config) -> dict[str, Any]:
    tables = mf.tables(config)
    with dynaps.LocalCluster(NODES, NODES, tables, allocation=config.allocation) as cluster:
        cluster.run(load_data, config)
        pids = list(cluster.pids().values())
        cpu, started = cpu_seconds(pids), time.perf_counter()
        results = cluster.run(train_and_count, config)
        wall, cpu = time.perf_counter() - started, cpu_seconds(pids) - cpu
    last = results[0]["reports"][-1]
    epochs = config.epochs
    return {
        "wall_s_per_epoch": wall / epochs,
        "cpu_s_per_epoch": cpu / epochs,
        "epoch_s": statistics.median(r["seconds"] for r in results[0]["reports"]),
        **{f"{name}_per_epoch": sum(r[name] for r in results) / epochs for name in STATS},
        "test_rmse": last["quality"]["test RMSE"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--entries", type=int, default=500_000, help="training entries (default 500000)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/value_cache.json"))
    args = parser.parse_args()
    if args.rounds < 1 or args.epochs < 1 or args.entries < 1000:
        parser.error("--rounds and --epochs must be at least 1, --entries at least 1000")
    base = mf.Config(
        allocation="static", epochs=args.epochs, entries=args.entries, rows=10_000, cols=10_000, quiet=True
    )
    variants = {
        "static": base,
        "static + cache": dataclasses.replace(base, cache=True),
        "dynamic": dataclasses.replace(base, allocation="dynamic"),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for round_ in range(1, args.rounds + 1):
        for name, config in variants.items():
            result = run(config)
            runs[name].append(result)
            print(
                f"round {round_} {name:15s} epoch {result['epoch_s']:.2f} s  "
                f"CPU {result['cpu_s_per_epoch']:.2f} s/epoch  "
                f"remote pulls {result['keys_pulled_remote_per_epoch']:,.0f}/epoch  "
                f"cached {result['keys_pulled_cached_per_epoch']:,.0f}  RMSE {result['test_rmse']:.4f}",
                flush=True,
            )
    summary = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    baseline = summary["static"]
    print(
        f"\n{'variant':15s} {'epoch s':>8s} {'ratio':>6s} {'CPU s':>6s} {'ratio':>6s} "
        f"{'remote pulls':>13s} {'cached':>10s} {'RMSE':>7s}"
    )
    for name, s in summary.items():
        print(
            f"{name:15s} {s['epoch_s']:8.2f} {s['epoch_s'] / baseline['epoch_s']:6.2f} "
            f"{s['cpu_s_per_epoch']:6.2f} {s['cpu_s_per_epoch'] / baseline['cpu_s_per_epoch']:6.2f} "
            f"{s['keys_pulled_remote_per_epoch']:13,.0f} {s['keys_pulled_cached_per_epoch']:10,.0f} "
            f"{s['test_rmse']:7.4f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs, "summary": summary, "argv": sys.argv[1:]}, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
