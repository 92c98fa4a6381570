"""Synthetic data is deterministic, skewed as promised and carries learnable structure."""

from __future__ import annotations

import numpy as np
import pytest

from dynaps.apps import synthetic
from dynaps.apps.metrics import auc
from dynaps.errors import UsageError


def test_matrix_is_deterministic_unique_and_skewed() -> None:
    a, test_a = synthetic.matrix(400, 300, 4, 8_000, test_entries=500, seed=3)
    b, _ = synthetic.matrix(400, 300, 4, 8_000, test_entries=500, seed=3)
    np.testing.assert_array_equal(a.row, b.row)
    np.testing.assert_array_equal(a.value, b.value)
    cells = np.concatenate([a.row * 300 + a.col, test_a.row * 300 + test_a.col])
    assert len(np.unique(cells)) == len(cells), "a cell is observed twice"
    counts = np.sort(np.bincount(a.row, minlength=400))[::-1]
    assert counts[:40].sum() > 0.3 * counts.sum(), "the top 10% of rows should hold a large share"
    assert counts.max() <= 300 // 3, "the Zipf head is capped near a quarter of a row"
    assert 0.8 < a.value.std() < 1.2


def test_knowledge_graph_splits_are_disjoint() -> None:
    kg = synthetic.knowledge_graph(300, 6, 3_000, seed=1)

    def code(triples: np.ndarray) -> set[int]:
        return {int(c) for c in (triples[:, 0] * 6 + triples[:, 1]) * 300 + triples[:, 2]}

    assert not code(kg.train) & code(kg.test)
    assert not code(kg.valid) & code(kg.test)
    assert len(kg.train) + len(kg.valid) + len(kg.test) == 3_000
    assert kg.train.max(axis=0).tolist()[1] < 6


def test_knowledge_graph_relations_shift_clusters() -> None:
    """Every relation maps a head's cluster to the tail's by one fixed shift: learnable structure."""
    kg = synthetic.knowledge_graph(400, 5, 4_000, clusters=8, seed=2)
    assert kg.cluster is not None
    every = np.concatenate([kg.train, kg.valid, kg.test])
    shift = (kg.cluster[every[:, 2]] - kg.cluster[every[:, 0]]) % 8
    for r in range(5):
        assert len(np.unique(shift[every[:, 1] == r])) == 1


def test_corpus_plants_synonyms_that_share_contexts() -> None:
    corpus, planted = synthetic.corpus(500, 50_000, topics=5, synonym_pairs=10, seed=4)
    assert len(planted.synonyms) == 10
    a, b = planted.synonyms[0]
    assert corpus.counts[a] > 0
    assert corpus.counts[b] > 0
    assert planted.topic[a] == planted.topic[b]
    # the word after a synonym is its pair's companion, for both words of the pair
    after_a = corpus.tokens[1:][corpus.tokens[:-1] == a]
    after_b = corpus.tokens[1:][corpus.tokens[:-1] == b]
    assert np.bincount(after_a).argmax() == np.bincount(after_b).argmax()


def test_classification_labels_depend_on_features() -> None:
    examples = synthetic.sparse_classification(4_000, 500, nonzeros=10, seed=5)
    assert 0.2 < examples.labels.mean() < 0.8
    # refit the hidden model crudely: the per-feature label rate separates the classes
    row = np.repeat(np.arange(len(examples)), np.diff(examples.indptr))
    rate = np.bincount(examples.indices, weights=examples.labels[row], minlength=500) / np.maximum(
        np.bincount(examples.indices, minlength=500), 1
    )
    score = np.bincount(row, weights=rate[examples.indices] - 0.5, minlength=len(examples))
    assert auc(score, examples.labels) > 0.7


def test_impossible_sizes_are_refused_not_looped_on() -> None:
    with pytest.raises(UsageError, match="too many"):
        synthetic.knowledge_graph(100, 2, 5_000)
    with pytest.raises(UsageError, match="more than half"):
        synthetic.matrix(50, 50, 2, 2_000)


def test_a_small_synthetic_vocabulary_makes_a_corpus_or_says_what_it_needs() -> None:
    # 120 words over 20 topics leave a topic without a word for about one seed in ten: those
    # seeds raised IndexError from deep in the generator
    for seed in range(60):
        text, _ = synthetic.corpus(120, 2_000, seed=seed)
        assert len(text.tokens) >= 2_000
        assert text.tokens.max() < 120
    with pytest.raises(UsageError, match="needs a vocabulary of 100 words or more, got 99"):
        synthetic.corpus(99, 2_000)
