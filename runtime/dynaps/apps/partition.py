"""Splitting work over workers: parts of about equal weight, and parts that become ranges
of ids lined up with a table's homes (MF's DSGD blocks, KGE's entity blocks)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[np.int64]


def balanced_parts(weights: Any, parts: int, exact_top: int = 2048) -> Ints:
    """Assign items to ``parts`` so each part gets about the same total weight.

    The ``exact_top`` heaviest items go, heaviest first, to the currently lightest part
    (LPT scheduling: one very popular row can be a tenth of all the work under Zipf
    skew); the many light ones are then dealt in serpentine order (0, 1, .., p-1, p-1,
    .., 0), which keeps the parts within about one light item of each other.
    """
    weights = np.asarray(weights, dtype=np.float64)
    order = np.argsort(-weights, kind="stable")
    assignment = np.empty(len(weights), dtype=np.int64)
    loads = [(0.0, part) for part in range(parts)]
    for item in order[:exact_top].tolist():
        load, part = heapq.heappop(loads)
        assignment[item] = part
        heapq.heappush(loads, (load + float(weights[item]), part))
    rest = order[exact_top:]
    lightest_first = np.array([part for _, part in sorted(loads)], dtype=np.int64)
    lap = np.arange(len(rest)) % (2 * parts)
    assignment[rest] = lightest_first[np.where(lap < parts, lap, 2 * parts - 1 - lap)]
    return assignment


def contiguous_order(part: Ints) -> Ints:
    """Ids in an order that makes every part one range: part 0's ids first, then part 1's, ..

    ``order[k]`` is the id that becomes ``k`` (ids keep their order within a part), so
    after renaming with it part ``p`` is ids ``[sizes[:p].sum(), sizes[:p + 1].sum())``.
    Parts of about equal size then line up with a range partition's equal key ranges.
    """
    return np.argsort(part, kind="stable")


def balanced_ranges(weights: Any, parts: int, starts: Sequence[int] = ()) -> Ints:
    """:func:`balanced_parts` for parts that become ranges of ids (:func:`contiguous_order`),
    whose bounds then include each of ``starts`` near one (:func:`aligned_sizes`): where a
    table's homes' key ranges begin, so that a part's localize asks one home, not two."""
    part = balanced_parts(weights, parts)
    if not len(starts):
        return part
    return fitted_parts(part, weights, aligned_sizes(np.bincount(part, minlength=parts), starts))


def fitted_parts(part: Ints, weights: Any, sizes: Ints) -> Ints:
    """``part`` changed so that part ``p`` has exactly ``sizes[p]`` items: a part with too
    many gives up its lightest ones, and the parts with too few take them, so every part's
    weight changes by a few of the lightest items at most."""
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = np.bincount(part, minlength=len(sizes))
    if len(counts) != len(sizes) or int(sizes.sum()) != len(part) or (sizes < 0).any():
        raise ValueError(f"sizes {sizes.tolist()} do not fit {len(part)} items in {len(sizes)} parts")
    if (counts == sizes).all():
        return part
    by_part: Ints = np.lexsort((np.asarray(weights, dtype=np.float64), part))  # each part's lightest first
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    over = np.flatnonzero(counts > sizes)
    given = np.concatenate([by_part[starts[p] : starts[p] + counts[p] - sizes[p]] for p in over])
    under = np.flatnonzero(counts < sizes)
    fitted = part.copy()
    fitted[given] = np.repeat(under, (sizes - counts)[under])
    return fitted


def aligned_sizes(sizes: Ints, starts: Sequence[int]) -> Ints:
    """``sizes`` of consecutive ranges of ids changed so that their bounds include each of
    ``starts`` (e.g. where a table's homes' key ranges begin) that lies within a quarter of
    both neighbouring ranges of a bound: a range that crosses one of them by a few ids costs
    a second home in every message about the range."""
    sizes = np.asarray(sizes, dtype=np.int64)
    bounds = np.cumsum(sizes)[:-1]  # the inner bounds
    slack = np.minimum(sizes[:-1], sizes[1:]) // 4  # a range keeps at least half its ids
    for start in starts if len(bounds) else ():
        nearest = int(np.argmin(np.abs(bounds - start)))
        if abs(int(bounds[nearest]) - start) <= slack[nearest]:
            bounds[nearest] = start
    aligned: Ints = np.diff(np.concatenate([[0], bounds, [sizes.sum()]]))
    return aligned
