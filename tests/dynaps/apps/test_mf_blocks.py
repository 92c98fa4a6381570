"""MF's DSGD blocks are ranges of keys, and renaming the keys so changes no step.

The workers run in lockstep in one process (tests/dynaps/apps/lockstep.py), so a run is
deterministic to the bit and the renumbered computation can be compared with the one on
the original ids (``contiguous_order`` replaced by the identity).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from dynaps.apps import mf
from dynaps.contract import Partition
from dynaps.store.shardmap import ShardMap

from . import lockstep

CONFIG = mf.Config(
    rows=400, cols=300, rank=4, entries=20_000, test_entries=2_000, epochs=3, batch=200, quiet=True
)
Localized = dict[str, list[tuple[int, npt.NDArray[np.int64]]]]


def lockstep_mf(workers: int, config: mf.Config = CONFIG) -> tuple[list[dict[str, Any]], Localized]:
    results, localized = lockstep.run(mf.train, mf.tables(config), config, workers)
    return results[0], localized


def the_original_ids(part: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return np.arange(len(part))


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_renumbered_blocks_take_the_same_steps(workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    renumbered, moved = lockstep_mf(workers)
    monkeypatch.setattr(mf, "contiguous_order", the_original_ids)
    original, kept = lockstep_mf(workers)
    if workers > 1:  # the comparison is not between two identical computations
        assert any(not np.array_equal(a[1], b[1]) for a, b in zip(moved["cols"], kept["cols"], strict=True))
    assert [r["loss"] for r in renumbered] == [r["loss"] for r in original]
    assert [r["quality"]["test RMSE"] for r in renumbered] == [r["quality"]["test RMSE"] for r in original]
    assert [r["extra"]["lr"] for r in renumbered] == [r["extra"]["lr"] for r in original]
    assert renumbered[-1]["quality"]["test RMSE"] < renumbered[0]["quality"]["test RMSE"]  # it learns


def is_range(keys: npt.NDArray[np.int64]) -> bool:
    return len(keys) > 0 and np.array_equal(keys, np.arange(keys[0], keys[0] + len(keys)))


@pytest.mark.parametrize("workers", [2, 4, 8])
def test_every_block_a_worker_localizes_is_one_key_range(workers: int) -> None:
    _, localized = lockstep_mf(workers)
    rows = dict(localized["rows"])  # rank -> its row block, localized once
    assert sorted(rows) == list(range(workers))
    assert len(localized["rows"]) == workers
    assert all(is_range(block) for block in rows.values())
    assert np.array_equal(np.sort(np.concatenate(list(rows.values()))), np.arange(CONFIG.rows))
    cols = localized["cols"]  # in each sub-epoch, every worker localizes one column block
    assert len(cols) == workers * workers * CONFIG.epochs
    assert all(is_range(keys) for _, keys in cols)
    for sub in range(0, len(cols), workers):
        blocks = np.concatenate([keys for _, keys in cols[sub : sub + workers]])
        assert np.array_equal(np.sort(blocks), np.arange(CONFIG.cols))


@pytest.mark.parametrize("workers", [4, 8])
def test_with_as_many_servers_as_workers_a_block_lies_in_one_or_two_homes(workers: int) -> None:
    _, localized = lockstep_mf(workers)
    shard_map = ShardMap.initial(1024, Partition.RANGE, list(range(workers)))  # the default partition
    for table, num_keys in (("rows", CONFIG.rows), ("cols", CONFIG.cols)):
        for _, keys in localized[table]:
            homes = np.unique(shard_map.home_of(keys, num_keys))
            assert len(homes) <= 2, (table, keys[0], keys[-1], homes)
