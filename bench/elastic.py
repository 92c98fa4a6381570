"""Elasticity and fault-tolerance benchmark: recovery, re-replication, drain, scale-out, replication cost.

One run measures, on LocalClusters of real processes on this machine:

* **recovery**: a server is SIGKILLed (replication 1) while a worker keeps pulling keys it
  homed; the longest time without an answer from the kill on (kill -> the first
  successful operation on those keys);
* **re-replication**: a server is SIGKILLed under ``replication: 1`` (3 servers) and
  ``replication: 2`` (4 servers) while two workers push; the time from the kill until
  every shard again has all of its backups synced (the coordinator's ``/status``
  ``replication``: ``unsynced`` 0, ``minCopies`` k), the longest push outage, and push
  throughput and CPU during the re-replication against the steady state before the kill;
* **drain**: a server homing 1,000,000 keys x 100 float32 (400 MB) receives SIGTERM; the
  time until it has handed every shard away and exited;
* **scale-out** (migration): a server joins (``LocalCluster.scale``) while workers push;
  the time until the rebalance is done (split into the new server's start-up and the
  migrations), time per migrated shard, push throughput during it as a share of the
  steady state before, CPU seconds; once without replication (1 -> 2 servers) and once
  with ``replication: 1`` (2 -> 3 servers, until the backups are synced again too);
* **replication cost**: push throughput with ``replication: 1`` as a ratio to
  ``replication: 0``, same workload, same run.

Wall times sit beside the CPU seconds (user + system) of every process of the cluster in
the same window; throughputs are ratios against a steady state measured in the same cluster.

    python bench/elastic.py [--quick] [--out bench/results/elastic.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import dynaps

DIM = 100
SETTLE_WATCH_S = 3.0  # how long to watch the job after re-replication (the rebalance comes at 2 s)


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


def _cpu_times(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds so far of each process still alive."""
    times = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        times[pid] = t.user + t.system
    return times


