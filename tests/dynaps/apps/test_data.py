"""File formats round-trip, and the work splitting helpers balance skewed data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynaps.apps import data, synthetic
from dynaps.errors import UsageError


def test_matrix_market_round_trip(tmp_path: Path) -> None:
    train, _ = synthetic.matrix(50, 40, 3, 300, seed=1)
    path = tmp_path / "m.mtx"
    data.write_matrix_market(path, train)
    back = data.read_matrix_market(path)
    assert (back.rows, back.cols) == (50, 40)
    assert data.matrix_market_shape(path) == (50, 40)
    np.testing.assert_array_equal(back.row, train.row)
    np.testing.assert_array_equal(back.col, train.col)
    np.testing.assert_allclose(back.value, train.value, rtol=1e-6)


def test_matrix_market_rejects_entries_outside_the_matrix(tmp_path: Path) -> None:
    path = tmp_path / "bad.mtx"
    path.write_text("%%MatrixMarket matrix coordinate real general\n2 2 1\n3 1 0.5\n")
    with pytest.raises(UsageError, match="outside the 2 x 2 matrix"):
        data.read_matrix_market(path)


def test_triples_share_ids_across_files(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("a\tlikes\tb\nb\tlikes\tc\n")
    (tmp_path / "test.tsv").write_text("c\thates\ta\n")
    kg = data.read_triples(tmp_path / "train.tsv", None, tmp_path / "test.tsv")
    assert kg.entities == ["a", "b", "c"]
    assert kg.relations == ["hates", "likes"]
    np.testing.assert_array_equal(kg.train, [[0, 1, 1], [1, 1, 2]])
    np.testing.assert_array_equal(kg.test, [[2, 0, 0]])
    assert kg.valid.shape == (0, 3)


def test_triples_need_three_fields(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text("a b c\n")
    with pytest.raises(UsageError, match=r"t\.tsv:1"):
        data.read_triples(tmp_path / "t.tsv", None, tmp_path / "t.tsv")


def test_corpus_vocabulary_by_frequency(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    data.write_corpus(path, [["the", "cat"], ["the", "dog", "the"], ["rare"]])
    corpus = data.read_corpus(path, min_count=1)
    assert corpus.words[0] == "the"
    assert corpus.counts.tolist()[0] == 3
    assert corpus.sentence.tolist() == [0, 0, 1, 1, 1, 2]
    assert "rare" not in data.read_corpus(path, min_count=2).words


def test_libsvm_round_trip(tmp_path: Path) -> None:
    examples = synthetic.sparse_classification(30, 20, nonzeros=4, seed=2)
    path = tmp_path / "x.libsvm"
    data.write_libsvm(path, examples)
    back = data.read_libsvm(path, num_features=20)
    np.testing.assert_array_equal(back.indptr, examples.indptr)
    np.testing.assert_array_equal(back.indices, examples.indices)
    np.testing.assert_array_equal(back.labels, examples.labels)
    with pytest.raises(UsageError, match="exceeds"):
        data.read_libsvm(path, num_features=int(examples.indices.max()))


def test_rows_of_a_csr_block() -> None:
    examples = synthetic.sparse_classification(10, 50, nonzeros=3, seed=0)
    block = examples.rows(np.array([7, 2]))
    for out, src in enumerate([7, 2]):
        lo, hi = examples.indptr[src], examples.indptr[src + 1]
        np.testing.assert_array_equal(
            block.indices[block.indptr[out] : block.indptr[out + 1]], examples.indices[lo:hi]
        )
    assert block.labels.tolist() == [examples.labels[7], examples.labels[2]]


def test_ranges_concatenates_aranges() -> None:
    got = data.ranges(np.array([3, 0, 5, 5]), np.array([5, 2, 5, 8]))
    assert got.tolist() == [3, 4, 0, 1, 5, 6, 7]


@pytest.mark.parametrize(("parts", "items"), [(2, 5000), (3, 5000), (8, 5000), (2, 20_000)])
def test_balanced_parts_split_zipf_weight_evenly(parts: int, items: int) -> None:
    """Zipf(1): the top item alone is a tenth of the weight, yet parts come out even."""
    weights = np.random.default_rng(0).permutation(10_000 / np.arange(1, items + 1))
    assignment = data.balanced_parts(weights, parts)
    totals = np.bincount(assignment, weights=weights, minlength=parts)
    assert set(assignment.tolist()) == set(range(parts))
    assert totals.max() / totals.min() < 1.02
    # contiguous ranges, by contrast, are badly unbalanced under the same skew
    ranges = np.bincount(np.arange(items) * parts // items, weights=np.sort(weights)[::-1], minlength=parts)
    assert ranges.max() / ranges.min() > 1.5


def test_fitted_parts_take_exact_sizes_by_moving_only_the_lightest_items() -> None:
    weights = np.random.default_rng(1).permutation(10_000 / np.arange(1, 5001))
    part = data.balanced_parts(weights, 8)
    sizes = np.bincount(part, minlength=8)
    sizes[0], sizes[7] = sizes[0] - 20, sizes[7] + 20  # a bound moved by 20 ids
    fitted = data.fitted_parts(part, weights, sizes)
    assert np.bincount(fitted, minlength=8).tolist() == sizes.tolist()
    moved = np.flatnonzero(fitted != part)
    excess = np.maximum(np.bincount(part, minlength=8) - sizes, 0).sum()
    assert len(moved) == excess  # what the sizes ask for, no more
    assert weights[moved].max() <= np.quantile(weights, 0.05)  # among the lightest
    before = np.bincount(part, weights=weights, minlength=8)
    after = np.bincount(fitted, weights=weights, minlength=8)
    assert np.abs(after - before).max() < 0.005 * before.min()
    assert data.fitted_parts(fitted, weights, sizes) is fitted  # already fitted: unchanged
    with pytest.raises(ValueError, match="do not fit"):
        data.fitted_parts(part, weights, np.full(8, 600))


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
    aligned = data.aligned_sizes(np.array(sizes), starts)
    assert aligned.sum() == sum(sizes)
    assert (aligned > 0).all()
    assert np.cumsum(aligned)[:-1].tolist() == bounds


def test_contiguous_order_makes_each_part_a_range_of_the_new_ids() -> None:
    part = np.array([2, 0, 1, 0, 2, 1, 0])
    order = data.contiguous_order(part)
    assert part[order].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert order.tolist() == [1, 3, 6, 2, 5, 0, 4]  # ids keep their order within a part
    entries = data.Entries(7, 3, np.array([6, 0, 4, 6]), np.array([2, 1, 0, 0]), np.array([1.0, 2, 3, 4]))
    col_order = np.array([2, 0, 1])
    renamed = entries.renumbered(order, col_order)
    assert renamed.row.tolist() == [2, 5, 6, 2]  # entries keep their order; old id order[k] is now k
    assert np.array_equal(order[renamed.row], entries.row)
    assert np.array_equal(col_order[renamed.col], entries.col)
    assert np.array_equal(renamed.value, entries.value)
