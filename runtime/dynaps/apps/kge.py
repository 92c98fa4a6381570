"""Knowledge-graph embeddings: ComplEx or RESCAL, AdaGrad on the parameters' owners, sampled negatives.

Each positive triple is scored against ``--neg`` corrupted tails and ``--neg`` corrupted
heads with binary cross-entropy; workers push gradients and the parameters' owner takes
the AdaGrad step (its state moves with the key).  How the work is split over workers:

* ``--clustering entities`` (the default; PyTorch-BigGraph's partitioning,
  dynaps/apps/kge_blocks.py): the entities are split into 2W blocks and an epoch is
  trained in 2W - 1 rounds in which no two workers share an entity.  With ``--allocation
  dynamic`` each round localizes its two blocks, so every entity access is local;
  negatives are drawn uniformly from the round's two blocks; the relations, which every
  worker uses, are replicated in every worker (``table.replicate``, flushed every
  ``--hot-sync-ms``).  An epoch moves W blocks per round, not entities per minibatch:
  at 8 workers 1.7k wake-ups per epoch against 66k (bench/README.md).  The price is
  ranking quality at many workers (8 workers on a dense graph: MRR 0.08 against one
  process's 0.18; docs/apps.md says why): where that matters more, ``relations`` with every
  entity replicated (``--hot-keys`` the entity count, ``--hot-sync-ms 50``) ranks as one
  process does, at about three times the CPU.
* ``--clustering relations`` (Lapse's techniques): relations are split over workers
  (balanced by triple count), each worker trains on its relations' triples and localizes
  them once; while minibatch ``t`` trains, the entities of minibatch ``t + ahead`` are
  being localized and its negatives prepared through the sampling API (the
  ``--neg-strategy`` decides how: ``pool`` localizes groups of draws ahead and reuses
  them).  Hub entities that several workers want bounce between them.

Hot entities (``--hot-keys``, NuPS), with either clustering: the entities with the most
training triples are replicated in every worker instead of relocated; their pushes are
summed and sent to their owners every ``--hot-sync-ms`` milliseconds.

Quality: filtered MRR and Hits@1/3/10 on held-out triples (tail and head prediction).

    python -m dynaps.apps.kge --model complex --dim 32 --epochs 5
    python -m dynaps.apps.kge --clustering relations --neg-strategy pool
    python -m dynaps.apps.kge --train train.tsv --valid valid.tsv --test test.tsv
    dynaps run examples/kge.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dynaps.apps import common, kge_blocks, launching, reporting, synthetic
from dynaps.apps.arguments import (
    count_or_fraction,
    non_negative_float,
    non_negative_int,
    positive_int,
    sync_ms,
)
from dynaps.apps.data import Triples, read_triples
from dynaps.apps.kge_models import MODELS, Model, make_model
from dynaps.apps.kge_steps import block_round, localize_ahead_epoch
from dynaps.apps.metrics import KnownTriples, higher_counts, rank_sums, ranking_report
from dynaps.apps.partition import balanced_parts
from dynaps.client.sampling import Distribution
from dynaps.contract import TableSpec, UpdaterKind, UpdaterSpec


@dataclass(frozen=True)
class Config:
    allocation: str = "dynamic"
    model: str = "complex"
    dim: int = 32  # ComplEx: complex dimension (tables hold 2 * dim floats)
    epochs: int = 5
    batch: int = 256
    neg: int = 4  # corruptions per positive, per side
    lr: float = 0.1  # AdaGrad, applied by the parameters' owner
    reg: float = 1e-4
    ahead: int = 2  # minibatches between localizing an entity and using it
    clustering: str = "entities"  # entity blocks (dynaps/apps/kge_blocks.py), or "relations" (Lapse)
    neg_strategy: str = "pool"
    pool_group: int = 4096
    pool_reuse: int = 4
    hot_keys: float = 0.0  # dynamic only: replicate the N (or this fraction of) most frequent entities
    hot_sync_ms: float = 20.0
    seed: int = 0
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    entities: int = 5_000
    relations: int = 50
    triples: int = 100_000
    eval_triples: int = 1_000  # test triples ranked after each epoch (0: all)
    eval_every: int = 1  # rank after every N-th epoch and the last (a ranking pulls every entity)
    report: str | None = None
    quiet: bool = False


_DATA: dict[tuple[Any, ...], Triples] = {}
MANY_BLOCKS = 4  # workers from which entity blocks' ranking falls clearly (bench/kge_schedules.py)


def load(config: Config) -> Triples:
    key = (
        config.train,
        config.valid,
        config.test,
        config.entities,
        config.relations,
        config.triples,
        config.seed,
    )
    if key not in _DATA:
        if config.train and config.test:
            data = read_triples(config.train, config.valid, config.test)
        else:
            data = synthetic.knowledge_graph(
                config.entities, config.relations, config.triples, seed=config.seed
            )
        _DATA.clear()
        _DATA[key] = data
    return _DATA[key]


def tables(config: Config, shape: tuple[int, int] | None = None) -> dict[str, TableSpec]:
    if shape is None:
        data = load(config) if config.train else None
        shape = (len(data.entities), len(data.relations)) if data else (config.entities, config.relations)
    model = make_model(config.model, config.dim)
    adagrad = UpdaterSpec(kind=UpdaterKind.ADAGRAD, lr=config.lr)
    return {
        "entities": TableSpec(num_keys=shape[0], dim=model.entity_dim, updater=adagrad),
        "relations": TableSpec(num_keys=shape[1], dim=model.relation_dim, updater=adagrad),
        **reporting.metrics_table(),
    }


def train(ps: common.PSLike, config: Config) -> list[dict[str, Any]]:
    """Run the training in this worker; returns every epoch's report."""
    data = load(config)
    model = make_model(config.model, config.dim)
    num_e, num_r = len(data.entities), len(data.relations)
    entities = common.check_table(ps, "entities", num_e, model.entity_dim, gradients=True, lr=config.lr)
    relations = common.check_table(ps, "relations", num_r, model.relation_dim, gradients=True, lr=config.lr)
    progress = reporting.Progress(ps, "kge", config.epochs, config.quiet)
    moving = common.dynamic(ps, config.allocation)
    me, workers = ps.rank, ps.num_workers
    by_entities = config.clustering == "entities"

    blocks, rounds, start_order = None, [], np.arange(num_e)
    if by_entities:  # entity blocks: ids renamed so that every block is one range
        blocks = kge_blocks.entity_blocks(data.train, num_e, workers, common.home_starts(ps, num_e))
        data, start_order = kge_blocks.renamed(data, blocks), blocks.order
        rounds = kge_blocks.schedule(data.train, blocks, workers, me)
        mine = np.concatenate([r.triples for r in rounds])
        my_relations = np.arange(num_r)  # every worker uses every relation
    else:  # data clustering: each worker trains on the triples of its own relations
        rel_part = balanced_parts(np.bincount(data.train[:, 1], minlength=num_r), workers)
        mine = data.train[rel_part[data.train[:, 1]] == me]
        my_relations = np.flatnonzero(rel_part == me)
    test = data.test if not config.eval_triples else data.test[: config.eval_triples]
    my_test = test[me::workers]
    progress.note(
        f"{config.model}: {num_e:,} entities, {num_r} relations, {len(data.train):,} training triples, "
        f"{workers} workers, allocation {'dynamic' if moving else 'static'}, clustering {config.clustering}"
    )
    if by_entities and workers >= MANY_BLOCKS:
        progress.note(
            f"note: in entity blocks each round trains pairs of {2 * workers} blocks, so at {workers} "
            "workers the ranking can fall well below one process's (a dense graph: MRR 0.08 against "
            f"0.18 at 8); --clustering relations --hot-keys {num_e} --hot-sync-ms 50 (every entity "
            "replicated) ranks as one process does, at about three times the CPU (docs/apps.md, "
            "'KGE in entity blocks')"
        )
    known = KnownTriples(np.concatenate([data.train, data.valid, data.test]), num_e, num_r, queries=my_test)

    if not by_entities:
        strategy = config.neg_strategy if moving else "naive"
        options = {"group_size": config.pool_group, "reuse": config.pool_reuse} if strategy == "pool" else {}
        seed = config.seed * 1000 + me
        entities.set_sampler(Distribution.uniform(0, num_e), strategy, seed=seed, **options)
    if me == 0:
        init = np.random.default_rng([config.seed, 9])
        scale = 1.0 / np.sqrt(model.entity_dim)
        # drawn by original id, stored under the (possibly renamed) ids: the same start
        start = init.normal(0, scale, (num_e, model.entity_dim))[start_order]
        common.set_in_chunks(entities, np.arange(num_e), start)
        common.set_in_chunks(relations, np.arange(num_r), init.normal(0, scale, (num_r, model.relation_dim)))
    ps.barrier()
    replicated = moving and by_entities and workers > 1
    if moving:
        if replicated:  # shared by all workers: a replica in each, not relocated
            if me == 0:  # one owner: a flush or refresh is one message, not one per home
                relations.localize(my_relations)
            ps.barrier()
            relations.replicate(np.arange(num_r), sync_ms=config.hot_sync_ms)
        else:
            relations.localize(my_relations)
        hot = hot_entities(data.train, num_e, config.hot_keys)
        if len(hot):
            entities.replicate(hot, sync_ms=config.hot_sync_ms)
    else:
        hot = np.empty(0, dtype=np.int64)

    rng = np.random.default_rng([config.seed, 10, me])
    for epoch in range(1, config.epochs + 1):
        progress.start_epoch()
        if blocks is not None:
            loss = 0.0
            # every other epoch backwards: it starts with the blocks the last one ended with
            for part in rounds if epoch % 2 else rounds[::-1]:
                if moving:
                    entities.localize(blocks.keys(*part.blocks))
                shuffled = part.triples[rng.permutation(len(part.triples))]
                loss += block_round(entities, relations, model, blocks, part.blocks, shuffled, config, rng)
                ps.barrier()  # the next round hands these blocks to other workers
        else:
            shuffled = mine[rng.permutation(len(mine))]
            loss = localize_ahead_epoch(entities, relations, model, shuffled, config, moving)
        seconds, mean_loss = progress.end_epoch(loss, len(mine))
        quality: dict[str, float] = {}
        ranked_in = 0.0
        if epoch % config.eval_every == 0 or epoch == config.epochs:  # every worker alike
            started = time.perf_counter()
            sums = progress.reducer.sum(_evaluate(entities, relations, model, my_test, known, num_e))
            quality, ranked_in = ranking_report(sums), time.perf_counter() - started
        progress.report(epoch, seconds, mean_loss, quality, ranked_in)
    if len(hot):
        entities.replicate([])  # flushed; the table is as the job declared it for whatever runs next
    if replicated:
        relations.replicate([])
    progress.write(config.report, asdict(config))
    return [r.to_dict() for r in progress.reports]


