"""Replicated entities under AdaGrad: does a replica's summed flush cost the ranking, and
would carrying the sum of squares with it give it back?

KGE's quality option at many workers is relation clustering with every entity replicated
in every worker (``--clustering relations --hot-keys <entities>``, bench/README.md, "Why
entity blocks rank lower at 8 workers"): ranking as one process does at the default 20 ms
sync, at several times the CPU, and learning ever slower at longer syncs (400 ms: MRR
0.002, 0.012, 0.096). A replica sums a worker's pushes between syncs and flushes the sum
as one push (dynaps.client.hot_keys), so the owner's AdaGrad adds the *square of the sum*
to its accumulator where one push per minibatch would have added the *sum of the
squares*: with gradients that agree, k times more, a step smaller by about sqrt(k).

This simulates W workers of relation clustering in one process, taking turns one minibatch
at a time (a fair interleaving of workers running at the same speed), each reading entity
rows from its own copy of the table and buffering its pushes; every ``--sync`` of its own
minibatches a worker flushes its buffer to the table and copies the table again (and every
worker at the end of each epoch, as at the app's barrier). Flushes are applied either as
the replica does today (``summed``: the owner's AdaGrad step with the summed gradient) or
with the squares (``squares``: the accumulator grows by the sum of the per-push squared
gradients, then one step with the summed gradient). ``exact`` (no replica: every pull and
push on the table at once) is the baseline. Relations are exact throughout; negatives are
uniform over every entity. A worker of the real 8-worker job trains about 490 minibatches
per epoch of the 1,000,000-triple graph, in 6 s at the 20 ms sync, 2.9 s at 100 ms and
1.8 s at 400 ms (the syncs are most of its time): a sync every 2, 16 and 110 minibatches.

    PYTHONPATH=.:runtime python -P bench/replica_adagrad.py --workers 8 --epochs 3 \\
        exact summed/16 squares/16 summed/110 squares/110

Writes bench/results/replica-adagrad.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.apps import kge, kge_steps
from dynaps.apps.inprocess import ArrayTable, InProcessPS
from dynaps.apps.kge_models import make_model
from dynaps.apps.metrics import KnownTriples, ranking_report
from dynaps.apps.partition import balanced_parts
from dynaps.store.updaters import AdagradUpdater, combine_duplicates

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the sibling module
import kge_variants

Ints = npt.NDArray[np.int64]
MODES = ("exact", "summed", "squares")
RESULTS = Path(__file__).parent / "results" / "replica-adagrad.json"


class Replica:
    """One worker's copy of the entity table and its buffered pushes (see the docstring)."""

    def __init__(self, table: ArrayTable, squares: bool) -> None:
        self.table, self.squares = table, squares
        self.copy = table.values.copy()
        self.sums = np.zeros(table.values.shape, dtype=np.float64)
        self.sum_sq = np.zeros(table.values.shape, dtype=np.float64)
        self.touched = np.zeros(len(table.values), dtype=bool)

    def pull(self, keys: Ints, *, wait: bool = True) -> Any:
        return self.copy[keys]

    def push(self, keys: Ints, grads: Any, *, wait: bool = True) -> None:
        # one push's repeats are summed before squaring, as the owner's AdaGrad does
        unique, summed = combine_duplicates(keys, grads)
        self.sums[unique] += summed
        self.sum_sq[unique] += np.square(summed, dtype=np.float64)
        self.touched[unique] = True

    def sync(self) -> None:
        keys = np.flatnonzero(self.touched)
        if len(keys):
            table = self.table
            sums = self.sums[keys].astype(table.values.dtype)
            if self.squares:
                updater = table.updater
                assert isinstance(updater, AdagradUpdater)
                (accumulator,) = table.states
                accumulator[keys] += self.sum_sq[keys].astype(accumulator.dtype)
                scale = np.sqrt(accumulator[keys] + updater.initial_accumulator + updater.eps)
                table.values[keys] -= updater.lr * sums / scale
            else:
                table.push(keys, sums)
            self.sums[keys] = 0.0
            self.sum_sq[keys] = 0.0
            self.touched[keys] = False
        self.copy = self.table.values.copy()


