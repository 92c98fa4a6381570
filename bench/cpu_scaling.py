"""CPU-work scaling (issue 18): does the CPU a job spends per epoch stay flat as nodes grow?

Trains the *same* data with dynamic allocation at 1, 2, 4 and 8 nodes (N servers + N
worker nodes, each with its training process) and records, per epoch, the CPU seconds
(user + system) of every process of the job, by role, and wall time beside them. The
inflation CPU(N) / CPU(1) is the figure: with work that is split, not repeated, it stays
near 1 (Lapse's C++ stays flat). Two figures: the whole run's CPU divided by the epochs
(set-up and the evaluations after each epoch included), and the CPU inside the epochs
only, from the barrier that starts each epoch to the one that ends it (rank 0 reads every
process's CPU there, ``dynaps.apps.reporting.EPOCH_HOOKS``): what grows with nodes per epoch
of training, apart from what each of N processes pays once. Data sizes:

* MF: 50,000 x 5,000, 1,000,000 entries, rank 50, 2 epochs (the issue's workload);
* KGE: ComplEx dim 32, 5,000 entities, 50 relations, 100,000 triples, 2 epochs
  (bench/apps.py's workload: under 2 s per epoch at 1 node), in entity blocks (the app's
  default; ``--kge-clustering relations`` for Lapse's relation clustering).

``--profile`` runs every process under cProfile on its main thread's CPU clock
(``DYNAPS_PROFILE_DIR``, see dynaps.profiling), snapshots the profiles before and after
training (SIGUSR2) and splits the difference by activity (spin, transport, auth, codec,
data plane, relocation, control, client requests, training; ``bench/cpu_activity.py``):
where the extra CPU goes.
A profile slows Python code, so its seconds are larger than the unprofiled ones; compare
activities with each other and across N, not with the CPU table.

    python -P bench/cpu_scaling.py                      # about 6 min on 2 cores
    python -P bench/cpu_scaling.py --profile            # the same, profiled (slower)
    python -P bench/cpu_scaling.py --nodes 1,8 --workloads mf --repeat 2
    python -P bench/cpu_scaling.py --workloads kge --kge-clustering relations
    python -P bench/cpu_scaling.py --workloads kge --nodes 1,8 --kge-triples 1000000   # longer rounds
    python -P bench/cpu_scaling.py --workloads kge --nodes 1,8 --kge-triples 1000000 --kge-entities 50000
    python -P bench/cpu_scaling.py --nodes 1,8 --idle 10   # an idle job's CPU per second

Writes bench/results/cpu-scaling[-profile].json and .png.  On a shared 2-core machine the
wall time of 8 nodes (25 processes) says little; CPU seconds move far less with load.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import dynaps
from dynaps.apps import kge, mf, reporting
from dynaps.apps.arguments import positive_int, sync_ms
from dynaps.profiling import PROFILE_DIR_ENV

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the sibling module
from cpu_activity import by_activity, own_times, snapshot

RESULTS = Path(__file__).parent / "results"
WORKLOADS: dict[str, tuple[Any, Any, str]] = {
    "mf": (
        mf,
        mf.Config(epochs=2, rows=50_000, cols=5_000, rank=50, entries=1_000_000, test_entries=50_000),
        "test RMSE",
    ),
    "kge": (
        kge,
        kge.Config(
            epochs=2, entities=5_000, relations=50, triples=100_000, neg_strategy="onlylocal", ahead=4
        ),
        "MRR",
    ),
}
QUICK = {
    "mf": dataclasses.replace(WORKLOADS["mf"][1], rows=5_000, cols=500, entries=50_000, test_entries=2_000),
    "kge": dataclasses.replace(
        WORKLOADS["kge"][1], entities=1_000, relations=10, triples=10_000, eval_triples=200
    ),
}


def preload(ps: Any, app: str, config: Any) -> int:
    """Generate the data in a runner before the timed run."""
    getattr(__import__("dynaps.apps", fromlist=[app]), app).load(config)
    return int(ps.rank)


def train_marked(ps: Any, app: str, config: Any, pids: dict[str, int]) -> tuple[Any, list[Any]]:
    """``app``'s training, with every process's CPU seconds read by rank 0 as each epoch starts
    and ends (right after the app's barriers: the other workers are there too)."""

    marks: list[tuple[str, int, dict[str, float]]] = []

    def mark(phase: str, epoch: int) -> None:
        if ps.rank == 0:
            marks.append((phase, epoch, cpu_seconds(pids)))

    reporting.EPOCH_HOOKS.append(mark)
    try:
        reports = getattr(__import__("dynaps.apps", fromlist=[app]), app).train(ps, config)
    finally:
        reporting.EPOCH_HOOKS.remove(mark)
    return reports, marks


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        out[name] = times.user + times.system
    return out


def in_epochs(marks: list[Any]) -> dict[str, float]:
    """CPU seconds of each process inside the epochs (start to end marks), summed."""
    total: collections.defaultdict[str, float] = collections.defaultdict(float)
    starts = {epoch: seconds for phase, epoch, seconds in marks if phase == "start"}
    for phase, epoch, seconds in marks:
        if phase == "end":
            for name, value in seconds.items():
                total[name] += value - starts[epoch].get(name, value)
    return dict(total)


def role_of(name: str) -> str:
    return "coordinator" if name == "coordinator" else name.split("-", 1)[0]


def process_times(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """CPU seconds (all threads, and the main thread alone) and voluntary context switches."""
    out = {}
    for name, pid in pids.items():
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        main = next((t for t in proc.threads() if t.id == pid), None)
        out[name] = {
            "cpu_s": times.user + times.system,
            "main_thread_cpu_s": (main.user_time + main.system_time) if main else float("nan"),
            "threads": proc.num_threads(),
            "wakeups": float(proc.num_ctx_switches().voluntary),
        }
    return out


def difference(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        name: {k: v - before[name][k] for k, v in figures.items() if k != "threads"}
        | {"threads": figures["threads"]}
        for name, figures in after.items()
        if name in before
    }


# ---------------------------------------------------------------------- runs


def run_once(name: str, config: Any, nodes: int, profile_dir: Path | None) -> dict[str, Any]:
    module, _, quality_key = WORKLOADS[name]
    chosen = dataclasses.replace(config, allocation="dynamic", quiet=True)
    with dynaps.LocalCluster(servers=nodes, workers=nodes, tables=module.tables(config)) as cluster:
        cluster.run(preload, name, chosen)
        pids = cluster.pids()
        if profile_dir is not None:
            first = snapshot(profile_dir, pids, 1)
        before, started = process_times(pids), time.perf_counter()
        reports, marks = cluster.run(train_marked, name, chosen, pids)[0]
        wall = time.perf_counter() - started
        after = process_times(pids)
        if profile_dir is not None:
            second = snapshot(profile_dir, pids, 2)
    epochs = len(reports)
    per_process = difference(after, before)
    roles: collections.defaultdict[str, float] = collections.defaultdict(float)
    for proc, figures in per_process.items():
        roles[role_of(proc)] += figures["cpu_s"] / epochs
    training = in_epochs(marks)
    training_roles: collections.defaultdict[str, float] = collections.defaultdict(float)
    for proc, seconds in training.items():
        training_roles[role_of(proc)] += seconds / epochs
    first_start = next(seconds for phase, _, seconds in marks if phase == "start")
    setup = sum(first_start[p] - before[p]["cpu_s"] for p in first_start if p in before)
    run: dict[str, Any] = {
        "workload": name,
        "nodes": nodes,
        "epochs": epochs,
        "wall_s_per_epoch": wall / epochs,
        "epoch_s": statistics.fmean(e["seconds"] for e in reports),
        "cpu_s_per_epoch": sum(f["cpu_s"] for f in per_process.values()) / epochs,
        "cpu_s_per_epoch_by_role": dict(roles),
        # inside the epochs only: without the set-up before the first and the evaluations
        "epoch_cpu_s": sum(training.values()) / epochs,
        "epoch_cpu_s_by_role": dict(training_roles),
        "setup_cpu_s": setup,
        "wakeups_per_epoch": sum(f["wakeups"] for f in per_process.values()) / epochs,
        "processes": per_process,
        "quality": reports[-1]["quality"].get(quality_key, float("nan")),
        "quality_name": quality_key,
        "local_share": reports[-1]["local_share"],
        "load": os.getloadavg()[0],
    }
    if profile_dir is not None:
        activities: dict[str, collections.defaultdict[str, float]] = {}
        unattributed: dict[str, float] = {}
        for proc in pids:
            role = role_of(proc)
            counts = by_activity(*own_times(first[proc], second[proc]), unattributed)
            mine = activities.setdefault(role, collections.defaultdict(float))
            for activity, seconds in counts.items():
                mine[activity] += seconds / epochs
        run["profile_s_per_epoch"] = {role: dict(c) for role, c in activities.items()}
        largest = sorted(unattributed.items(), key=lambda item: -item[1])[:12]
        run["profile_unattributed_s_per_epoch"] = {f: t / epochs for f, t in largest}
    return run


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of one (workload, nodes)."""
    first = runs[0]
    out: dict[str, Any] = {
        "workload": first["workload"],
        "nodes": first["nodes"],
        "runs": len(runs),
        "cpu_s_per_epoch": statistics.median(r["cpu_s_per_epoch"] for r in runs),
        "cpu_s_per_epoch_runs": [r["cpu_s_per_epoch"] for r in runs],
        "epoch_cpu_s": statistics.median(r["epoch_cpu_s"] for r in runs),
        "epoch_cpu_s_runs": [r["epoch_cpu_s"] for r in runs],
        "epoch_cpu_s_by_role": {
            role: statistics.median(r["epoch_cpu_s_by_role"].get(role, 0.0) for r in runs)
            for role in first["epoch_cpu_s_by_role"]
        },
        "setup_cpu_s": statistics.median(r["setup_cpu_s"] for r in runs),
        "wall_s_per_epoch": statistics.median(r["wall_s_per_epoch"] for r in runs),
        "epoch_s": statistics.median(r["epoch_s"] for r in runs),
        "wakeups_per_epoch": statistics.median(r["wakeups_per_epoch"] for r in runs),
        "cpu_s_per_epoch_by_role": {
            role: statistics.median(r["cpu_s_per_epoch_by_role"].get(role, 0.0) for r in runs)
            for role in first["cpu_s_per_epoch_by_role"]
        },
        "quality": statistics.median(r["quality"] for r in runs),
        "quality_runs": [r["quality"] for r in runs],
        "quality_name": first["quality_name"],
        "local_share": statistics.fmean(r["local_share"] for r in runs),
        "load": [r["load"] for r in runs],
        # every process's whole-run CPU and wake-ups per epoch (and its threads), run by run
        "processes_per_epoch_runs": [
            {
                name: {
                    field: value if field == "threads" else value / r["epochs"]
                    for field, value in figures.items()
                }
                for name, figures in r["processes"].items()
            }
            for r in runs
        ],
    }
    if "profile_unattributed_s_per_epoch" in first:
        out["profile_unattributed_s_per_epoch"] = runs[-1]["profile_unattributed_s_per_epoch"]
    if "profile_s_per_epoch" in first:
        roles = {role for r in runs for role in r["profile_s_per_epoch"]}
        out["profile_s_per_epoch"] = {
            role: {
                act: statistics.median(r["profile_s_per_epoch"].get(role, {}).get(act, 0.0) for r in runs)
                for act in {a for r in runs for a in r["profile_s_per_epoch"].get(role, {})}
            }
            for role in roles
        }
    return out


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    goals = {"mf": 1.3, "kge": 1.5}
    out = []
    for failure in doc["failed"]:
        if failure["nodes"] == 8 and failure["workload"] in goals:
            out.append(
                {
                    "target": f"{failure['workload']}: CPU per epoch at 8 nodes / 1 node (the run failed)",
                    "value": float("nan"),
                    "goal": f"<= {goals[failure['workload']]}",
                    "met": False,
                }
            )
    for name, rows in doc["workloads"].items():
        top = max(rows, key=lambda r: r["nodes"])
        if top["nodes"] == 8 and name in goals:
            for key, what in (("epoch_inflation", "inside epochs"), ("inflation", "whole run")):
                value = top[key]
                out.append(
                    {
                        "target": f"{name}: CPU per epoch at 8 / 1 node ({what})",
                        "value": value,
                        "goal": f"<= {goals[name]}",
                        "met": value <= goals[name],
                    }
                )
    return out


# ---------------------------------------------------------------------- plot


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["workloads"])
    profiled = all("profile_s_per_epoch" in r for rows in doc["workloads"].values() for r in rows)
    cols = 2 if profiled else 1
    fig, axes = plt.subplots(len(names), cols, figsize=(6.5 * cols, 3.6 * len(names)), squeeze=False)
    role_colours = {"coordinator": "#7570b3", "server": "#d95f02", "worker": "#e7298a", "runner": "#1b9e77"}
    for row, name in enumerate(names):
        rows = doc["workloads"][name]
        nodes = [str(r["nodes"]) for r in rows]
        ax = axes[row][0]
        bottom = np.zeros(len(rows))
        for role, colour in role_colours.items():
            values = np.array([r["cpu_s_per_epoch_by_role"].get(role, 0.0) for r in rows])
            ax.bar(nodes, values, bottom=bottom, color=colour, label=role)
            bottom += values
        for i, r in enumerate(rows):
            ax.annotate(f"{r['inflation']:.2f}x", (i, bottom[i]), ha="center", va="bottom")
        ax.set_ylim(0, bottom.max() * 1.15)
        ax.set(xlabel="nodes (N servers + N workers)", ylabel="CPU s per epoch (all processes)")
        ax.set_title(f"{name}: CPU per epoch by role, inflation vs 1 node")
        ax.legend(fontsize=8)
        if profiled:
            ax = axes[row][1]
            acts = sorted({a for r in rows for role in r["profile_s_per_epoch"].values() for a in role})
            bottom = np.zeros(len(rows))
            cmap = plt.get_cmap("tab20")
            for k, act in enumerate(acts):
                values = np.array(
                    [sum(role.get(act, 0.0) for role in r["profile_s_per_epoch"].values()) for r in rows]
                )
                ax.bar(nodes, values, bottom=bottom, color=cmap(k), label=act)
                bottom += values
            ax.set(xlabel="nodes", ylabel="profiled CPU s per epoch (main threads)")
            ax.set_title(f"{name}: profiled CPU by activity")
            ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- main


def print_table(doc: dict[str, Any]) -> None:
    for name, rows in doc["workloads"].items():
        print(
            f"\n{name}: {'nodes':>5} {'CPU s/ep':>9} {'infl':>6} {'in epochs':>9} {'infl':>6} "
            f"{'set-up':>6} {'wall s/ep':>9} "
            f"{'coord':>6} {'servers':>7} {'workers':>7} {'runners':>7} {'wakeups/ep':>10} quality"
        )
        for r in rows:
            role = r["cpu_s_per_epoch_by_role"]
            print(
                f"{'':5} {r['nodes']:5d} {r['cpu_s_per_epoch']:9.2f} {r['inflation']:6.2f} "
                f"{r['epoch_cpu_s']:9.2f} {r['epoch_inflation']:6.2f} {r['setup_cpu_s']:6.2f} "
                f"{r['wall_s_per_epoch']:9.2f} {role.get('coordinator', 0):6.2f} "
                f"{role.get('server', 0):7.2f} "
                f"{role.get('worker', 0):7.2f} {role.get('runner', 0):7.2f} {r['wakeups_per_epoch']:10.0f} "
                f"{r['quality_name']} {r['quality']:.4f}"
            )
        if "profile_s_per_epoch" in rows[0]:
            acts = sorted({a for r in rows for role in r["profile_s_per_epoch"].values() for a in role})
            print(
                f"  profiled CPU s per epoch by activity (all processes), nodes {[r['nodes'] for r in rows]}:"
            )
            for act in acts:
                values = [sum(role.get(act, 0.0) for role in r["profile_s_per_epoch"].values()) for r in rows]
                print(f"    {act:48} " + " ".join(f"{v:7.3f}" for v in values))


def idle_once(nodes: int, seconds: float) -> dict[str, float]:
    """CPU seconds per second, by role, of a job of ``nodes`` servers and worker nodes
    doing nothing: the heartbeats, chores and polls every node pays whatever it serves."""
    tables = {"W": dynaps.TableSpec(num_keys=100_000, dim=50)}
    with dynaps.LocalCluster(servers=nodes, workers=nodes, tables=tables) as cluster:
        time.sleep(2.0)  # past the start-up's messages
        pids = cluster.pids()
        before, started = cpu_seconds(pids), time.perf_counter()
        time.sleep(seconds)
        after, elapsed = cpu_seconds(pids), time.perf_counter() - started
    roles: collections.defaultdict[str, float] = collections.defaultdict(float)
    for name, value in after.items():
        roles[role_of(name)] += (value - before[name]) / elapsed
    return dict(roles)


def measure_idle(nodes: list[int], seconds: float, repeat: int) -> int:
    print(f"{'nodes':>5} {'CPU s/s':>8} {'coord':>6} {'servers':>7} {'workers':>7}  (idle; per role)")
    for _ in range(repeat):
        for n in nodes:
            roles = idle_once(n, seconds)
            print(
                f"{n:5d} {sum(roles.values()):8.3f} {roles.get('coordinator', 0.0):6.3f} "
                f"{roles.get('server', 0.0):7.3f} {roles.get('worker', 0.0):7.3f}",
                flush=True,
            )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", default="1,2,4,8", help="comma-separated node counts (default 1,2,4,8)")
    parser.add_argument("--workloads", default="mf,kge", help="comma-separated: mf, kge (default both)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per node count, interleaved (default 1)")
    parser.add_argument("--profile", action="store_true", help="profile every process: CPU by activity")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="with --profile: keep the .prof files here (default: a temporary directory)",
    )
    parser.add_argument("--quick", action="store_true", help="small data: a smoke run")
    parser.add_argument(
        "--idle",
        type=float,
        metavar="SECONDS",
        help="instead of training: CPU per second of an idle job at each node count, over SECONDS",
    )
    parser.add_argument(
        "--kge-hot-keys",
        type=float,
        default=0.0,
        metavar="N",
        help="KGE: replicate the N (or this fraction of) most frequent entities in every worker "
        "(dynaps.client.hot_keys; default 0: none)",
    )
    parser.add_argument(
        "--kge-hot-sync-ms",
        type=sync_ms,
        default=None,
        metavar="MS",
        help="KGE: how often replicas (the relations in entity blocks) are flushed and refreshed "
        "(python -m dynaps.apps.kge --hot-sync-ms; default the app's)",
    )
    parser.add_argument(
        "--kge-triples",
        type=positive_int,
        default=None,
        metavar="N",
        help="KGE: training triples of the synthetic graph (default 100,000). A larger graph makes "
        "longer rounds with the same messages per round; its ranking then uses 2,000 test "
        "triples, so that the evaluations stay short",
    )
    parser.add_argument(
        "--kge-entities",
        type=positive_int,
        default=None,
        metavar="N",
        help="KGE: entities of the synthetic graph (default 5,000). With --kge-triples, a graph "
        "with fewer triples per entity: larger entity blocks for the same rounds",
    )
    parser.add_argument(
        "--kge-epochs",
        type=positive_int,
        default=None,
        metavar="N",
        help="KGE: epochs (default 2; the larger graphs rank well only from the third)",
    )
    parser.add_argument(
        "--kge-clustering",
        choices=["entities", "relations"],
        default="entities",
        help="KGE: how work is split over workers (python -m dynaps.apps.kge --clustering; default entities)",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON output (default bench/results/cpu-scaling[-profile].json)"
    )
    parser.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the PNG of a recorded run")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return 0
    try:
        nodes = [int(n) for n in args.nodes.split(",")]
        names = [n for n in args.workloads.split(",") if n]
    except ValueError:
        parser.error("--nodes takes comma-separated integers, e.g. 1,2,4,8")
    if unknown := set(names) - set(WORKLOADS):
        parser.error(f"unknown workload(s) {sorted(unknown)}: choose from {sorted(WORKLOADS)}")
    if args.kge_hot_keys < 0:
        parser.error("--kge-hot-keys must be at least 0")
    if args.idle is not None:
        if args.idle <= 0:
            parser.error("--idle takes a positive number of seconds")
        return measure_idle(nodes, args.idle, args.repeat)
    if 1 not in nodes:
        parser.error("--nodes must include 1: inflation is measured against 1 node")
    suffix = ("-profile" if args.profile else "") + ("-quick" if args.quick else "")
    out = args.out or RESULTS / f"cpu-scaling{suffix}.json"
    started = time.time()
    doc: dict[str, Any] = {"workloads": {}, "repeat": args.repeat, "profiled": args.profile, "configs": {}}
    failed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dynaps-profile-") as tmp:
        profile_dir = (args.profile_dir or Path(tmp)) if args.profile else None
        if profile_dir is not None:
            os.environ[PROFILE_DIR_ENV] = str(profile_dir)  # every process of the cluster inherits it
        for name in names:
            config = QUICK[name] if args.quick else WORKLOADS[name][1]
            if name == "kge":
                config = dataclasses.replace(
                    config, hot_keys=args.kge_hot_keys, clustering=args.kge_clustering
                )
                if args.kge_hot_sync_ms is not None:
                    config = dataclasses.replace(config, hot_sync_ms=args.kge_hot_sync_ms)
                if args.kge_triples is not None:
                    config = dataclasses.replace(config, triples=args.kge_triples, eval_triples=2_000)
                if args.kge_entities is not None:
                    config = dataclasses.replace(config, entities=args.kge_entities)
                if args.kge_epochs is not None:
                    config = dataclasses.replace(config, epochs=args.kge_epochs)
            doc["configs"][name] = dataclasses.asdict(config)
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in nodes}
            for repeat in range(args.repeat):  # node counts interleaved: load drift hits all alike
                for n in nodes:
                    print(
                        f"{name}: {n} nodes (run {repeat + 1}/{args.repeat}) ...", file=sys.stderr, flush=True
                    )
                    try:
                        run = run_once(name, config, n, profile_dir)
                    except (dynaps.DynapsError, TimeoutError) as exc:  # recorded, not fatal
                        print(f"  failed: {str(exc).splitlines()[-1]}", file=sys.stderr, flush=True)
                        failed.append({"workload": name, "nodes": n, "error": str(exc)[-2000:]})
                        continue
                    runs[n].append(run)
                    print(
                        f"  {run['cpu_s_per_epoch']:6.2f} CPU s/epoch ({run['epoch_cpu_s']:.2f} in epochs)  "
                        f"{run['wall_s_per_epoch']:6.2f} s/epoch  "
                        f"{run['quality_name']} {run['quality']:.4f}  (load {run['load']:.1f})",
                        file=sys.stderr,
                        flush=True,
                    )
            rows = [summarise(runs[n]) for n in nodes if runs[n]]
            one = next((r for r in rows if r["nodes"] == 1), None)
            for r in rows:
                r["inflation"] = r["cpu_s_per_epoch"] / one["cpu_s_per_epoch"] if one else float("nan")
                r["epoch_inflation"] = r["epoch_cpu_s"] / one["epoch_cpu_s"] if one else float("nan")
            if rows:
                doc["workloads"][name] = rows
    doc["failed"] = failed
    doc["targets"] = targets(doc)
    doc["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    doc["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    doc["started"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    doc["wall_s"] = time.time() - started
    print_table(doc)
    print(f"\n{'target':48} {'measured':>9} {'goal':>8}  met")
    for t in doc["targets"]:
        print(f"{t['target']:48} {t['value']:9.3f} {t['goal']:>8}  {'yes' if t['met'] else 'NO'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    plot(doc, out.with_suffix(".png"))
    print(f"\nwrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