def hot_entities(triples: Any, num_e: int, hot: float) -> Any:
    """The ``hot`` entities (a count, or a fraction of all entities below 1) that appear in
    the most training triples; every worker computes the same set from the same data."""
    degree = np.bincount(triples[:, 0], minlength=num_e) + np.bincount(triples[:, 2], minlength=num_e)
    return common.most_frequent(degree, hot)


# Scores of one chunk of test queries against one slice of the entities are at most this
# many bytes (256 queries against 5 million entities would be 5 GB at once), and a slice is at
# most ENTITY_ROWS rows: a worker ranks against the whole table without ever holding it.
SCORE_BYTES = 64 << 20
MAX_QUERIES_PER_CHUNK = 256
ENTITY_ROWS = 20_000


def queries_per_chunk(num_e: int, itemsize: int) -> int:
    """Test triples scored together against ``num_e`` entities: each of their two score
    matrices (tails, heads: queries x entities) stays within :data:`SCORE_BYTES`."""
    return max(1, min(MAX_QUERIES_PER_CHUNK, SCORE_BYTES // max(1, num_e * itemsize)))


def _evaluate(entities: Any, relations: Any, model: Model, test: Any, known: KnownTriples, num_e: int) -> Any:
    """Filtered ranking sums of this worker's test triples (tail and head prediction),
    ranked against one slice of the entities at a time (:func:`metrics.higher_counts`)."""
    if not len(test):
        return np.zeros(5)
    h, r, t = test[:, 0], test[:, 1], test[:, 2]
    heads, tails = (
        common.pull_in_chunks(entities, h, ENTITY_ROWS),
        common.pull_in_chunks(entities, t, ENTITY_ROWS),
    )
    rels = relations.pull(r)
    tail_query, head_query = model.tail_query(heads, rels), model.head_query(rels, tails)
    mine_tail = np.einsum("ij,ij->i", tail_query, tails)  # each target's own score
    mine_head = np.einsum("ij,ij->i", head_query, heads)
    rows = min(num_e, ENTITY_ROWS)
    parts = common.chunks(len(test), queries_per_chunk(rows, heads.dtype.itemsize))
    answers = [(known.answers(False, h[q], r[q]), known.answers(True, t[q], r[q])) for q in parts]
    higher_tail = np.zeros(len(test), dtype=np.int64)
    higher_head = np.zeros(len(test), dtype=np.int64)
    for piece in common.chunks(num_e, rows):
        block = entities.pull(np.arange(piece.start, piece.stop)).T
        for q, (tail_known, head_known) in zip(parts, answers, strict=True):
            higher_tail[q] += higher_counts(
                tail_query[q] @ block, piece.start, mine_tail[q], t[q], tail_known
            )
            higher_head[q] += higher_counts(
                head_query[q] @ block, piece.start, mine_head[q], h[q], head_known
            )
    return np.add(rank_sums(higher_tail + 1.0), rank_sums(higher_head + 1.0))


def parse(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m dynaps.apps.kge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    launching.add_common_arguments(parser, epochs=5, batch=256, lr=0.1, adagrad=True)
    parser.add_argument("--model", choices=sorted(MODELS), default="complex", help="default complex")
    parser.add_argument(
        "--dim", type=positive_int, default=32, help="embedding size (ComplEx: complex numbers)"
    )
    parser.add_argument(
        "--neg", type=positive_int, default=4, help="negatives per positive and side (default 4)"
    )
    parser.add_argument(
        "--reg", type=non_negative_float, default=1e-4, help="L2 regularisation (default 1e-4)"
    )
    parser.add_argument(
        "--ahead", type=non_negative_int, default=2, help="localize entities this many batches ahead"
    )
    parser.add_argument(
        "--clustering",
        choices=["entities", "relations"],
        default="entities",
        help="how work is split over workers: 'entities' (the default: entity blocks, rounds in "
        "which no two workers share an entity, negatives from the round's blocks, relations "
        "replicated; dynaps/apps/kge_blocks.py) or 'relations' (Lapse's: each worker trains its "
        "relations' triples, entities localized --ahead minibatches early, negatives through "
        "--neg-strategy)",
    )
    parser.add_argument(
        "--neg-strategy",
        choices=["naive", "preloc", "pool", "onlylocal"],
        default="pool",
        help="sampling strategy for negatives under dynamic allocation (default pool)",
    )
    parser.add_argument(
        "--pool-group", type=positive_int, default=4096, help="pool: draws per group (default 4096)"
    )
    parser.add_argument("--pool-reuse", type=positive_int, default=4, help="pool: uses per draw (default 4)")
    parser.add_argument(
        "--hot-keys",
        type=count_or_fraction,
        default=0.0,
        metavar="N",
        help="dynamic: replicate the N most frequent entities (a fraction of them if N < 1) "
        "in every worker instead of relocating them (default 0: none; on the synthetic graph "
        "replication cost more CPU than it saved, see bench/README.md)",
    )
    parser.add_argument(
        "--hot-sync-ms",
        type=sync_ms,
        default=20.0,
        help="hot keys (and relations under --clustering entities): milliseconds between "
        "flushes (default 20)",
    )
    parser.add_argument(
        "--eval-triples", type=non_negative_int, default=1000, help="test triples ranked per epoch (0: all)"
    )
    parser.add_argument(
        "--eval-every",
        type=positive_int,
        default=1,
        metavar="N",
        help="rank the test triples after every N-th epoch and the last (default 1: every "
        "epoch); each ranking pulls every entity into every worker",
    )
    data = parser.add_argument_group("data", "tab-separated triples, or a synthetic graph (the default)")
    data.add_argument("--train", metavar="TSV", help="training triples head<TAB>relation<TAB>tail")
    data.add_argument("--valid", metavar="TSV", help="validation triples (used for filtering)")
    data.add_argument("--test", metavar="TSV", help="test triples")
    data.add_argument(
        "--entities", type=positive_int, default=5_000, help="synthetic: entities (default 5000)"
    )
    data.add_argument("--relations", type=positive_int, default=50, help="synthetic: relations (default 50)")
    data.add_argument(
        "--triples", type=positive_int, default=100_000, help="synthetic: triples (default 100000)"
    )
    launching.add_launch_arguments(parser)
    args = parser.parse_args(argv)
    if bool(args.train) != bool(args.test):
        parser.error("give both --train and --test (and optionally --valid), or neither")
    fields = {f: getattr(args, f) for f in Config.__dataclass_fields__ if hasattr(args, f)}
    return Config(**fields), args


def main(argv: list[str] | None = None) -> int:
    config, args = parse(argv)
    return launching.launch("kge", config, args)


if __name__ == "__main__":
    sys.exit(main())