class Done:
    def result(self) -> None:
        return None


class Exact:
    """The table itself, with the handles the steps expect."""

    def __init__(self, table: ArrayTable) -> None:
        self.table = table

    def pull(self, keys: Ints, *, wait: bool = True) -> Any:
        return self.table.pull(keys)

    def push(self, keys: Ints, grads: Any, *, wait: bool = True) -> Done:
        self.table.push(keys, grads)
        return Done()

    def sync(self) -> None:
        return None


def run(mode: str, sync: int, workers: int, config: kge.Config) -> list[float]:
    """MRR after each epoch."""
    data = kge.load(config)
    model = make_model(config.model, config.dim)
    num_e, num_r = len(data.entities), len(data.relations)
    ps = InProcessPS(kge.tables(config))
    entities, relations = ps.table("entities"), ps.table("relations")
    init = np.random.default_rng([config.seed, 9])
    scale = 1.0 / np.sqrt(model.entity_dim)
    entities.set(np.arange(num_e), init.normal(0, scale, (num_e, model.entity_dim)))
    relations.set(np.arange(num_r), init.normal(0, scale, (num_r, model.relation_dim)))
    rel_part = balanced_parts(np.bincount(data.train[:, 1], minlength=num_r), workers)
    mine = [data.train[rel_part[data.train[:, 1]] == w] for w in range(workers)]
    test = data.test[: config.eval_triples] if config.eval_triples else data.test
    known = KnownTriples(np.concatenate([data.train, data.valid, data.test]), num_e, num_r, queries=test)
    rngs = [np.random.default_rng([config.seed, 10, w]) for w in range(workers)]
    views: list[Any] = [
        Exact(entities) if mode == "exact" else Replica(entities, squares=mode == "squares")
        for _ in range(workers)
    ]
    rel_view = Exact(relations)
    mrr = []
    for _ in range(config.epochs):
        batches = []
        for w in range(workers):
            shuffled = mine[w][rngs[w].permutation(len(mine[w]))]
            batches.append([shuffled[i : i + config.batch] for i in range(0, len(shuffled), config.batch)])
        for step in range(max(len(b) for b in batches)):
            for w in range(workers):
                if step >= len(batches[w]):
                    continue
                batch, view = batches[w][step], views[w]
                size = len(batch)
                neg_keys = rngs[w].integers(0, num_e, 2 * config.neg * size)
                ends = view.pull(np.concatenate([batch[:, 0], batch[:, 2]]))
                kge_steps.minibatch(
                    view, rel_view, model, batch, ends, relations.pull(batch[:, 1]),
                    neg_keys, view.pull(neg_keys), config,
                )  # fmt: skip
                if (step + 1) % sync == 0:
                    view.sync()
        for view in views:  # the epoch's barrier flushes and refreshes every replica
            view.sync()
        sums = kge._evaluate(entities, relations, model, test, known, num_e)
        mrr.append(float(ranking_report(sums)["MRR"]))
    return mrr


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="*", default=["exact"], help="exact, summed/SYNC or squares/SYNC")
    kge_variants.add_arguments(parser, epochs=3, out=RESULTS)
    args = parser.parse_args()
    config = kge_variants.config(parser, args, clustering="relations")
    chosen = []
    for text in args.variants:
        mode, _, every = text.partition("/")
        if mode not in MODES or (mode == "exact") != (every == "") or (every and not every.isdigit()):
            parser.error(f"variant {text!r}: exact, summed/SYNC or squares/SYNC (SYNC: minibatches)")
        chosen.append((mode, int(every or 1)))
    return kge_variants.run_all(args.variants, lambda i: run(*chosen[i], args.workers, config), args)


if __name__ == "__main__":
    sys.exit(main())
