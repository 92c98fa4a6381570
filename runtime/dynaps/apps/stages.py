"""Stages: a job whose worker count changes from stage to stage (FlexPS), with an exact result.

The job's ``spec.stages`` say how many workers run each stage.  In every unit ``u`` (an epoch
or a step, numbered over the job) each worker adds 1 to row ``u`` of table ``units``: after
the job, that row holds how many workers ran the unit, which must be its stage's count.  In
an epoch the workers lease the epoch's data shards (``ps.data_shards``) and, per shard ``s``
they process, add 1 to row ``u * shards + s`` of ``shards`` (each row must end at exactly 1:
every shard of every epoch processed once, whatever the worker count) and 1 to every value
of ``w``, the model (a step adds 1 to ``w`` per worker).  Each worker localizes its part of
``w`` at a stage's start, so the workers that leave hand keys back.  Rank 0, which never
leaves (the highest ranks leave first), checks all three after the last stage and exits 1 on
any difference.

    dynaps run examples/stages.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import dynaps
from dynaps.apps import common
from dynaps.apps.arguments import positive_int
from dynaps.client.ps import PS
from dynaps.contract import StageUnit


def expected(ps: PS, shards: int) -> tuple[np.ndarray, int, float]:
    """(workers per unit, epoch units, the value every entry of ``w`` must hold)."""
    per_unit: list[int] = []
    epochs, total = 0, 0.0
    for spec in ps.config.stages:
        per_unit += [spec.workers] * spec.length
        if spec.unit == StageUnit.EPOCHS:
            epochs += spec.length
            total += spec.length * shards
        else:
            total += spec.length * spec.workers
    return np.asarray(per_unit, dtype=np.float64), epochs, total


def hold(folder: str, stage: str) -> None:
    """Wait until ``folder/stage`` exists: a test looks at the job at each stage's start."""
    path = os.path.join(folder, stage)
    while not os.path.exists(path):
        time.sleep(0.05)


def train(ps: PS, shards: int, record: str | None, held: str | None = None) -> int:
    workers_per_unit, epoch_units, w_total = expected(ps, shards)
    units = common.check_table(ps, "units", len(workers_per_unit), 1)
    shard_rows = common.check_table(ps, "shards", max(epoch_units * shards, 1), 1)
    w = ps.table("w")
    ones = np.ones((w.num_keys, w.dim))
    epoch_index: dict[int, int] = {}  # unit over the job -> its index among the epoch units
    for spec_index, spec in enumerate(ps.config.stages):
        if spec.unit == StageUnit.EPOCHS:
            first = sum(s.length for s in ps.config.stages[:spec_index])
            for u in range(first, first + spec.length):
                epoch_index[u] = len(epoch_index)
    localized = -1
    for stage, unit in ps.stages():
        u = stage.offset + unit
        if held and unit == 0 and ps.rank == 0:
            hold(held, stage.name)
        if stage.index != localized:  # this stage's share of the model lives here
            w.localize(np.arange(ps.rank % stage.workers, w.num_keys, stage.workers))
            localized = stage.index
        units.push([u], [[1.0]])
        if stage.unit == StageUnit.EPOCHS:
            for shard in ps.data_shards(shards, epoch=u):
                shard_rows.push([epoch_index[u] * shards + shard], [[1.0]])
                w.push(np.arange(w.num_keys), ones)
        else:
            w.push(np.arange(w.num_keys), ones)
        if record:
            line = {"unit": u, "stage": stage.name, "rank": ps.rank, "pid": os.getpid(), "node": ps.node}
            with open(record, "a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")  # one short write per line: whole under O_APPEND
        if ps.rank == 0:
            ps.report(stage=float(stage.index), unit=float(u))
    if ps.rank != 0:
        return 0  # a worker that left, or the end of the job: rank 0 checks
    return check(ps, units, shard_rows, w, workers_per_unit, epoch_units * shards, w_total)


def check(
    ps: PS,
    units: dynaps.Table,
    shard_rows: dynaps.Table,
    w: dynaps.Table,
    workers_per_unit: np.ndarray,
    shard_count: int,
    w_total: float,
) -> int:
    got_units = np.asarray(units.pull(np.arange(len(workers_per_unit))))[:, 0]
    got_shards = np.asarray(shard_rows.pull(np.arange(shard_count)))[:, 0] if shard_count else np.zeros(0)
    got_w = np.asarray(w.pull(np.arange(w.num_keys)))
    problems = []
    if not np.array_equal(got_units, workers_per_unit):
        problems.append(f"workers per unit {got_units.tolist()}, expected {workers_per_unit.tolist()}")
    if not np.all(got_shards == 1.0):
        problems.append(f"shards processed other than once: {np.flatnonzero(got_shards != 1.0).tolist()}")
    if not np.all(got_w == w_total):
        problems.append(f"w holds {np.unique(got_w).tolist()}, expected {w_total}")
    if problems:
        print("[stages] WRONG: " + "; ".join(problems), flush=True)
        return 1
    per_unit = workers_per_unit.astype(int).tolist()
    print(
        f"[stages] exact: {len(workers_per_unit)} units with workers {per_unit}, "
        f"{shard_count} shards processed once each, w = {w_total:g} everywhere",
        flush=True,
    )
    ps.report(exact=1.0, units=float(len(workers_per_unit)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=positive_int, default=8, help="data shards per epoch (default 8)")
    parser.add_argument("--record", metavar="FILE", help="append one JSON line per worker and unit to FILE")
    parser.add_argument(
        "--hold", metavar="DIR", help="rank 0 waits at each stage's start until DIR/<stage name> exists"
    )
    args = parser.parse_args(argv)
    return train(dynaps.connect(), args.shards, args.record, args.hold)


if __name__ == "__main__":
    sys.exit(main())
