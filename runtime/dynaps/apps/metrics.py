"""Model quality, as sums that workers can add up (so a job reports one global figure).

Each function returns the *sums* behind a metric over this worker's share of the test
data; the app adds them over workers (``Reducer.sum``) and divides once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.apps.data import Ints, ranges

Floats = npt.NDArray[np.float64]
HITS_AT = (1, 3, 10)


def squared_error(predicted: Any, actual: Any) -> tuple[float, float]:
    """(sum of squared errors, count): RMSE = sqrt(sum / count) over all workers."""
    diff = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return float(diff @ diff), float(len(diff))


def log_loss_sum(probability: Any, label: Any, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probability, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(label, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).sum())


def auc(score: Any, label: Any) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(label) > 0.5
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    sorted_scores = s[order]
    # average rank within runs of equal scores
    starts = np.flatnonzero(np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]]))
    ends = np.concatenate([starts[1:], [len(s)]])
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


class KnownTriples:
    """Every true triple, indexed so filtered ranking can exclude them per query.

    ``tails_of(h, r)`` is answered for a batch at once from arrays sorted by (h, r).
    Given ``queries`` (the test triples this worker ranks), only the true triples that
    share a query's (head, relation) or (tail, relation) are indexed: a worker ranking a
    W-th of the test set then sorts a few hundred triples, not the whole graph, and asking
    about any other query is an error rather than a silently unfiltered rank.
    """

    def __init__(
        self, triples: Ints, num_entities: int, num_relations: int, queries: Ints | None = None
    ) -> None:
        self.num_entities, self.num_relations = num_entities, num_relations
        h, r, t = triples[:, 0], triples[:, 1], triples[:, 2]
        hr, tr = h * num_relations + r, t * num_relations + r
        self._asked: tuple[Ints, Ints] | None = None
        if queries is not None:
            asked_hr = np.unique(queries[:, 0] * num_relations + queries[:, 1])
            asked_tr = np.unique(queries[:, 2] * num_relations + queries[:, 1])
            self._asked = (asked_tr, asked_hr)  # in answers()'s order: (by tail, by head)
            keep_hr, keep_tr = np.isin(hr, asked_hr), np.isin(tr, asked_tr)
            self._by_hr = self._index(hr[keep_hr], t[keep_hr])
            self._by_tr = self._index(tr[keep_tr], h[keep_tr])
        else:
            self._by_hr = self._index(hr, t)
            self._by_tr = self._index(tr, h)

    @staticmethod
    def _index(query: Ints, answer: Ints) -> tuple[Ints, Ints]:
        order = np.lexsort((answer, query))
        return query[order], answer[order]

    def answers(self, by_tail: bool, anchor: Ints, relation: Ints) -> tuple[Ints, Ints]:
        """(query number, entity) pairs of known answers for each (anchor, relation) query."""
        keys, values = self._by_tr if by_tail else self._by_hr
        query = anchor * self.num_relations + relation
        if self._asked is not None and not np.isin(query, self._asked[0 if by_tail else 1]).all():
            raise ValueError(
                "KnownTriples was indexed for other queries: their filtered ranks would be wrong"
            )
        starts = np.searchsorted(keys, query, side="left")
        ends = np.searchsorted(keys, query, side="right")
        return np.repeat(np.arange(len(query)), ends - starts), values[ranges(starts, ends)]


def filtered_rank_sums(scores: Floats, target: Ints, known: tuple[Ints, Ints]) -> Floats:
    """Sums of reciprocal rank and hits@1/3/10, plus the count, for one batch of queries.

    ``scores`` (queries x entities); the target's rank is one plus the number of entities
    that score higher and are not themselves known answers (the "filtered" setting).
    """
    mine = scores[np.arange(len(target)), target]
    return rank_sums(higher_counts(scores, 0, mine, target, known) + 1.0)


def higher_counts(scores: Floats, first: int, mine: Floats, target: Ints, known: tuple[Ints, Ints]) -> Ints:
    """Per query, the entities of one column range (``scores`` holds entities ``first`` on)
    that score above the target's ``mine`` and are neither known answers nor the target.

    Summed over ranges that cover every entity, one plus it is the filtered rank; so a worker
    can rank against the entities a slice at a time, never holding all of them. The target
    is left out by name, not by its score: ``mine`` need not be the very float that this
    product gives for it.
    """
    higher: Ints = (scores > mine[:, None]).sum(axis=1)
    query, entity = known
    other = entity != target[query]
    # the known answers in this range, and each query's target once
    query = np.concatenate([query[other], np.arange(len(target))])
    entity = np.concatenate([entity[other], target])
    inside = (entity >= first) & (entity < first + scores.shape[1])
    query, entity = query[inside], entity[inside]
    beaten = scores[query, entity - first] > mine[query]
    higher -= np.bincount(query[beaten], minlength=len(target))
    return higher


def rank_sums(rank: Any) -> Floats:
    """[sum of 1/rank, hits@1, hits@3, hits@10, count] of filtered ranks (1 is the best)."""
    rank = np.asarray(rank, dtype=np.float64)
    sums = [float((1.0 / rank).sum())] + [float((rank <= k).sum()) for k in HITS_AT] + [float(len(rank))]
    return np.array(sums)


def ranking_report(sums: Floats) -> dict[str, float]:
    count = max(float(sums[-1]), 1.0)
    report = {"MRR": float(sums[0]) / count}
    for i, k in enumerate(HITS_AT, 1):
        report[f"Hits@{k}"] = float(sums[i]) / count
    return report
