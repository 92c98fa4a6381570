"""KGE's ranking under other entity-block schedules and negatives: which part of the
schedule costs the ranking at many workers (bench/README.md, "Why entity blocks rank lower
at 8 workers").

Runs ``dynaps.apps.kge`` with ``--workers`` workers in lockstep in one process
(tests/dynaps/apps/lockstep.py: exact tables, no replica, no staleness, no messages), with
the app's round replaced by a variant, and prints the filtered MRR after every epoch.  A
variant is ``NEGATIVES`` and options after slashes:

* negatives ``pair`` (the app's: uniform over the round's two blocks), ``weighted`` (the same
  draws, each corruption's loss weighted by how often the schedule draws it against how
  often a uniform draw would, so that an epoch's expected gradient is the uniform one's),
  ``same`` (a corrupted tail from the tail's block, a corrupted head from the head's) or
  ``global`` (uniform over every entity: not local to the round's blocks);
* ``split=S``: every bucket's triples spread over S passes of the tournament (S times the
  rounds, so S times the localizes and barriers in a real job);
* ``shuffled``: one worker trains every triple in one random order (no rounds), with the
  negatives a round would have given each triple (its head's and tail's blocks of
  ``--workers`` workers' 2W): the negatives' effect without the schedule's order;
* ``extra=K``: negatives uniform over the round's two blocks and K others drawn per round
  (read and pushed at once, as if local);
* ``borrow``: the round's own negatives and another worker's two blocks of that round, read
  once at the round's start, their gradients summed and pushed once at its end (what a real
  job could do for three more messages per worker and round).
* ``sync=E`` (with ``extra=K`` or ``borrow``): the added blocks read through a copy, as a
  real job would hold another worker's rows: ``sync=0`` reads them once at the round's start
  and pushes their summed gradients at its end; ``sync=E`` pushes the sums and reads the rows
  again every E minibatches (the staleness a replica's timed sync would give).

    PYTHONPATH=.:runtime python -P bench/kge_schedules.py --workers 8 --epochs 4 \\
        pair global global/split=4 weighted weighted/shuffled global/shuffled

About 10 s per variant on 1,000,000 triples.  Writes bench/results/kge-schedules.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tests.dynaps.apps import lockstep

from dynaps.apps import kge, kge_blocks, kge_models, kge_steps

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the sibling module
import kge_variants

Ints = npt.NDArray[np.int64]
NEGATIVES = ("pair", "weighted", "same", "global")
RESULTS = Path(__file__).parent / "results" / "kge-schedules.json"


@dataclass(frozen=True)
class Variant:
    negatives: str = "pair"
    split: int = 1
    shuffled: bool = False
    extra: int = 0
    borrow: bool = False
    sync: int | None = None  # the added blocks through a copy, synced every E minibatches (0: once)

    @classmethod
    def parse(cls, text: str) -> Variant:
        negatives, *options = text.split("/")
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives {negatives!r}: choose from {', '.join(NEGATIVES)}")
        variant = cls(negatives=negatives)
        for option in options:
            if option == "shuffled":
                variant = replace(variant, shuffled=True)
            elif option.startswith("split=") and option[6:].isdigit() and int(option[6:]) >= 1:
                variant = replace(variant, split=int(option[6:]))
            elif option == "borrow":
                variant = replace(variant, borrow=True)
            elif option.startswith("extra=") and option[6:].isdigit():
                variant = replace(variant, extra=int(option[6:]))
            elif option.startswith("sync=") and option[5:].isdigit():
                variant = replace(variant, sync=int(option[5:]))
            else:
                raise ValueError(
                    f"option {option!r}: 'split=S' (S >= 1), 'extra=K', 'borrow', 'sync=E' or 'shuffled'"
                )
        if (variant.extra or variant.borrow) and variant.negatives != "pair":
            raise ValueError(f"{text!r}: extra=K and borrow add blocks to the round's pair: use pair/...")
        if variant.borrow and variant.sync is None:
            variant = replace(variant, sync=0)  # borrowed rows are another worker's: read once
        if variant.sync is not None and not (variant.extra or variant.borrow):
            raise ValueError(f"{text!r}: sync=E applies to the blocks extra=K or borrow add")
        return variant


def from_blocks(blocks: kge_blocks.EntityBlocks, which: Ints, n: int, rng: np.random.Generator) -> Ints:
    """``n`` ids per row, each uniform over the block ``which[row]``."""
    low = blocks.bounds[which]
    size = blocks.bounds[which + 1] - low
    ids: Ints = (low[:, None] + (rng.random((len(which), n)) * size[:, None]).astype(np.int64)).ravel()
    return ids


def from_pairs(
    blocks: kge_blocks.EntityBlocks, first: Ints, second: Ints, n: int, rng: np.random.Generator
) -> Ints:
    """``n`` ids per row, each uniform over the union of blocks ``first[row]`` and ``second[row]``
    (one block counted once when they are the same)."""
    size_a = blocks.bounds[first + 1] - blocks.bounds[first]
    size_b = np.where(first == second, 0, blocks.bounds[second + 1] - blocks.bounds[second])
    draw = (rng.random((len(first), n)) * (size_a + size_b)[:, None]).astype(np.int64)
    inside_a = draw < size_a[:, None]
    ids: Ints = np.where(
        inside_a,
        blocks.bounds[first][:, None] + draw,
        blocks.bounds[second][:, None] + draw - size_a[:, None],
    ).ravel()
    return ids


def from_union(blocks: kge_blocks.EntityBlocks, held: Ints, count: int, rng: np.random.Generator) -> Ints:
    """``count`` ids uniform over the union of the blocks ``held``."""
    sizes = blocks.bounds[held + 1] - blocks.bounds[held]
    ends = np.cumsum(sizes)
    draws = rng.integers(0, int(ends[-1]), count)
    which = np.searchsorted(ends, draws, side="right")
    ids: Ints = blocks.bounds[held[which]] + draws - (ends[which] - sizes[which])
    return ids


def schedule_weights(blocks: kge_blocks.EntityBlocks, query_block: Ints, corrupted: Ints) -> Any:
    """How much more often a uniform draw picks each corruption than the schedule does.

    Over an epoch a query from block A meets every other block in one round (about equally
    often) and A itself in all of them, half the draws each time: per entity, A's are drawn
    W times more often than uniform and another block's (2W - 1) / W times less."""
    workers = blocks.count / 2
    own = blocks.block_of(corrupted).reshape(len(query_block), -1) == query_block[:, None]
    return np.where(own, 1.0 / workers, (2 * workers - 1) / workers).astype(np.float32)


