"""The work-splitting helpers (dynaps.apps.partition): skewed weights split evenly, parts
fitted to exact sizes, range bounds moved onto a table's homes' starts, parts renamed into
ranges."""

from __future__ import annotations

import numpy as np
import pytest

from dynaps.apps import data, partition


@pytest.mark.parametrize(("parts", "items"), [(2, 5000), (3, 5000), (8, 5000), (2, 20_000)])
def test_balanced_parts_split_zipf_weight_evenly(parts: int, items: int) -> None:
    """Zipf(1): the top item alone is a tenth of the weight, yet parts come out even."""
    weights = np.random.default_rng(0).permutation(10_000 / np.arange(1, items + 1))
    assignment = partition.balanced_parts(weights, parts)
    totals = np.bincount(assignment, weights=weights, minlength=parts)
    assert set(assignment.tolist()) == set(range(parts))
    assert totals.max() / totals.min() < 1.02
    # contiguous ranges, by contrast, are badly unbalanced under the same skew
    ranges = np.bincount(np.arange(items) * parts // items, weights=np.sort(weights)[::-1], minlength=parts)
    assert ranges.max() / ranges.min() > 1.5


def test_fitted_parts_take_exact_sizes_by_moving_only_the_lightest_items() -> None:
    weights = np.random.default_rng(1).permutation(10_000 / np.arange(1, 5001))
    part = partition.balanced_parts(weights, 8)
    sizes = np.bincount(part, minlength=8)
    sizes[0], sizes[7] = sizes[0] - 20, sizes[7] + 20  # a bound moved by 20 ids
    fitted = partition.fitted_parts(part, weights, sizes)
    assert np.bincount(fitted, minlength=8).tolist() == sizes.tolist()
    moved = np.flatnonzero(fitted != part)
    excess = np.maximum(np.bincount(part, minlength=8) - sizes, 0).sum()
    assert len(moved) == excess  # what the sizes ask for, no more
    assert weights[moved].max() <= np.quantile(weights, 0.05)  # among the lightest
    before = np.bincount(part, weights=weights, minlength=8)
    after = np.bincount(fitted, weights=weights, minlength=8)
    assert np.abs(after - before).max() < 0.005 * before.min()
    assert partition.fitted_parts(fitted, weights, sizes) is fitted  # already fitted: unchanged
    with pytest.raises(ValueError, match="do not fit"):
        partition.fitted_parts(part, weights, np.full(8, 600))


@pytest.mark.parametrize(
    ("sizes", "starts", "bounds"),
    [
        ([312, 312, 312, 312, 313], [625, 1250], [312, 625, 936, 1250]),  # degree-balanced blocks
        ([1250] * 4, [2500], [1250, 2500, 3750]),  # already there
        ([1250] * 4, [1667, 3334], [1250, 2500, 3750]),  # too far from a bound: unchanged
        ([1250] * 4, [1200, 3800], [1200, 2500, 3800]),
        ([400, 8, 400], [404, 410], [400, 410]),  # a bound moves by a quarter of its smaller range
        ([5], [2], []),
    ],
)
def test_aligned_sizes_end_ranges_at_the_starts_near_their_bounds(
    sizes: list[int], starts: list[int], bounds: list[int]
) -> None:
    aligned = partition.aligned_sizes(np.array(sizes), starts)
    assert aligned.sum() == sum(sizes)
    assert (aligned > 0).all()
    assert np.cumsum(aligned)[:-1].tolist() == bounds


def test_contiguous_order_makes_each_part_a_range_of_the_new_ids() -> None:
    part = np.array([2, 0, 1, 0, 2, 1, 0])
    order = partition.contiguous_order(part)
    assert part[order].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert order.tolist() == [1, 3, 6, 2, 5, 0, 4]  # ids keep their order within a part
    entries = data.Entries(7, 3, np.array([6, 0, 4, 6]), np.array([2, 1, 0, 0]), np.array([1.0, 2, 3, 4]))
    col_order = np.array([2, 0, 1])
    renamed = entries.renumbered(order, col_order)
    assert renamed.row.tolist() == [2, 5, 6, 2]  # entries keep their order; old id order[k] is now k
    assert np.array_equal(order[renamed.row], entries.row)
    assert np.array_equal(col_order[renamed.col], entries.col)
    assert np.array_equal(renamed.value, entries.value)
