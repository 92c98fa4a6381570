"""bench/replica_adagrad.py: its variants train and are recorded, a flush of one push is the
same with or without the squares (AdaGrad's accumulator grows by the push's square either
way), and a mistyped variant is a usage error."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from dynaps.apps.inprocess import ArrayTable
from dynaps.contract import TableSpec, UpdaterSpec

from . import scripts

TINY = ["--workers", "3", "--epochs", "2", "--entities", "200", "--triples", "4000", "--eval-triples", "100"]


def test_every_variant_trains_and_one_push_per_sync_is_the_same_either_way(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    variants = ["exact", "summed/1", "squares/1", "summed/4", "squares/4"]
    done = scripts.run("replica_adagrad", *TINY, "--out", str(out), *variants)
    assert done.returncode == 0, done.stderr
    runs = {r["variant"]: r["mrr"] for r in json.loads(out.read_text())["runs"]}
    assert list(runs) == variants
    assert all(len(mrr) == 2 and all(0.0 < m <= 1.0 for m in mrr) for mrr in runs.values())
    assert runs["summed/1"] == runs["squares/1"]


def test_a_flush_with_squares_grows_the_accumulator_by_the_pushes_squares() -> None:
    """Two pushes of one key buffered, then flushed: with the squares the accumulator grows
    by g1^2 + g2^2 (as two pushes would make it), summed by (g1 + g2)^2."""
    replica_adagrad = scripts.load("replica_adagrad")
    spec = TableSpec(num_keys=3, dim=2, dtype="float64", updater=UpdaterSpec(kind="adagrad", lr=0.5))
    g1, g2 = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0]])
    grown = {}
    for squares in (True, False):
        table = ArrayTable("t", spec, Counter())
        replica = replica_adagrad.Replica(table, squares=squares)
        replica.push(np.array([1]), g1)
        replica.push(np.array([1]), g2)
        assert np.all(table.states[0] == 0.0)  # buffered, not applied
        replica.sync()
        grown[squares] = table.states[0][1].copy()
        np.testing.assert_array_equal(replica.copy, table.values)  # read again after the flush
    np.testing.assert_allclose(grown[True], [10.0, 5.0])
    np.testing.assert_allclose(grown[False], [16.0, 1.0])


def test_a_mistyped_variant_is_a_usage_error() -> None:
    for bad in ("summed", "exact/4", "squares/x", "other/2"):
        done = scripts.run("replica_adagrad", bad)
        assert done.returncode == 2, bad
        assert "summed/SYNC" in done.stderr
        assert "Traceback" not in done.stderr