def _cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the processes present at both samples used between them."""
    return sum(after[pid] - before[pid] for pid in after if pid in before)


def _replicated(status: dict[str, Any], copies: int) -> bool:
    """Every shard has ``copies`` synced backups and no recovery is still running."""
    replication = status["replication"]
    return (
        replication["unsynced"] == 0
        and replication.get("minCopies", 0) >= copies
        and not status["recoveriesInFlight"]
    )


def _settled(status: dict[str, Any], copies: int) -> bool:
    """Replicated, and no migration running or waiting."""
    return _replicated(status, copies) and not status["migrationsInFlight"] and not status["migrationsQueued"]


def _wait_replicated(cluster: dynaps.LocalCluster, copies: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not _replicated(cluster.status(), copies):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the backups were not synced within {timeout} s: {cluster.status()}")
        time.sleep(0.05)


def _longest_outage(samples: list[tuple[float, int]], since: float) -> float:
    """The longest wait between two completed operations from ``since`` on."""
    around = [since] + [t for t, _ in samples if t > since]
    gaps = np.diff(np.asarray(around))
    return float(gaps.max()) if len(gaps) else float("inf")


class _Watcher(threading.Thread):
    """Polls the coordinator's /status every ``period`` s: (time, status) in ``timeline``."""

    def __init__(self, cluster: dynaps.LocalCluster, period: float = 0.025) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.period = period
        self.timeline: list[tuple[float, dict[str, Any]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            status = self.cluster.status()
            self.timeline.append((time.monotonic(), status))
            self.halt.wait(self.period)

    def first(self, check: Callable[[dict[str, Any]], bool]) -> float | None:
        return next((t for t, status in self.timeline if check(status)), None)

    def stop(self) -> None:
        self.halt.set()
        self.join()


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


def measure_rereplication(
    servers: int, copies: int, num_keys: int, seconds: float, tmp: Path
) -> dict[str, Any]:
    """SIGKILL a server under ``replication: copies`` while two workers push; time until
    every shard has ``copies`` synced backups again, outage, throughput and CPU meanwhile."""
    stop = tmp / f"stop-rereplication-{copies}"
    tables = {"W": dynaps.TableSpec(num_keys=num_keys, dim=DIM, init={"kind": "normal"})}
    with dynaps.LocalCluster(
        servers=servers, workers=2, tables=tables, replication=copies, startup_timeout=300
    ) as cluster:
        _wait_replicated(cluster, copies)
        victim = _node_id(cluster, "server-1")
        homed = int(cluster.status()["shardsPerServer"][str(victim)])
        job = cluster.submit(_pusher, str(stop), num_keys, 100)
        time.sleep(0.3)  # the pushers' first round trips are not the steady state
        pids = [pid for name, pid in cluster.pids().items() if name != "server-1"]
        server_pids = [pid for name, pid in cluster.pids().items() if name.startswith("server-")]
        steady_start, cpu_start = time.monotonic(), _cpu_times(pids)
        time.sleep(seconds)
        killed, cpu_killed = time.monotonic(), _cpu_times(pids)
        cluster.kill("server-1")
        watcher = _Watcher(cluster)
        watcher.start()
        deadline = killed + 300
        while True:
            last = watcher.timeline[-1][1] if watcher.timeline else None
            if last is not None and victim in last["lost"] and _replicated(last, copies):
                break
            if time.monotonic() > deadline:
                watcher.stop()
                raise TimeoutError(f"the backups were not synced again within 300 s: {last}")
            time.sleep(0.02)
        cpu_done, cpu_done_at = _cpu_times(pids), time.monotonic()
        # the coordinator rebalances 2 s after a recovery: watch that too (its migrations
        # may give shards new backups, unsynced for a while)
        time.sleep(SETTLE_WATCH_S)
        watcher.stop()
        lost_at = watcher.first(lambda s: victim in s["lost"])
        done_at = watcher.first(lambda s: victim in s["lost"] and _replicated(s, copies))
        assert lost_at is not None
        assert done_at is not None
        most_unsynced = max(s["replication"]["unsynced"] for _, s in watcher.timeline)
        timeline = watcher.timeline
        unsettled = [i for i, (_, s) in enumerate(timeline) if not _settled(s, copies)]
        last_unsettled = unsettled[-1] if unsettled else -1
        settled_at = timeline[last_unsettled + 1][0] if last_unsettled + 1 < len(timeline) else None
        migrations_after = (
            watcher.timeline[-1][1]["migrationsCompleted"] - watcher.timeline[0][1]["migrationsCompleted"]
        )
        stop.touch()
        per_worker = job.result(timeout=120)
        data_loss = cluster.status()["dataLoss"]
    samples = [s for part in per_worker for s in part]
    steady = _rate(samples, steady_start, killed)
    during = _rate(samples, killed, done_at)
    window = done_at - killed
    cpu_steady = _cpu_between(cpu_start, cpu_killed)
    cpu_window = _cpu_between(cpu_killed, cpu_done)
    survivors = [pid for pid in server_pids if pid in cpu_start and pid in cpu_done]
    key = f"rereplication_k{copies}"
    return {
        f"{key}_servers": servers,
        f"{key}_keys": num_keys,
        f"{key}_bytes": num_keys * DIM * 4,
        f"{key}_victim_home_shards": homed,
        f"{key}_most_unsynced_shards": most_unsynced,
        # each unsynced shard gets one new backup, a whole copy of the shard (1024 shards)
        f"{key}_resync_bytes_estimate": most_unsynced * num_keys // 1024 * DIM * 4,
        f"{key}_detected_s": lost_at - killed,
        f"{key}_s": window,
        # until the rebalance after the recovery is done and synced too (None: still running
        # at the end of the watch)
        f"{key}_settled_s": None if settled_at is None else settled_at - killed,
        f"{key}_migrations_after": migrations_after,
        f"{key}_push_outage_s": max(_longest_outage(part, killed) for part in per_worker),
        f"{key}_push_keys_per_s_steady": steady,
        f"{key}_push_keys_per_s_during": during,
        f"{key}_throughput_ratio": during / steady,
        # from the coordinator's new map (the loss detected) to the last backup synced: the
        # replica syncs alone, without the outage before the detection
        f"{key}_sync_phase_s": done_at - lost_at,
        f"{key}_push_keys_per_s_sync_phase": _rate(samples, lost_at, done_at),
        f"{key}_throughput_ratio_sync_phase": _rate(samples, lost_at, done_at) / steady,
        # every surviving process of the cluster (servers, coordinator, worker nodes, runners)
        f"{key}_cpu_s_per_s_steady": cpu_steady / (killed - steady_start),
        f"{key}_cpu_s_during": cpu_window,
        f"{key}_cpu_s_per_s_during": cpu_window / (cpu_done_at - killed),
        # the surviving servers alone: the re-replication's own work shows here
        f"{key}_server_cpu_s_per_s_steady": _cpu_between(
            {p: cpu_start[p] for p in survivors}, {p: cpu_killed[p] for p in survivors}
        )
        / (killed - steady_start),
        f"{key}_server_cpu_s_per_s_during": _cpu_between(
            {p: cpu_killed[p] for p in survivors}, {p: cpu_done[p] for p in survivors}
        )
        / (cpu_done_at - killed),
        f"{key}_data_loss": data_loss,
    }


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


def measure_scale_out(seconds: float, tmp: Path, servers: int = 1, replication: int = 0) -> dict[str, Any]:
    """Push throughput before and while a new server joins and takes its share of the shards.

    The window is the whole ``scale`` call as a user sees it (the new server's start-up,
    its join, the migrations), then, under replication, until every backup is synced again.
    """
    stop = tmp / f"stop-scale-{servers}-{replication}"
    num_keys = 200_000
    tables = {"W": dynaps.TableSpec(num_keys=num_keys, dim=DIM)}
    with dynaps.LocalCluster(servers=servers, workers=2, tables=tables, replication=replication) as cluster:
        _wait_replicated(cluster, replication)
        job = cluster.submit(_pusher, str(stop), num_keys, 100)
        time.sleep(0.3)  # the pushers' first round trips are not the steady state
        pids = list(cluster.pids().values())
        steady_start, cpu_start = time.monotonic(), _cpu_times(pids)
        time.sleep(seconds)
        steady_end, cpu_steady_end = time.monotonic(), _cpu_times(pids)
        before = cluster.status()["migrationsCompleted"]
        watcher = _Watcher(cluster)
        watcher.start()
        cluster.scale(servers=servers + 1)
        migrated_end = time.monotonic()
        _wait_replicated(cluster, replication)
        synced_end = time.monotonic()
        watcher.stop()
        # the new server's CPU counts too (it did not exist at the first sample)
        cpu_end = _cpu_times(cluster.pids().values())
        cpu_start_all = {**dict.fromkeys(cpu_end, 0.0), **cpu_steady_end}
        after = cluster.status()
        time.sleep(0.2)
        stop.touch()
        samples = [s for part in job.result(timeout=60) for s in part]
    joined = watcher.first(lambda s: s["servers"]["ready"] == servers + 1)
    first_migration = watcher.first(
        lambda s: s["migrationsInFlight"] > 0 or s["migrationsCompleted"] > before
    )
    shards_moved = min(after["shardsPerServer"].values())
    steady = _rate(samples, steady_start, steady_end)
    during = _rate(samples, steady_end, synced_end)
    migrations = _rate(samples, first_migration, migrated_end) if first_migration else float("nan")
    prefix = f"scale_out_k{replication}"
    return {
        f"{prefix}_servers": f"{servers} -> {servers + 1}",
        f"{prefix}_s": migrated_end - steady_end,
        f"{prefix}_synced_s": synced_end - steady_end,
        f"{prefix}_joined_s": (joined - steady_end) if joined else None,
        f"{prefix}_first_migration_s": (first_migration - steady_end) if first_migration else None,
        f"{prefix}_migrations": after["migrationsCompleted"] - before,
        f"{prefix}_shards_moved": shards_moved,
        f"{prefix}_per_shard_ms": (migrated_end - steady_end) / max(shards_moved, 1) * 1000,
        f"{prefix}_push_keys_per_s_steady": steady,
        f"{prefix}_push_keys_per_s_during": during,
        f"{prefix}_push_keys_per_s_during_migrations_only": migrations,
        f"{prefix}_throughput_ratio": during / steady,
        f"{prefix}_throughput_ratio_migrations_only": migrations / steady,
        f"{prefix}_cpu_s_per_s_steady": _cpu_between(cpu_start, cpu_steady_end) / (steady_end - steady_start),
        f"{prefix}_cpu_s_during": _cpu_between(cpu_start_all, cpu_end),
        f"{prefix}_cpu_s_per_s_during": _cpu_between(cpu_start_all, cpu_end) / (synced_end - steady_end),
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
    ("re-replication, k=1, 200k x 100", "rereplication_k1_s", "< 5 s", lambda v: v < 5.0),
    ("re-replication, k=2, 200k x 100", "rereplication_k2_s", "< 5 s", lambda v: v < 5.0),
    ("drain of 1M x 100 float32", "drain_s", "< 5 s", lambda v: v < 5.0),
    ("throughput during scale-out", "scale_out_k0_throughput_ratio", ">= 0.5", lambda v: v >= 0.5),
    ("throughput during scale-out, k=1", "scale_out_k1_throughput_ratio", ">= 0.5", lambda v: v >= 0.5),
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
    replicated_keys = 20_000 if args.quick else 200_000
    seconds = 1.0 if args.quick else 3.0
    figures: dict[str, Any] = {"load_before": os.getloadavg()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="dynaps-elastic-") as folder:
        tmp = Path(folder)
        print("recovery ...", file=sys.stderr)
        figures.update(measure_recovery(1 if args.quick else 3, tmp))
        print("re-replication, replication 1 ...", file=sys.stderr)
        figures.update(measure_rereplication(3, 1, replicated_keys, seconds, tmp))
        print("re-replication, replication 2 ...", file=sys.stderr)
        figures.update(measure_rereplication(4, 2, replicated_keys, seconds, tmp))
        print("drain ...", file=sys.stderr)
        figures.update(measure_drain(drain_keys, tmp))
        print("scale-out ...", file=sys.stderr)
        figures.update(measure_scale_out(seconds, tmp))
        print("scale-out, replication 1 ...", file=sys.stderr)
        figures.update(measure_scale_out(seconds, tmp, servers=2, replication=1))
        print("replication cost ...", file=sys.stderr)
        figures.update(measure_replication_cost(seconds, tmp))
    figures["load_after"] = os.getloadavg()[0]
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