class Negatives:
    """A variant's corruptions for one minibatch, and their weights for the loss."""

    def __init__(
        self,
        variant: Variant,
        blocks: kge_blocks.EntityBlocks,
        pair: tuple[int, int],
        rng: np.random.Generator,
    ) -> None:
        self.variant, self.blocks, self.rng = variant, blocks, rng
        self.weights: tuple[Any, Any] | None = None  # read by the loss while a minibatch computes
        if variant.borrow:
            chosen: Any = other_pair(blocks, pair, rng)
        elif variant.extra:
            others = [b for b in range(blocks.count) if b not in pair]
            chosen = rng.choice(others, min(variant.extra, len(others)), replace=False)
        else:
            chosen = ()
        self.held = np.array([*pair, *chosen], dtype=np.int64)  # the round's blocks and its extra ones

    def draw(self, batch: Ints, pair: tuple[int, int], n: int) -> Ints:
        blocks, rng, size = self.blocks, self.rng, len(batch)
        head_block, tail_block = blocks.block_of(batch[:, 0]), blocks.block_of(batch[:, 2])
        kind = self.variant.negatives
        if kind == "global":
            return rng.integers(0, int(blocks.bounds[-1]), 2 * n * size)
        if kind == "same":
            return np.concatenate(
                [from_blocks(blocks, tail_block, n, rng), from_blocks(blocks, head_block, n, rng)]
            )
        if self.variant.shuffled:  # each triple's own round: its head's and tail's blocks
            tails = from_pairs(blocks, head_block, tail_block, n, rng)
            heads = from_pairs(blocks, head_block, tail_block, n, rng)
        elif len(self.held) > 2:  # extra=K or borrow
            tails, heads = (
                from_union(blocks, self.held, n * size, rng),
                from_union(blocks, self.held, n * size, rng),
            )
        else:
            tails = kge_blocks.negatives(blocks, pair, n * size, rng)
            heads = kge_blocks.negatives(blocks, pair, n * size, rng)
        if kind == "weighted":
            self.weights = (
                schedule_weights(blocks, head_block, tails),
                schedule_weights(blocks, tail_block, heads),
            )
        return np.concatenate([tails, heads])


