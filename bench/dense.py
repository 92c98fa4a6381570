"""Dense benchmark: synchronous against asynchronous SGD of an MLP on the parameter server.

One run trains the same MLP (``dynaps.apps.dense``, 32 -> 128 -> 10 on 20,000 synthetic
examples) three ways and records accuracy per epoch, epoch time, wall time and the CPU
seconds of every process involved:

* ``baseline``: one process, numpy arrays, no parameter server, batch = workers x batch:
  exactly the steps bsp takes;
* ``bsp``: a LocalCluster (1 server, 2 workers), synchronous SGD (two clocks per step);
* ``async``: the same cluster under consistency async (no clock waits).

    python bench/dense.py             # about 1.5 minutes on 2 cores
    python bench/dense.py --repeat 3  # medians over three interleaved runs of each

Figures are printed and written to bench/results/dense.json.
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

import dynaps
from apps import RESULTS, cpu_seconds, load_average, preload
from dynaps.apps import dense
from dynaps.apps.inprocess import InProcessPS

VARIANTS = ("baseline", "bsp", "async")
WORKERS = 2
CONFIG = dense.Config(epochs=5, batch=32, quiet=True)


def run_variant(config: dense.Config, variant: str) -> dict[str, Any]:
    """Train ``config`` as ``variant``: rank 0's epoch reports, wall and CPU time."""
    if variant == "baseline":
        dense.load(config)  # data generation is not training time
        alone = dataclasses.replace(config, batch=config.batch * WORKERS)  # the steps bsp takes
        before, started, cpu = load_average(), time.perf_counter(), time.process_time()
        reports = dense.train(InProcessPS(dense.tables(alone)), alone)
        cpu = time.process_time() - cpu
    else:
        tables = dense.tables(config)
        with dynaps.LocalCluster(servers=1, workers=WORKERS, tables=tables, consistency=variant) as cluster:
            cluster.run(preload, "dense", config)
            pids = list(cluster.pids().values())
            before, started, cpu = load_average(), time.perf_counter(), cpu_seconds(pids)
            reports = cluster.run(dense.train, config)[0]
            cpu = cpu_seconds(pids) - cpu
    return {
        "variant": variant,
        "epochs": reports,
        "wall_s": time.perf_counter() - started,
        "cpu_s": cpu,
        "load": [before, load_average()],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant over its repeats: medians, and the accuracy per epoch of each run."""
    return {
        "epoch_s": statistics.median(statistics.fmean(e["seconds"] for e in r["epochs"]) for r in runs),
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "accuracy_per_epoch": [[e["quality"]["test accuracy"] for e in r["epochs"]] for r in runs],
        "final_accuracy": statistics.median(r["epochs"][-1]["quality"]["test accuracy"] for r in runs),
        "load": [r["load"] for r in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant, interleaved (default 1)")
    parser.add_argument("--epochs", type=int, default=CONFIG.epochs, help=f"default {CONFIG.epochs}")
    parser.add_argument("--out", type=Path, default=RESULTS / "dense.json", help="JSON output")
    args = parser.parse_args()
    config = dataclasses.replace(CONFIG, epochs=args.epochs)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeat):  # interleaved: a change in the machine's load hits all alike
        for variant in VARIANTS:
            print(f"dense: {variant} (run {repeat + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
            runs[variant].append(run_variant(config, variant))
    figures = {v: summarise(runs[v]) for v in VARIANTS}
    base = figures["baseline"]
    header = f"{'variant':10} {'s/epoch':>8} {'wall s':>7} {'CPU s':>7} {'x baseline':>10}"
    print(f"\n{header}  test accuracy per epoch")
    for variant, f in figures.items():
        accuracy = " ".join(f"{a:.3f}" for a in f["accuracy_per_epoch"][-1])
        ratio = f["epoch_s"] / base["epoch_s"]
        print(
            f"{variant:10} {f['epoch_s']:8.2f} {f['wall_s']:7.1f} {f['cpu_s']:7.1f} {ratio:10.1f}  {accuracy}"
        )
    doc = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": dataclasses.asdict(config),
        "workers": WORKERS,
        "variants": figures,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
