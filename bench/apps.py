"""Application benchmark: does dynamic parameter allocation pay off on real training workloads?

One run measures, for matrix factorisation (the 20,000 x 20,000 workload below) and
knowledge-graph embeddings, three variants of the *same* training code:

* ``baseline``: one process, numpy arrays, no parameter server (dynaps.apps.inprocess);
* ``static``: a LocalCluster with 2 servers and 2 workers that never localizes (classic PS);
* ``dynamic``: the same cluster, with localize (DSGD blocking for MF; relation clustering,
  localize-ahead and local negative sampling for KGE);
* ``hot`` (KGE only): ``dynamic`` with its most frequent entities replicated in every worker
  instead of relocated (``--hot-keys``, NuPS; dynaps.client.hot_keys);
* ``blocks`` (KGE only): ``dynamic`` in entity blocks (``--clustering entities``, the app's
  default; dynaps.apps.kge_blocks): rounds in which no two workers share an entity.

For each it records epoch time, parameter accesses per second, the share of accesses
served locally and model quality (test RMSE, filtered MRR), prints the targets, writes
JSON and a PNG.  ``--scaling`` instead runs MF on 200,000 x 20,000 (4M entries, rank 50,
2 epochs) dynamic at 1, 2, 4 and 8 nodes (N servers + N workers) and static at 8: meant
for a machine with 16 cores (``--scaling-size tiny`` is a smoke test anywhere).

    python bench/apps.py --repeat 3         # about 4 minutes on 2 cores (--repeat 1: 1.5)
    python bench/apps.py --quick            # small sizes, a smoke run
    python bench/apps.py --workloads kge --repeat 3 --hot-keys 250
    python bench/apps.py --scaling          # needs 16 cores to mean anything

The figures are medians over the repeats (variants interleaved, so a change in the
machine's load hits them alike); CPU seconds of all the job's processes are recorded
beside wall time, because on a shared 2-core machine they move far less with load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import dynaps
from dynaps.apps import kge, mf
from dynaps.apps.inprocess import InProcessPS

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "mf": ("baseline", "dynamic", "static"),
    "kge": ("baseline", "dynamic", "hot", "blocks", "static"),
}
HOT_KEYS = 500  # KGE's "hot" variant: entities replicated (bench/README.md, 2026-12-05)
HOT_SYNC_MS = 20.0

# the workload named in the targets: 20k x 20k, rank 32, 2M entries, Zipf(1.0), batch 1000, lr 0.05
MF = mf.Config(epochs=3, rows=20_000, cols=20_000, rank=32, entries=2_000_000, batch=1000, lr=0.05, zipf=1.0)
# Lapse's KGE (relation clustering); the ``blocks`` variant trains it in entity blocks
KGE = kge.Config(
    epochs=6,
    entities=5_000,
    relations=50,
    triples=100_000,
    clustering="relations",
    neg_strategy="onlylocal",
    ahead=4,
)
MF_QUICK = dataclasses.replace(MF, rows=3_000, cols=3_000, entries=100_000, rank=16)
KGE_QUICK = dataclasses.replace(KGE, epochs=2, entities=1_000, relations=10, triples=10_000, eval_triples=200)

# scaling run (16 cores): 200k x 20k, 4M entries, rank 50
SCALING = mf.Config(epochs=2, rows=200_000, cols=20_000, rank=50, entries=4_000_000, test_entries=100_000)
SCALING_TINY = dataclasses.replace(SCALING, rows=4_000, cols=400, rank=8, entries=40_000, test_entries=2_000)


def load_average() -> float:
    return os.getloadavg()[0]


def preload(ps: Any, app: str, config: Any) -> int:
    """Generate the data in a worker before the timed run (runs in LocalCluster's runners)."""
    getattr(__import__("dynaps.apps", fromlist=[app]), app).load(config)
    return int(ps.rank)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes: a figure the machine's load hardly changes."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def cpu_by_role(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds per role (runner = training process, worker = worker node, server, coordinator)."""
    roles: dict[str, float] = {}
    for name, pid in pids.items():
        role = name.split("-")[0]
        roles[role] = roles.get(role, 0.0) + cpu_seconds([pid])
    return roles


def run_variant(module: Any, config: Any, variant: str, nodes: int = 2) -> dict[str, Any]:
    """Train ``config`` as ``variant``: rank 0's epoch reports, CPU time and the load around it."""
    app = module.__name__.rsplit(".", 1)[-1]
    if variant == "baseline":
        module.load(config)  # data generation is not training time
        before, started, cpu = load_average(), time.perf_counter(), time.process_time()
        reports = module.train(InProcessPS(module.tables(config)), dataclasses.replace(config, quiet=True))
        cpu = time.process_time() - cpu
        roles = {"baseline": cpu}
    else:
        tables = module.tables(config)
        # hot and blocks: dynamic, with the config's replicated keys or entity blocks
        allocation = "dynamic" if variant in ("hot", "blocks") else variant
        chosen = dataclasses.replace(config, allocation=allocation, quiet=True)
        with dynaps.LocalCluster(
            servers=nodes, workers=nodes, tables=tables, allocation=allocation
        ) as cluster:
            cluster.run(preload, app, chosen)
            named = cluster.pids()
            pids = list(named.values())
            roles = cpu_by_role(named)
            before, started, cpu = load_average(), time.perf_counter(), cpu_seconds(pids)
            reports = cluster.run(module.train, chosen)[0]
            cpu = cpu_seconds(pids) - cpu
            roles = {role: seconds - roles[role] for role, seconds in cpu_by_role(named).items()}
    return {
        "variant": variant,
        "nodes": nodes,
        "cpu_s_by_role": roles,
        "epochs": reports,
        "wall_s": time.perf_counter() - started,
        "cpu_s": cpu,
        "load_before": before,
        "load_after": load_average(),
    }


def summarise(runs: list[dict[str, Any]], quality_key: str) -> dict[str, Any]:
    """Figures of one variant over its repeated runs: medians of the per-run means."""
    per_run = [statistics.fmean(e["seconds"] for e in run["epochs"]) for run in runs]
    epochs = [e for run in runs for e in run["epochs"]]
    quality = [run["epochs"][-1]["quality"].get(quality_key, float("nan")) for run in runs]
    return {
        "variant": runs[0]["variant"],
        "nodes": runs[0]["nodes"],
        "epoch_s_mean": statistics.median(per_run),  # median over repeats of the mean epoch time
        "epoch_s_runs": per_run,
        "epoch_s_min": min(e["seconds"] for e in epochs),
        "cpu_s_per_epoch": statistics.median(run["cpu_s"] / len(run["epochs"]) for run in runs),
        "cpu_s_per_epoch_by_role": {
            role: statistics.median(run["cpu_s_by_role"][role] / len(run["epochs"]) for run in runs)
            for role in runs[0]["cpu_s_by_role"]
        },
        "keys_per_s": statistics.median(e["keys_per_second"] for e in epochs),
        "local_share": statistics.fmean(e["local_share"] for e in epochs),
        "quality": statistics.fmean(quality),
        "quality_runs": quality,
        "quality_name": quality_key,
        "loss": statistics.fmean(run["epochs"][-1]["loss"] for run in runs),
        "load": [[run["load_before"], run["load_after"]] for run in runs],
    }


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []

    def add(name: str, value: float, goal: str, met: bool) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": bool(met)})

    for name in doc["workloads"]:
        v = doc["workloads"][name]["variants"]
        ratio = v["static"]["epoch_s_mean"] / v["dynamic"]["epoch_s_mean"]
        add(f"{name}: dynamic vs static speed-up at 2 nodes", ratio, ">= 10", ratio >= 10)
    if "mf" in doc["workloads"]:
        mf_targets(doc["workloads"]["mf"]["variants"], add)
    for name in doc["workloads"]:  # CPU time of all the job's processes: what load does not distort
        v = doc["workloads"][name]["variants"]
        ratio = v["static"]["cpu_s_per_epoch"] / v["dynamic"]["cpu_s_per_epoch"]
        add(f"{name}: static / dynamic CPU seconds per epoch (info)", ratio, "(no target)", True)
    if "kge" in doc["workloads"]:
        kge_targets(doc["workloads"]["kge"]["variants"], add)
    return out


def mf_targets(v: dict[str, Any], add: Any) -> None:
    add(
        "mf 20k x 20k, 2 workers: dynamic epoch time (s)",
        v["dynamic"]["epoch_s_mean"],
        "<= 1.6",
        v["dynamic"]["epoch_s_mean"] <= 1.6,
    )
    ratio = v["baseline"]["epoch_s_mean"] / v["dynamic"]["epoch_s_mean"]
    add("mf: dynamic vs single-process baseline speed-up", ratio, ">= 1", ratio >= 1)
    rmse = [v[k]["quality"] for k in ("baseline", "static", "dynamic")]
    spread = (max(rmse) - min(rmse)) / min(rmse)
    add("mf: test RMSE spread over the variants (relative)", spread, "<= 0.03", spread <= 0.03)


def kge_targets(v: dict[str, Any], add: Any) -> None:
    mrr = [v[k]["quality"] for k in v]
    spread = max(mrr) - min(mrr)
    add("kge: filtered MRR spread over the variants (absolute)", spread, "<= 0.03", spread <= 0.03)
    # issue 18, hot keys: 2 nodes at least as fast as one process, >= 3x faster than static;
    # for replicated hot keys, and for entity blocks (the app's default since 2026-12-06)
    for variant, label in (("hot", "hot keys"), ("blocks", "entity blocks")):
        ratio = v["baseline"]["epoch_s_mean"] / v[variant]["epoch_s_mean"]
        add(f"kge: {label} vs single-process baseline speed-up", ratio, ">= 1", ratio >= 1)
        ratio = v["static"]["epoch_s_mean"] / v[variant]["epoch_s_mean"]
        add(f"kge: {label} vs static speed-up at 2 nodes", ratio, ">= 3", ratio >= 3)
        ratio = v["static"]["cpu_s_per_epoch"] / v[variant]["cpu_s_per_epoch"]
        add(f"kge: static / {label} CPU seconds per epoch (info)", ratio, "(no target)", True)


def replot(path: Path) -> None:
    """Redraw the PNG of a recorded JSON (``--replot FILE``)."""
    doc = json.loads(path.read_text())
    (plot_scaling if "rows" in doc else plot)(doc, path.with_suffix(".png"))


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["workloads"])
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.4 * len(names)), squeeze=False)
    colours = {
        "baseline": "#888888",
        "static": "#d95f02",
        "dynamic": "#1b9e77",
        "hot": "#7570b3",
        "blocks": "#e7298a",
    }
    for row, name in enumerate(names):
        variants = doc["workloads"][name]["variants"]
        labels = list(variants)
        ax = axes[row][0]
        times = [variants[k]["epoch_s_mean"] for k in labels]
        cpu = [variants[k]["cpu_s_per_epoch"] for k in labels]
        bars = ax.bar(labels, times, color=[colours[k] for k in labels])
        ax.bar_label(bars, labels=[f"{t:.2f} s (CPU {c:.2f} s)" for t, c in zip(times, cpu, strict=True)])
        ax.set_ylim(0, max(times) * 1.18)
        ax.set_ylabel("seconds per epoch (median of runs)")
        ax.set_title(f"{name}: epoch time (2 nodes; baseline = 1 process)")
        ax = axes[row][1]
        for k in labels:
            epochs = doc["workloads"][name]["runs"][k]
            q = [e["quality"].get(variants[k]["quality_name"], np.nan) for e in epochs]
            ax.plot(range(1, len(q) + 1), q, marker="o", label=k, color=colours[k])
        ax.set_xlabel("epoch (last run of each variant)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(variants[labels[0]]["quality_name"])
        ax.set_title(f"{name}: quality per epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main_apps(args: argparse.Namespace) -> dict[str, Any]:
    mf_config, kge_config = (MF_QUICK, KGE_QUICK) if args.quick else (MF, KGE)
    doc: dict[str, Any] = {"workloads": {}, "repeat": args.repeat}
    hot_config = dataclasses.replace(kge_config, hot_keys=args.hot_keys, hot_sync_ms=args.hot_sync_ms)
    chosen = {"hot": hot_config, "blocks": dataclasses.replace(kge_config, clustering="entities")}
    for name, module, config, key in (
        ("mf", mf, mf_config, "test RMSE"),
        ("kge", kge, kge_config, "MRR"),
    ):
        if name not in args.workloads:
            continue
        variants = VARIANTS[name]
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for repeat in range(args.repeat):  # variants interleaved, so load drift hits all alike
            for variant in variants:
                print(f"{name}: {variant} (run {repeat + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
                run = run_variant(module, chosen.get(variant, config), variant)
                runs[variant].append(run)
                print(
                    f"  {statistics.fmean(e['seconds'] for e in run['epochs']):8.2f} s/epoch  "
                    f"{run['cpu_s'] / len(run['epochs']):6.2f} CPU s/epoch  "
                    f"local {100 * run['epochs'][-1]['local_share']:5.1f}%  "
                    f"{key} {run['epochs'][-1]['quality'].get(key, float('nan')):.4f}  "
                    f"(load {run['load_before']:.1f} -> {run['load_after']:.1f})  CPU s/epoch by role: "
                    + ", ".join(
                        f"{r} {c / len(run['epochs']):.2f}" for r, c in sorted(run["cpu_s_by_role"].items())
                    ),
                    file=sys.stderr,
                    flush=True,
                )
        doc["workloads"][name] = {
            "config": dataclasses.asdict(config),
            "variants": {v: summarise(runs[v], key) for v in variants},
            "runs": {v: runs[v][-1]["epochs"] for v in variants},
        }
    doc["targets"] = targets(doc)
    return doc


def main_scaling(args: argparse.Namespace) -> dict[str, Any]:
    """Dynamic at 1, 2, 4 and 8 nodes and static at 8 (tiny: dynamic at 1, 2, static at 2)."""
    config = SCALING_TINY if args.scaling_size == "tiny" else SCALING
    nodes_list = [1, 2] if args.scaling_size == "tiny" else [1, 2, 4, 8]
    top = max(nodes_list)
    if args.scaling_size == "full" and (os.cpu_count() or 1) < 2 * top:
        print(
            f"scaling: this machine has {os.cpu_count()} cores; {top} nodes need {2 * top} "
            "for the speed-up to mean anything",
            file=sys.stderr,
        )
    plan = [("dynamic", n) for n in nodes_list] + [("static", top)]
    rows = []
    for variant, nodes in plan:
        print(f"scaling: {variant} at {nodes} nodes ...", file=sys.stderr, flush=True)
        s = summarise([run_variant(mf, config, variant, nodes)], "test RMSE")
        rows.append(s)
        print(
            f"  {s['epoch_s_mean']:8.2f} s/epoch  {s['cpu_s_per_epoch']:8.2f} CPU s/epoch  "
            f"test RMSE {s['quality']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    one = next(r["epoch_s_mean"] for r in rows if r["variant"] == "dynamic" and r["nodes"] == 1)
    for r in rows:
        r["speedup_vs_1_node"] = one / r["epoch_s_mean"]  # against dynamic at 1 node
    dyn = next(r for r in rows if r["variant"] == "dynamic" and r["nodes"] == top)
    return {
        "size": args.scaling_size,
        "config": dataclasses.asdict(config),
        "rows": rows,
        "targets": [
            {
                "target": f"dynamic at {top} nodes vs 1 node speed-up",
                "value": dyn["speedup_vs_1_node"],
                "goal": ">= 5 (8 nodes, 16 cores)",
                "met": top == 8 and dyn["speedup_vs_1_node"] >= 5,
            }
        ],
    }


def plot_scaling(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for variant, colour in (("static", "#d95f02"), ("dynamic", "#1b9e77")):
        rows = [r for r in doc["rows"] if r["variant"] == variant]
        nodes = [r["nodes"] for r in rows]
        axes[0].plot(nodes, [r["epoch_s_mean"] for r in rows], marker="o", color=colour, label=variant)
        axes[1].plot(nodes, [r["quality"] for r in rows], marker="o", color=colour, label=variant)
    axes[0].set(xlabel="nodes", ylabel="seconds per epoch", title="MF scaling: epoch time", yscale="log")
    axes[1].set(xlabel="nodes", ylabel="test RMSE", title="MF scaling: quality")
    nodes = sorted({r["nodes"] for r in doc["rows"]})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(nodes, [str(n) for n in nodes])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run of the whole benchmark"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant, interleaved (default 1)")
    parser.add_argument(
        "--workloads",
        type=lambda text: text.split(","),
        default=["mf", "kge"],
        help="comma-separated: mf, kge (default both)",
    )
    parser.add_argument(
        "--hot-keys", type=float, default=HOT_KEYS, help=f"KGE hot variant: entities replicated ({HOT_KEYS})"
    )
    parser.add_argument(
        "--hot-sync-ms",
        type=float,
        default=HOT_SYNC_MS,
        help=f"KGE hot variant: flush interval ({HOT_SYNC_MS})",
    )
    parser.add_argument("--scaling", action="store_true", help="run the multi-node MF scaling run instead")
    parser.add_argument("--scaling-size", choices=["full", "tiny"], default="full", help="tiny: a smoke test")
    parser.add_argument(
        "--out", type=Path, help="JSON output (default bench/results/apps[-scaling][-quick].json)"
    )
    parser.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the PNG of a recorded run")
    args = parser.parse_args()
    if not args.workloads or set(args.workloads) - set(VARIANTS):
        parser.error(f"--workloads takes a comma-separated list of {', '.join(VARIANTS)}")
    if args.replot:
        replot(args.replot)
        return 0
    suffix = "-scaling" if args.scaling else ""
    suffix += "-quick" if args.quick or (args.scaling and args.scaling_size == "tiny") else ""
    if not args.scaling and sorted(args.workloads) != ["kge", "mf"]:
        suffix += "-" + "-".join(args.workloads)
    out = args.out or RESULTS / f"apps{suffix}.json"
    started = time.time()
    doc = main_scaling(args) if args.scaling else main_apps(args)
    doc["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    doc["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    doc["started"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    doc["wall_s"] = time.time() - started
    print(f"\n{'target':58} {'measured':>10} {'goal':>24}  met")
    for t in doc["targets"]:
        print(f"{t['target']:58} {t['value']:10.3f} {t['goal']:>24}  {'yes' if t['met'] else 'NO'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    png = out.with_suffix(".png")
    (plot_scaling if args.scaling else plot)(doc, png)
    print(f"\nwrote {out} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
