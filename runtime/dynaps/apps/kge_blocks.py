"""KGE's entity blocks (``--clustering entities``): a schedule in which no two workers use
the same entity at the same time, as PyTorch-BigGraph partitions a graph.

Clustering by relation (Lapse's way, ``--clustering relations``) leaves every worker
wanting the hub entities, and every minibatch localizes about 250 entities that another
worker holds with probability (W-1)/W: the messages per epoch grow as W^2 (66k at 8
workers against 254 at 1, bench/README.md).  Here instead:

* the entities are split into ``2W`` blocks of about equal degree and renumbered so that
  each block is one range of ids (a range-partitioned table's homes own ranges too, so a
  block's localize reaches one home);
* a triple belongs to the bucket of its head's and its tail's blocks, unordered;
* an epoch is ``2W - 1`` rounds of a round-robin tournament between the blocks: every
  round pairs all blocks off, each worker takes one pair, localizes both blocks and trains
  that bucket's triples (and a block's own bucket in one of its rounds); a barrier ends
  each round.  Over an epoch every bucket is trained once, by one worker.  A block is held
  in every round, so its own bucket may go to any of them: they are placed to even out the
  rounds' work (:func:`own_bucket_rounds`), since every worker waits at each barrier for the
  busiest (a fixed placement left the busiest worker of a round with 1.25x the mean at 2
  workers and 1.42x at 8 on bench/apps.py's graph; placed, 1.00x and 1.07x).  The pairs are
  dealt so that every worker keeps one of its blocks from one round to the next
  (:func:`handed_on`), and the app runs every other epoch backwards, so a round moves W
  blocks, and the first round of every epoch after the first none;
* negatives are drawn uniformly from the round's two blocks, which the worker holds, so
  every entity access during training is local.

Relations are few and every worker uses all of them: the app replicates them in every
worker (``table.replicate``) instead of relocating them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.apps.data import Triples
from dynaps.apps.partition import balanced_ranges, contiguous_order

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class EntityBlocks:
    """Entities split into blocks that are id ranges (after renaming with ``order``)."""

    order: Ints  # order[k] is the original id that becomes id k
    bounds: Ints  # block b is ids [bounds[b], bounds[b + 1]) after renaming

    @property
    def count(self) -> int:
        return len(self.bounds) - 1

    def block_of(self, ids: Ints) -> Ints:
        """The block of each (renamed) entity id."""
        found: Ints = np.searchsorted(self.bounds, ids, side="right") - 1
        return found

    def keys(self, *blocks: int) -> Ints:
        """The ids of these blocks, in order."""
        return np.concatenate([np.arange(self.bounds[b], self.bounds[b + 1]) for b in blocks])


@dataclass(frozen=True)
class Round:
    """One worker's part of one round: the two blocks it holds and the triples it trains."""

    blocks: tuple[int, int]
    triples: Ints  # (n, 3), renamed ids