def other_pair(blocks: kge_blocks.EntityBlocks, pair: tuple[int, int], rng: np.random.Generator) -> Any:
    """The two blocks another worker holds in the round that gives this worker ``pair``."""
    for pairs in kge_blocks.handed_on(kge_blocks.tournament(blocks.count)):
        if pair in pairs:
            others = [p for p in pairs if p != pair]
            return others[int(rng.integers(len(others)))]
    raise ValueError(f"no round holds {pair}")


class Lent:
    """The entity table as a borrowing round sees it: ``lent`` (another worker's blocks) read
    once at the round's start, their gradients summed here and pushed once by :meth:`give_back`;
    every other key read and written as usual."""

    def __init__(self, entities: Any, lent: Ints) -> None:
        self.entities, self.lent = entities, lent
        self.rows = entities.pull(lent)
        self.grads = np.zeros_like(self.rows)
        self.position = np.full(int(lent.max()) + 1, -1, dtype=np.int64)
        self.position[lent] = np.arange(len(lent))

    def _lent(self, keys: Ints) -> Any:
        inside = keys < len(self.position)
        at = np.full(len(keys), -1, dtype=np.int64)
        at[inside] = self.position[keys[inside]]
        return at

    def pull(self, keys: Ints, *, wait: bool = True) -> Any:
        at = self._lent(keys)
        rows = self.entities.pull(keys[at < 0])
        out = np.empty((len(keys), self.rows.shape[1]), dtype=self.rows.dtype)
        out[at < 0], out[at >= 0] = rows, self.rows[at[at >= 0]]
        return out

    def push(self, keys: Ints, grads: Any, *, wait: bool = True) -> Any:
        at = self._lent(keys)
        np.add.at(self.grads, at[at >= 0], grads[at >= 0])
        return self.entities.push(keys[at < 0], grads[at < 0], wait=wait)

    def give_back(self) -> None:
        touched = np.flatnonzero(np.abs(self.grads).sum(axis=1) > 0)
        if len(touched):
            self.entities.push(self.lent[touched], self.grads[touched])
        self.grads[:] = 0

    def sync(self) -> None:
        """Push the summed gradients and read the rows again (a replica's timed sync)."""
        self.give_back()
        self.rows = self.entities.pull(self.lent)


def variant_round(variant: Variant) -> Any:
    """A replacement of ``kge.block_round`` that trains a round with the variant's negatives."""

    def block_round(
        entities: Any,
        relations: Any,
        model: kge_models.Model,
        blocks: kge_blocks.EntityBlocks,
        pair: tuple[int, int],
        triples: Ints,
        config: Any,
        rng: np.random.Generator,
    ) -> float:
        if variant.borrow and blocks.count < 4:  # no other worker to borrow from
            return kge_steps.block_round(entities, relations, model, blocks, pair, triples, config, rng)
        negatives = Negatives(variant, blocks, pair, rng)
        if variant.sync is not None:
            entities = Lent(entities, blocks.keys(*negatives.held[2:]))
        loss = 0.0
        for step, first in enumerate(range(0, len(triples), config.batch), start=1):
            batch = triples[first : first + config.batch]
            size = len(batch)
            neg_keys = negatives.draw(batch, pair, config.neg)
            rows = entities.pull(np.concatenate([batch[:, 0], batch[:, 2], neg_keys]))
            with weighted_slopes(negatives.weights):
                step_loss, _ = kge_steps.minibatch(
                    entities,
                    relations,
                    model,
                    batch,
                    rows[: 2 * size],
                    relations.pull(batch[:, 1]),
                    neg_keys,
                    rows[2 * size :],
                    config,
                )
            loss += step_loss
            if isinstance(entities, Lent) and variant.sync and step % variant.sync == 0:
                entities.sync()
        if isinstance(entities, Lent):
            entities.give_back()
        return loss

    return block_round


