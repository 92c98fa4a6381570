"""bench/kge_schedules.py: its variants run, its weights undo the schedule's bias, and a
mistyped variant is a usage error, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dynaps.apps import kge_blocks

from . import scripts


def test_every_kind_of_variant_trains_and_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    variants = [
        "pair",
        "weighted/split=2",
        "same/shuffled",
        "global",
        "pair/extra=1",
        "pair/borrow",
        "pair/extra=1/sync=2",
    ]
    done = scripts.run(
        "kge_schedules",
        "--workers", "2", "--epochs", "2", "--entities", "300", "--triples", "6000",
        "--eval-triples", "100", "--out", str(out), *variants,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["variant"] for r in runs] == variants
    for r in runs:
        assert len(r["mrr"]) == 2
        assert all(0.0 < m <= 1.0 for m in r["mrr"])


def test_a_mistyped_variant_is_a_usage_error() -> None:
    done = scripts.run("kge_schedules", "pair/split=0")
    assert done.returncode == 2
    assert "split=S" in done.stderr
    assert "Traceback" not in done.stderr
    done = scripts.run("kge_schedules", "uniform")
    assert done.returncode == 2
    assert "choose from" in done.stderr
    done = scripts.run("kge_schedules", "weighted/extra=2")
    assert done.returncode == 2
    assert "use pair/" in done.stderr
    done = scripts.run("kge_schedules", "pair/sync=2")
    assert done.returncode == 2
    assert "extra=K or borrow" in done.stderr


def test_the_weights_make_an_epochs_negatives_uniform() -> None:
    """Over an epoch of the tournament, a query from block A draws its corruptions from A and
    its round's partner; weighted, each entity's expected share is the uniform one's (with
    buckets of equal size, which degree-balanced blocks approximate)."""
    weights = scripts.load("kge_schedules").schedule_weights
    workers, size = 4, 10
    count = 2 * workers
    blocks = kge_blocks.EntityBlocks(
        order=np.arange(count * size), bounds=np.arange(0, count * size + 1, size, dtype=np.int64)
    )
    entities = count * size
    for query_block in range(count):
        share = np.zeros(entities)
        partners = [b for b in range(count) if b != query_block]
        for partner in partners:  # one round per partner, a bucket of equal size each
            drawn = np.concatenate([blocks.keys(query_block), blocks.keys(partner)])
            weight = weights(blocks, np.array([query_block]), drawn.astype(np.int64)).ravel()
            np.add.at(share, drawn, weight / len(drawn) / len(partners))
        np.testing.assert_allclose(share, np.full(entities, 1.0 / entities), rtol=1e-6)
