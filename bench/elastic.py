"""Elasticity and fault-tolerance benchmark: recovery, drain, migration, replication cost.

One run measures, on LocalClusters of real processes on this machine:

* **recovery**: a server is SIGKILLed (replication 1) while a worker keeps pulling keys it
  homed; the longest time without an answer from the kill on (kill -> the first
  successful operation on those keys);
* **drain**: a server homing 1,000,000 keys x 100 float32 (400 MB) receives SIGTERM; the
  time until it has handed every shard away and exited;
* **migration**: a server joins while workers push; time per migrated shard, and push
  throughput during the migrations as a share of the steady state before them;
* **replication cost**: push throughput with ``replication: 1`` as a ratio to
  ``replication: 0``, same workload, same run.

    python bench/elastic.py [--quick] [--out bench/results/elastic.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import dynaps

DIM = 100


def _pusher(ps: dynaps.PS, stop_file: str, num_keys: int, batch: int) -> list[tuple[float, int]]:
    """Synchronous pushes of random keys until ``stop_file`` exists: (time, keys) per push."""
    W = ps.table("W")
    rng = np.random.default_rng(ps.rank)
    rows = np.ones((batch, W.dim), dtype=np.float32)
    done = []
    while not os.path.exists(stop_file):
        W.push(rng.integers(0, num_keys, size=batch), rows)
        done.append((time.monotonic(), batch))
    return done


def _puller(ps: dynaps.PS, stop_file: str, keys: list[int]) -> list[float]:
    """Synchronous one-key pulls of ``keys`` in turn until ``stop_file``: completion times."""
    W = ps.table("W")
    chosen = np.asarray(keys, dtype=np.int64)
    done = []
    i = 0
    while not os.path.exists(stop_file):
        W.pull(chosen[i % len(chosen) : i % len(chosen) + 1])
        done.append(time.monotonic())
        i += 1
    return done


def _keys_homed_on(ps: dynaps.PS, node: int, num_keys: int) -> list[int]:
    keys = np.arange(num_keys, dtype=np.int64)
    homed: list[int] = keys[ps.shard_map.home_of(keys, num_keys) == node].tolist()
    return homed


def _node_id(cluster: dynaps.LocalCluster, name: str) -> int:
    return int(next(m["id"] for m in cluster.status()["members"] if m["name"] == name))


def _rate(samples: list[tuple[float, int]], start: float, end: float) -> float:
    keys = sum(n for t, n in samples if start <= t < end)
    return keys / max(end - start, 1e-9)


def measure_recovery(repeats: int, tmp: Path) -> dict[str, Any]:
    """SIGKILL a server under replication; time until its keys answer again."""
    times = []
    for attempt in range(repeats):
        stop = tmp / f"stop-recovery-{attempt}"
        tables = {"W": dynaps.TableSpec(num_keys=10_000, dim=DIM)}
        with dynaps.LocalCluster(servers=3, workers=1, tables=tables, replication=1) as cluster:
            victim = _node_id(cluster, "server-1")
            keys = cluster.run(_keys_homed_on, victim, 10_000)[0][:100]
            job = cluster.submit(_puller, str(stop), keys)
            time.sleep(0.5)
            killed = time.monotonic()
            cluster.kill("server-1")
            time.sleep(2.0)
            stop.touch()
            done = job.result(timeout=60)[0]
            # the outage: the longest wait between two answers from just before the kill on
            # (an answer already on its way when the process died does not end it)
            around = [killed] + [t for t in done if t > killed]
            gaps = np.diff(np.asarray(around))
            times.append(float(gaps.max()) if len(gaps) else float("inf"))
    return {"recovery_s": statistics.median(times), "recovery_runs_s": times}


def measure_drain(num_keys: int, tmp: Path) -> dict[str, Any]:
    """SIGTERM a server homing ``num_keys`` x 100 float32; time until it has left."""
    tables = {"W": dynaps.TableSpec(num_keys=2 * num_keys, dim=DIM, init={"kind": "normal"})}
    with dynaps.LocalCluster(servers=2, workers=1, tables=tables, startup_timeout=300) as cluster:
        victim = _node_id(cluster, "server-1")
        homed = len(cluster.run(_keys_homed_on, victim, 2 * num_keys)[0])
        started = time.monotonic()
        cluster.stop("server-1", timeout=300)
        elapsed = time.monotonic() - started
        shards = cluster.status()["shardsPerServer"]
    return {
        "drain_keys": homed,
        "drain_bytes": homed * DIM * 4,
        "drain_s": elapsed,
        "drain_shards_after": shards,
    }


def measure_migration(seconds: float, tmp: Path) -> dict[str, Any]:
    """Push throughput before and while a new server takes half the shards."""
    stop = tmp / "stop-migration"
    num_keys = 200_000
    tables = {"W": dynaps.TableSpec(num_keys=num_keys, dim=DIM)}
    with dynaps.LocalCluster(servers=1, workers=2, tables=tables) as cluster:
        job = cluster.submit(_pusher, str(stop), num_keys, 100)
        time.sleep(seconds)
        steady_end = time.monotonic()
        before = cluster.status()["migrationsCompleted"]
        cluster.scale(servers=2)
        migrated_end = time.monotonic()
        after = cluster.status()
        time.sleep(0.2)
        stop.touch()
        samples = [s for part in job.result(timeout=60) for s in part]
    moved = after["shardsPerServer"]
    shards_moved = min(moved.values())
    steady = _rate(samples, steady_end - seconds, steady_end)
    during = _rate(samples, steady_end, migrated_end)
    return {
        "migration_s": migrated_end - steady_end,
        "migrations": after["migrationsCompleted"] - before,
        "shards_moved": shards_moved,
        "migration_per_shard_ms": (migrated_end - steady_end) / max(shards_moved, 1) * 1000,
        "push_keys_per_s_steady": steady,
        "push_keys_per_s_during_migration": during,
        "throughput_during_migration_ratio": during / steady,
    }


def measure_replication_cost(seconds: float, tmp: Path) -> dict[str, Any]:
    """Push throughput with and without replication, same workload."""
    rates: dict[int, list[float]] = {}
    num_keys = 100_000
    tables = {"W": dynaps.TableSpec(num_keys=num_keys, dim=DIM)}
    for replication in (0, 1, 0, 1):
        stop = tmp / f"stop-replication-{replication}-{len(rates)}"
        with dynaps.LocalCluster(servers=2, workers=2, tables=tables, replication=replication) as cluster:
            job = cluster.submit(_pusher, str(stop), num_keys, 100)
            time.sleep(0.3)
            start = time.monotonic()
            time.sleep(seconds)
            end = time.monotonic()
            stop.touch()
            samples = [s for part in job.result(timeout=60) for s in part]
        rates.setdefault(replication, []).append(_rate(samples, start, end))
    plain, replicated = statistics.median(rates[0]), statistics.median(rates[1])
    return {
        "push_keys_per_s_replication_0": plain,
        "push_keys_per_s_replication_1": replicated,
        "replication_cost_ratio": plain / replicated,
    }


TARGETS: list[tuple[str, str, str, Callable[[float], bool]]] = [
    ("recovery (kill -> first answer)", "recovery_s", "< 1 s", lambda v: v < 1.0),
    ("drain of 1M x 100 float32", "drain_s", "< 5 s", lambda v: v < 5.0),
    ("throughput during migration", "throughput_during_migration_ratio", ">= 0.5", lambda v: v >= 0.5),
    ("replication cost on pushes", "replication_cost_ratio", "<= 2x", lambda v: v <= 2.0),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--out", default="bench/results/elastic.json", help="where to write the JSON")
    args = parser.parse_args()
    drain_keys = 50_000 if args.quick else 1_000_000
    seconds = 1.0 if args.quick else 3.0
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dynaps-elastic-") as folder:
        tmp = Path(folder)
        print("recovery ...", file=sys.stderr)
        figures.update(measure_recovery(1 if args.quick else 3, tmp))
        print("drain ...", file=sys.stderr)
        figures.update(measure_drain(drain_keys, tmp))
        print("migration ...", file=sys.stderr)
        figures.update(measure_migration(seconds, tmp))
        print("replication cost ...", file=sys.stderr)
        figures.update(measure_replication_cost(seconds, tmp))
    for name, value in figures.items():
        print(f"{name:40} {value}")
    print()
    report = []
    for title, key, goal, met in TARGETS:
        value = float(figures[key])
        report.append({"target": title, "value": value, "goal": goal, "met": met(value)})
        print(f"{title:40} {value:10.3f} {goal:>8}  {'yes' if met(value) else 'NO'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"figures": figures, "targets": report, "quick": args.quick}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
