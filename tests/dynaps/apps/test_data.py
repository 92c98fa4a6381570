"""File formats round-trip (the work-splitting helpers: test_partition.py)."""

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