def entity_blocks(
    train: Ints, num_entities: int, workers: int, home_starts: Sequence[int] = ()
) -> EntityBlocks:
    """``2 * workers`` blocks of about equal degree (every worker computes the same split).

    ``home_starts``: where the entity table's homes' key ranges begin; a block that would
    cross one by a few ids ends there instead (its localize then asks one home, not two:
    degree-balanced blocks crossed most of them by one or two ids, and each such crossing
    doubled a round's localize messages).
    """
    degree = np.bincount(train[:, [0, 2]].ravel(), minlength=num_entities)
    count = 2 * workers
    part = balanced_ranges(degree, count, home_starts)
    order: Ints = contiguous_order(part)
    sizes = np.bincount(part, minlength=count)
    return EntityBlocks(order=order, bounds=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


def renamed(data: Triples, blocks: EntityBlocks) -> Triples:
    """The graph with entity ``blocks.order[k]`` called ``k`` (relations unchanged)."""
    new_id = np.empty(len(blocks.order), dtype=np.int64)
    new_id[blocks.order] = np.arange(len(blocks.order))

    def rename(triples: Any) -> Ints:
        out: Ints = np.array(triples, dtype=np.int64, copy=True)
        if len(out):
            out[:, 0], out[:, 2] = new_id[out[:, 0]], new_id[out[:, 2]]
        return out

    return replace(
        data,
        entities=[data.entities[i] for i in blocks.order.tolist()],
        train=rename(data.train),
        valid=rename(data.valid),
        test=rename(data.test),
        cluster=None if data.cluster is None else data.cluster[blocks.order],
    )


def tournament(blocks: int) -> list[list[tuple[int, int]]]:
    """Round-robin pairings of an even number of blocks (the circle method): ``blocks - 1``
    rounds of ``blocks // 2`` disjoint pairs, every pair of blocks exactly once."""
    if blocks < 2 or blocks % 2:
        raise ValueError(f"a tournament needs an even number of blocks >= 2, got {blocks}")
    turns = blocks - 1
    rounds = []
    for r in range(turns):
        pairs = [(r, blocks - 1)]
        pairs += [((r + i) % turns, (r - i) % turns) for i in range(1, blocks // 2)]
        rounds.append(pairs)
    return rounds


def handed_on(rounds: list[list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
    """The pairs of every round in worker order (worker ``w`` takes pair ``w``), ordered so
    that every worker keeps one of its two blocks from one round to the next: each round
    moves W blocks instead of 2W.

    Such an order always exists: in the graph of workers (their two blocks of the previous
    round) and pairs (their two blocks), every vertex has degree two, so it is a union of
    even cycles; walking each cycle gives every worker the pair of one of its blocks.
    """
    ordered = [list(rounds[0])]
    for pairs in rounds[1:]:
        held = ordered[-1]
        holder = {block: w for w, pair in enumerate(held) for block in pair}
        pair_of = {block: p for p, pair in enumerate(pairs) for block in pair}
        taken: dict[int, int] = {}  # worker -> pair index
        for start in range(len(held)):
            worker, block = start, held[start][0]
            while worker not in taken:
                taken[worker] = pair_of[block]
                other = next(b for b in pairs[pair_of[block]] if b != block)
                worker = holder[other]  # gives up ``other``, so keeps its remaining block
                block = next(b for b in held[worker] if b != other)
        ordered.append([pairs[taken[w]] for w in range(len(held))])
    return ordered


def schedule(train: Ints, blocks: EntityBlocks, workers: int, me: int) -> list[Round]:
    """Worker ``me``'s rounds of one epoch: its two blocks and its triples in each round.

    Bucket {a, b} (a != b) is trained in the round that pairs a with b; a block's own
    bucket {c, c} in the round :func:`own_bucket_rounds` chooses, by whichever worker holds
    c then.  Every worker computes the same schedule from the same data.
    """
    rounds = handed_on(tournament(blocks.count))
    heads, tails = blocks.block_of(train[:, 0]), blocks.block_of(train[:, 2])
    sizes = np.zeros((blocks.count, blocks.count), dtype=np.int64)
    np.add.at(sizes, (np.minimum(heads, tails), np.maximum(heads, tails)), 1)
    own_round = own_bucket_rounds(sizes, rounds)
    # (round, worker) of every bucket, as one number round * workers + worker
    slot = np.empty((blocks.count, blocks.count), dtype=np.int64)
    for r, pairs in enumerate(rounds):
        for w, (a, b) in enumerate(pairs):
            slot[a, b] = slot[b, a] = r * workers + w
            for c in (a, b):
                if own_round[c] == r:
                    slot[c, c] = r * workers + w
    bucket_slot = slot[heads, tails]
    mine = bucket_slot % workers == me
    triples, turn = train[mine], bucket_slot[mine] // workers
    return [Round(blocks=rounds[r][me], triples=triples[turn == r]) for r in range(len(rounds))]


def own_bucket_rounds(sizes: Ints, rounds: list[list[tuple[int, int]]]) -> list[int]:
    """The round of each block's own bucket: the largest placed first, each where it raises
    its round's busiest worker least (then where its worker is least busy, then the earliest
    round).  ``sizes[a, b]`` (a <= b) counts bucket {a, b}'s triples; worker ``w`` holds
    ``rounds[r][w]`` in round ``r``."""
    count = len(sizes)
    load = np.zeros((len(rounds), len(rounds[0])), dtype=np.int64)  # triples per round and worker
    holder = np.empty((len(rounds), count), dtype=np.int64)
    for r, pairs in enumerate(rounds):
        for w, (a, b) in enumerate(pairs):
            load[r, w] = sizes[min(a, b), max(a, b)]
            holder[r, a] = holder[r, b] = w
    chosen = [0] * count
    for c in sorted(range(count), key=lambda block: (-int(sizes[block, block]), block)):
        own = int(sizes[c, c])
        choices = []
        for r in range(len(rounds)):
            w = int(holder[r, c])
            busiest = int(load[r].max())
            choices.append((max(busiest, int(load[r, w]) + own) - busiest, int(load[r, w]), r))
        _, _, r = min(choices)
        load[r, holder[r, c]] += own
        chosen[c] = r
    return chosen


def negatives(blocks: EntityBlocks, pair: tuple[int, int], count: int, rng: np.random.Generator) -> Ints:
    """``count`` entity ids drawn uniformly from the two blocks of ``pair``."""
    a, b = pair
    size_a = int(blocks.bounds[a + 1] - blocks.bounds[a])
    size_b = int(blocks.bounds[b + 1] - blocks.bounds[b])
    draws = rng.integers(0, size_a + size_b, count)
    ids: Ints = np.where(draws < size_a, blocks.bounds[a] + draws, blocks.bounds[b] + draws - size_a)
    return ids
