"""w2v with two or more workers: relocated, replicated hot words, or static (issue 18, item 4).

Every worker's minibatches want a corpus's frequent words, so under dynamic allocation
they bounce between the workers (each localizes them ahead and takes them from the
others).  This runs the same w2v training, on the same data, as:

* ``single``: one process, no parameter server (``InProcessPS``): the baseline;
* ``static``: W workers, every key on its home server;
* ``dynamic``: W workers, every word localized ahead, none replicated (``--hot-words 0``);
* ``auto``: dynamic, the words expected in every other minibatch replicated in every worker
  (the app's default, ``w2v.hot_words_expected``), flushed every 20 ms;
* ``hot=K``: dynamic, the K most frequent words replicated (``--hot-words K``; K < 1 is a
  fraction of the vocabulary);

interleaved over ``--repeat`` rounds, and records per run the epoch time, the CPU seconds
of every process of the job (user + system, the training included) per epoch, the
quality (topic P@10, synonym@1, loss) and the share of accesses served locally.  CPU
seconds are the robust figure on a small, noisy machine: with 2 cores and 2W + 1
processes, wall time mostly says how busy the cores are.

    python -P bench/w2v_hot.py                                  # the example's corpus, ~3 min
    python -P bench/w2v_hot.py --corpus large --hot 0,500,5000  # 50,000 words, 1M tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

import dynaps
from dynaps.apps import w2v
from dynaps.apps.arguments import sync_ms
from dynaps.apps.inprocess import InProcessPS

RESULTS = Path(__file__).parent / "results"
CORPORA = {
    "example": w2v.Config(vocabulary=2_000, tokens=100_000, dim=32, epochs=3, quiet=True),
    "large": w2v.Config(vocabulary=50_000, tokens=1_000_000, dim=32, epochs=1, quiet=True),
}


def preload(ps: Any, config: w2v.Config) -> int:
    """Generate the corpus in a runner before the measured run."""
    w2v.load(config)
    return int(ps.rank)


def cpu_seconds(pids: dict[str, int]) -> float:
    total = 0.0
    for pid in pids.values():
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    last = reports[-1]
    return {
        "epoch_s": statistics.fmean(r["seconds"] for r in reports),
        "loss": last["loss"],
        "topic P@10": last["quality"]["topic P@10"],
        "synonym@1": last["quality"]["synonym@1"],
        "local_share": last["local_share"],
    }


def run_single(config: w2v.Config) -> dict[str, Any]:
    w2v.load(config)
    me = psutil.Process()
    before = me.cpu_times()
    reports = w2v.train(InProcessPS(w2v.tables(config)), config)
    after = me.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    return {**summary(reports), "cpu_s_per_epoch": cpu / len(reports)}


def run_cluster(config: w2v.Config, workers: int) -> dict[str, Any]:
    with dynaps.LocalCluster(servers=workers, workers=workers, tables=w2v.tables(config)) as cluster:
        cluster.run(preload, config)
        pids = cluster.pids()
        before, started = cpu_seconds(pids), time.perf_counter()
        reports = cluster.run(w2v.train, config)[0]
        wall = time.perf_counter() - started
        cpu = cpu_seconds(pids) - before
    return {**summary(reports), "cpu_s_per_epoch": cpu / len(reports), "wall_s": wall}


def variants(hot: list[float]) -> list[tuple[str, dict[str, Any]]]:
    chosen: list[tuple[str, dict[str, Any]]] = [
        ("single", {}),
        ("static", {"allocation": "static"}),
        ("dynamic", {"hot_words": 0.0}),
        ("auto", {"hot_words": None}),
    ]
    chosen += [(f"hot={h:g}", {"hot_words": h}) for h in hot if h > 0]
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="example", help="(default example)")
    parser.add_argument("--workers", type=int, default=2, help="workers (and servers) of the job (default 2)")
    parser.add_argument(
        "--hot",
        default="100,500,2000",
        help="comma-separated --hot-words values to run (a count, or a fraction below 1; "
        "default 100,500,2000: 2,000 is every word of the example's corpus)",
    )
    parser.add_argument(
        "--sync-ms", type=sync_ms, default=None, help="the replicas' --hot-sync-ms (default the app's)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="rounds of every variant, interleaved")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/w2v-hot-<corpus>.json)")
    args = parser.parse_args()
    try:
        hot = [float(h) for h in args.hot.split(",") if h]
    except ValueError:
        parser.error("--hot takes comma-separated numbers, e.g. 100,500,0.5")
    if args.workers < 2 or args.repeat < 1:
        parser.error("--workers must be at least 2 and --repeat at least 1")
    base = CORPORA[args.corpus]
    if args.sync_ms is not None:
        base = dataclasses.replace(base, hot_sync_ms=args.sync_ms)
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(args.repeat):
        for name, change in variants(hot):
            config = dataclasses.replace(base, **change)
            run = run_single(config) if name == "single" else run_cluster(config, args.workers)
            runs.setdefault(name, []).append(run)
            print(
                f"round {round_ + 1} {name:>10}: epoch {run['epoch_s']:6.2f} s  "
                f"CPU {run['cpu_s_per_epoch']:6.2f} s/epoch  P@10 {run['topic P@10']:.3f}  "
                f"synonym@1 {run['synonym@1']:.2f}  loss {run['loss']:.4f}  local {run['local_share']:.0%}",
                flush=True,
            )
    print(f"\nmedians over {args.repeat} rounds, {args.workers} workers, corpus {args.corpus}:")
    for name, rows in runs.items():
        epoch = statistics.median(r["epoch_s"] for r in rows)
        cpu = statistics.median(r["cpu_s_per_epoch"] for r in rows)
        print(f"{name:>10}: epoch {epoch:6.2f} s  CPU {cpu:6.2f} s/epoch")
    out = args.out or RESULTS / f"w2v-hot-{args.corpus}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"workers": args.workers, "config": dataclasses.asdict(base), "runs": runs}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
