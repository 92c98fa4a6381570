"""Metrics against brute-force definitions."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from dynaps.apps.metrics import (
    KnownTriples,
    auc,
    filtered_rank_sums,
    log_loss_sum,
    ranking_report,
    squared_error,
)


def test_auc_counts_correctly_ordered_pairs() -> None:
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 60).astype(float)  # many ties
    label = rng.random(60) < 0.4
    pairs = [(p, n) for p, n in itertools.product(score[label], score[~label])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert auc(score, label) == pytest.approx(expected)
    assert np.isnan(auc(score, np.zeros(60)))


def test_log_loss_and_squared_error() -> None:
    assert log_loss_sum([0.5, 0.5], [1, 0]) == pytest.approx(2 * np.log(2))
    assert squared_error([1.0, 2.0], [0.0, 4.0]) == (5.0, 2.0)


def random_graph(rng: np.random.Generator, entities: int, relations: int, count: int) -> Any:
    """Distinct random (head, relation, tail) triples, at most ``count``."""
    drawn = [
        rng.integers(0, entities, count),
        rng.integers(0, relations, count),
        rng.integers(0, entities, count),
    ]
    return np.unique(np.column_stack(drawn), axis=0)


def test_filtered_ranks_match_a_loop() -> None:
    rng = np.random.default_rng(1)
    entities, relations = 30, 3
    triples = random_graph(rng, entities, relations, 200)
    known = KnownTriples(triples, entities, relations)
    queries = triples[:25]
    scores = rng.normal(size=(25, entities))
    h, r, t = queries.T
    got = filtered_rank_sums(scores, t, known.answers(False, h, r))
    truth = {tuple(x) for x in triples.tolist()}
    ranks = []
    for b, (hh, rr, tt) in enumerate(queries.tolist()):
        better = [e for e in range(entities) if scores[b, e] > scores[b, tt] and (hh, rr, e) not in truth]
        ranks.append(1 + len(better))
    ranks_arr = np.array(ranks)
    np.testing.assert_allclose(
        got, [(1 / ranks_arr).sum(), *((ranks_arr <= k).sum() for k in (1, 3, 10)), 25]
    )
    # head prediction uses the (tail, relation) index
    got_heads = filtered_rank_sums(scores, h, known.answers(True, t, r))
    ranks = []
    for b, (hh, rr, tt) in enumerate(queries.tolist()):
        better = [e for e in range(entities) if scores[b, e] > scores[b, hh] and (e, rr, tt) not in truth]
        ranks.append(1 + len(better))
    assert got_heads[0] == pytest.approx((1 / np.array(ranks)).sum())
    report = ranking_report(got)
    assert 0 < report["MRR"] <= 1
    assert report["Hits@1"] <= report["Hits@3"] <= report["Hits@10"]


def test_an_index_for_some_queries_ranks_them_as_the_whole_index_does() -> None:
    rng = np.random.default_rng(2)
    entities, relations = 40, 4
    triples = random_graph(rng, entities, relations, 400)
    whole = KnownTriples(triples, entities, relations)
    queries = triples[rng.choice(len(triples), 30, replace=False)]
    some = KnownTriples(triples, entities, relations, queries=queries)
    scores = rng.normal(size=(30, entities))
    h, r, t = queries.T
    for by_tail, anchor, target in ((False, h, t), (True, t, h)):
        np.testing.assert_array_equal(
            filtered_rank_sums(scores, target, some.answers(by_tail, anchor, r)),
            filtered_rank_sums(scores, target, whole.answers(by_tail, anchor, r)),
        )
    assert len(some._by_hr[0]) < len(whole._by_hr[0])  # it indexed fewer triples
    others = triples[~(triples[:, None] == queries[None]).all(axis=2).any(axis=1)]
    unasked = others[~np.isin(others[:, 0] * relations + others[:, 1], h * relations + r)][:1]
    with pytest.raises(ValueError, match="other queries"):
        some.answers(False, unasked[:, 0], unasked[:, 1])