@contextlib.contextmanager
def weighted_slopes(weights: tuple[Any, Any] | None) -> Iterator[None]:
    """The corruptions' slopes (d loss / d score) times their weights, inside the block."""
    if weights is None:
        yield
        return
    plain = kge_models._loss_and_slopes

    def weighted(pos: Any, tneg: Any, hneg: Any) -> tuple[float, Any, Any, Any]:
        loss, slope_pos, slope_t, slope_h = plain(pos, tneg, hneg)
        return loss, slope_pos, slope_t * weights[0], slope_h * weights[1]

    kge_models._loss_and_slopes = weighted
    try:
        yield
    finally:
        kge_models._loss_and_slopes = plain


@contextlib.contextmanager
def installed(variant: Variant, blocks_for: int) -> Iterator[None]:
    """The app with the variant's rounds (and, shuffled, one round of every triple in the
    blocks of ``blocks_for`` workers)."""
    saved = (kge_steps.block_round, kge_blocks.schedule, kge_blocks.entity_blocks)
    plain_schedule, plain_blocks = kge_blocks.schedule, kge_blocks.entity_blocks

    def split_schedule(
        train: Ints, blocks: kge_blocks.EntityBlocks, workers: int, me: int
    ) -> list[kge_blocks.Round]:
        rounds = plain_schedule(train, blocks, workers, me)
        s = variant.split
        return [kge_blocks.Round(r.blocks, r.triples[i::s]) for i in range(s) for r in rounds]

    def shuffled_schedule(
        train: Ints, blocks: kge_blocks.EntityBlocks, workers: int, me: int
    ) -> list[kge_blocks.Round]:
        return [kge_blocks.Round((0, 1), train)]  # the app shuffles a round's triples

    def blocks_of_many(
        train: Ints, num_entities: int, workers: int, home_starts: Sequence[int] = ()
    ) -> kge_blocks.EntityBlocks:
        return plain_blocks(train, num_entities, blocks_for)

    setattr(kge, "block_round", variant_round(variant))  # noqa: B010 (kge imports it by name)
    if variant.shuffled:
        kge_blocks.schedule, kge_blocks.entity_blocks = shuffled_schedule, blocks_of_many
    else:
        kge_blocks.schedule = split_schedule
    try:
        yield
    finally:
        setattr(kge, "block_round", saved[0])  # noqa: B010
        kge_blocks.schedule, kge_blocks.entity_blocks = saved[1], saved[2]


def run(variant: Variant, workers: int, config: kge.Config) -> list[float]:
    """MRR after every epoch."""
    with installed(variant, workers):
        results, _ = lockstep.run(kge.train, kge.tables(config), config, 1 if variant.shuffled else workers)
    return [float(report["quality"]["MRR"]) for report in results[0]]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "variants",
        nargs="*",
        default=["pair"],
        help="NEGATIVES[/split=S][/shuffled][/extra=K][/borrow][/sync=E]",
    )
    kge_variants.add_arguments(parser, epochs=4, out=RESULTS)
    args = parser.parse_args()
    config = kge_variants.config(parser, args)
    try:
        variants = [Variant.parse(text) for text in args.variants]
    except ValueError as exc:
        parser.error(str(exc))
    return kge_variants.run_all(args.variants, lambda i: run(variants[i], args.workers, config), args)


if __name__ == "__main__":
    sys.exit(main())
