"""Updaters agree with a straightforward reference, repeated keys included."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from dynaps.contract import UpdaterKind, UpdaterSpec
from dynaps.updaters import combine_duplicates, make_updater, scatter_add

key_lists = st.lists(st.integers(0, 9), min_size=1, max_size=40)


@given(key_lists)
def test_scatter_add_matches_add_at(keys: list[int]) -> None:
    rng = np.random.default_rng(len(keys))
    rows = rng.random((len(keys), 3)).astype(np.float32)
    got = np.zeros((10, 3), dtype=np.float32)
    expected = np.zeros((10, 3), dtype=np.float32)
    scatter_add(got, np.asarray(keys, dtype=np.int64), rows)
    np.add.at(expected, keys, rows)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@given(key_lists)
def test_combine_duplicates_sums_per_key(keys: list[int]) -> None:
    rows = np.arange(len(keys) * 2, dtype=np.float64).reshape(-1, 2)
    unique, summed = combine_duplicates(np.asarray(keys, dtype=np.int64), rows)
    assert len(set(unique.tolist())) == len(unique)
    for key, row in zip(unique, summed, strict=True):
        np.testing.assert_allclose(row, rows[np.asarray(keys) == key].sum(axis=0))


def test_adagrad_step_once_per_key_per_push() -> None:
    updater = make_updater(UpdaterSpec(kind=UpdaterKind.ADAGRAD, lr=0.5))
    values = np.zeros((3, 2))
    accumulator = np.zeros((3, 2))
    updater.apply(values, (accumulator,), np.array([1, 1]), np.array([[1.0, 2.0], [1.0, 2.0]]))
    np.testing.assert_allclose(accumulator[1], [4.0, 16.0])
    np.testing.assert_allclose(values[1], [-0.5 * 2 / 2, -0.5 * 4 / 4], rtol=1e-6)
