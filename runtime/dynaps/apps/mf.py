"""Matrix factorisation: SGD with L2 and a bold-driver step size, DSGD parameter blocking.

Learns ``rows`` (R x rank) and ``cols`` (C x rank) so that ``rows[i] . cols[j]``
approximates each observed entry.  Rows and columns are split into one block per worker
(balanced by popularity, then renumbered so that each block is one range of ids); in
sub-epoch ``s`` worker ``w`` trains on the entries of row block ``w`` and column block
``(w + s) mod W``, so no two workers touch the same parameters at once (DSGD).  With
``--allocation dynamic`` each worker localizes its row block once and the column block at
the start of every sub-epoch: every access during training is local.  With ``static`` the
parameters stay on the servers (a classic PS); ``--cache`` then reads each parameter from
the servers once per sub-epoch (a barrier ends each clock of the per-clock cache, and no
other worker touches the block meanwhile).

After each epoch: test RMSE on held-out entries, and the bold driver (step size x1.05
if the training loss fell, x0.5 if it rose).

    python -m dynaps.apps.mf --epochs 5                      # a local job, synthetic data
    python -m dynaps.apps.mf --train m.mtx --test t.mtx --rank 16
    dynaps run examples/mf.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dynaps.apps import common, launching, reporting, synthetic
from dynaps.apps.arguments import non_negative_float, non_negative_int, positive_int
from dynaps.apps.data import Entries, matrix_market_shape, read_matrix_market
from dynaps.apps.metrics import squared_error
from dynaps.apps.partition import balanced_ranges, contiguous_order
from dynaps.contract import TableCache, TableSpec
from dynaps.errors import UsageError


@dataclass(frozen=True)
class Config:
    allocation: str = "dynamic"
    epochs: int = 10
    batch: int = 1000
    lr: float = 0.05
    reg: float = 0.01  # L2 weight, applied per observed entry
    rank: int = 32
    seed: int = 0
    train: str | None = None  # MatrixMarket files; synthetic data when absent
    test: str | None = None
    rows: int = 20_000
    cols: int = 20_000
    entries: int = 2_000_000
    test_entries: int = 50_000
    noise: float = 0.1
    zipf: float = 1.0
    bold_driver: bool = True
    cache: bool = False  # cache: clock on both tables (a sub-epoch's barrier ends each clock)
    report: str | None = None
    quiet: bool = False


_DATA: dict[Config, tuple[Entries, Entries]] = {}  # per process: LocalCluster runs reuse it


def load(config: Config) -> tuple[Entries, Entries]:
    key = Config(**{**asdict(config), "allocation": "", "epochs": 0, "report": None, "quiet": False})
    if key not in _DATA:
        if config.train:
            train = read_matrix_market(config.train)
            test = read_matrix_market(config.test) if config.test else train.subset(slice(0, 0))
        else:
            train, test = synthetic.matrix(
                config.rows,
                config.cols,
                config.rank,
                config.entries,
                test_entries=config.test_entries,
                noise=config.noise,
                zipf=config.zipf,
                seed=config.seed,
            )
        _DATA.clear()  # one data set at a time: benchmarks run many sizes in one process
        _DATA[key] = (train, test)
    return _DATA[key]


def tables(config: Config, shape: tuple[int, int] | None = None) -> dict[str, TableSpec]:
    rows, cols = shape or (config.rows, config.cols)
    if shape is None and config.train:
        rows, cols = matrix_market_shape(config.train)
    cache = TableCache.CLOCK if config.cache else TableCache.NONE
    return {
        "rows": TableSpec(num_keys=rows, dim=config.rank, cache=cache),
        "cols": TableSpec(num_keys=cols, dim=config.rank, cache=cache),
        **reporting.metrics_table(),
    }


def train(ps: common.PSLike, config: Config) -> list[dict[str, Any]]:
    """Run the training in this worker; returns every epoch's report (the same on all workers)."""
    data, test = load(config)
    rows = common.check_table(ps, "rows", data.rows, config.rank)
    cols = common.check_table(ps, "cols", data.cols, config.rank)
    progress = reporting.Progress(ps, "mf", config.epochs, config.quiet)
    moving = common.dynamic(ps, config.allocation)
    workers, me = ps.num_workers, ps.rank

    # DSGD blocks, balanced by popularity (every worker computes the same split), then the
    # ids renamed so that each block is one range of keys: a range-partitioned table's homes
    # own ranges too, so a block's localize and pulls reach one home (the blocks' bounds
    # are moved onto the homes' where near), not all of them (docs/apps.md, "DSGD blocks
    # are key ranges").  The steps do not change.
    row_weight = np.bincount(data.row, minlength=data.rows)
    col_weight = np.bincount(data.col, minlength=data.cols)
    row_part = balanced_ranges(row_weight, workers, common.home_starts(ps, data.rows))
    col_part = balanced_ranges(col_weight, workers, common.home_starts(ps, data.cols))
    row_order, col_order = contiguous_order(row_part), contiguous_order(col_part)
    # only this worker's entries are renamed: every worker pays for its own part
    mine = data.subset(row_part[data.row] == me).renumbered(row_order, col_order)
    my_test = test.subset(row_part[test.row] == me).renumbered(row_order, col_order)
    row_part, col_part = row_part[row_order], col_part[col_order]  # by new id from here on
    block_of = col_part[mine.col]
    blocks = [mine.subset(block_of == b) for b in range(workers)]
    col_keys = [np.flatnonzero(col_part == b) for b in range(workers)]
    progress.note(
        f"{len(data):,} training and {len(test):,} test entries of a {data.rows:,} x {data.cols:,} matrix, "
        f"rank {config.rank}, {workers} workers, allocation {'dynamic' if moving else 'static'}"
    )

    if me == 0:  # the same start for every variant, whatever the manifest's init says
        init = np.random.default_rng([config.seed, 7])
        # drawn in the original ids' order, stored under the new ids: the same start
        start_rows = init.normal(0, 0.1, (data.rows, config.rank))
        start_cols = init.normal(0, 0.1, (data.cols, config.rank))
        common.set_in_chunks(rows, np.arange(data.rows), start_rows[row_order])
        common.set_in_chunks(cols, np.arange(data.cols), start_cols[col_order])
    ps.barrier()
    if moving:
        rows.localize(np.flatnonzero(row_part == me))

    rng = np.random.default_rng([config.seed, 8, me])
    lr, previous = config.lr, np.inf
    for epoch in range(1, config.epochs + 1):
        progress.start_epoch()
        loss = 0.0
        for sub in range(workers):
            b = (me + sub) % workers
            if moving:
                cols.localize(col_keys[b])
            loss += _sgd(rows, cols, blocks[b], config, lr, rng)
            ps.barrier()  # the next sub-epoch hands this column block to another worker
        seconds, mean_loss = progress.end_epoch(loss, len(mine))
        started = time.perf_counter()
        sq, count = _test_error(rows, cols, my_test)
        summed = progress.reducer.sum([sq, count])
        quality = {"test RMSE": float(np.sqrt(summed[0] / max(summed[1], 1.0)))}
        progress.report(
            epoch,
            seconds,
            float(np.sqrt(mean_loss)),
            quality,
            time.perf_counter() - started,
            {"lr": lr},
        )
        if not np.isfinite(mean_loss):
            raise UsageError(f"matrix factorisation diverged in epoch {epoch} (lr {lr:g}): lower --lr")
        if config.bold_driver:
            lr = bold_driver(lr, mean_loss, previous)
        previous = mean_loss
    progress.write(config.report, asdict(config))
    return [r.to_dict() for r in progress.reports]


def bold_driver(lr: float, loss: float, previous: float) -> float:
    """The next epoch's step size: a little larger after progress, half after a setback."""
    return lr * 1.05 if loss < previous else lr * 0.5


def _sgd(rows: Any, cols: Any, block: Entries, config: Config, lr: float, rng: np.random.Generator) -> float:
    """One pass over a block in random minibatches; returns the sum of squared errors."""
    order = rng.permutation(len(block))
    i, j, v = block.row[order], block.col[order], block.value[order].astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported by the caller
        if config.batch == 1:
            return _sgd_entries(rows, cols, i, j, v, config.reg, -lr)
        return _sgd_steps(rows, cols, i, j, v, config.batch, np.float32(config.reg), np.float32(-lr))


def _sgd_steps(rows: Any, cols: Any, i: Any, j: Any, v: Any, batch: int, reg: Any, step: Any) -> float:
    squared = 0.0
    for first in range(0, len(i), batch):
        part = slice(first, first + batch)
        r, c = i[part], j[part]
        left, right = rows.pull(r), cols.pull(c)
        error = np.einsum("nk,nk->n", left, right) - v[part]
        squared += float(error.astype(np.float64) @ error)
        rows.push(r, step * (error[:, None] * right + reg * left))
        cols.push(c, step * (error[:, None] * left + reg * right))
    return squared


def _sgd_entries(rows: Any, cols: Any, i: Any, j: Any, v: Any, reg: float, step: float) -> float:
    """``_sgd_steps`` with one entry per step (``--batch 1``, Lapse's granularity).

    On rows of one entry numpy's fixed cost per call is all the cost, so this takes as few
    calls as it can: keys go in as Python ints (``pull_one``/``push_one``), the row and the
    column are pulled into the two rows of one array, and both gradients come from one
    product, ``[[step*reg, step*e], [step*e, step*reg]] @ [left; right]``, whose first row
    is the row's ``step * (e * right + reg * left)`` and whose second is the column's.
    """
    coef = np.full((2, 2), step * reg, dtype=np.float32)
    off_diagonal = coef.reshape(-1)  # a view: [1] and [2] are the off-diagonal entries
    # the dtype the minibatch code computes in (float32 tables: float32)
    dtype = np.result_type(rows.dtype, cols.dtype, coef.dtype)
    pair, both = np.empty((2, rows.dim), dtype), np.empty((2, rows.dim), dtype)
    left, right = pair  # views: pulls write into ``pair``
    row_step, col_step = both  # views: the product writes into ``both``
    pull_row, pull_col, push_row, push_col = rows.pull_one, cols.pull_one, rows.push_one, cols.push_one
    dot, vdot = np.dot, np.vdot
    squared = 0.0
    for r, c, target in zip(i.tolist(), j.tolist(), v.tolist(), strict=True):
        pull_row(r, left)
        pull_col(c, right)
        error = float(vdot(left, right)) - target
        squared += error * error
        off_diagonal[1] = off_diagonal[2] = step * error
        dot(coef, pair, out=both)
        push_row(r, row_step)
        push_col(c, col_step)
    return squared


def _test_error(rows: Any, cols: Any, test: Entries) -> tuple[float, float]:
    sq, count = 0.0, 0.0
    for part in common.chunks(len(test), 50_000):
        predicted = np.einsum("nk,nk->n", rows.pull(test.row[part]), cols.pull(test.col[part]))
        s, n = squared_error(predicted, test.value[part])
        sq, count = sq + s, count + n
    return sq, count


def parse(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m dynaps.apps.mf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    launching.add_common_arguments(parser, epochs=10, batch=1000, lr=0.05)
    parser.add_argument("--rank", type=positive_int, default=32, help="factor rank = table dim (default 32)")
    parser.add_argument(
        "--reg", type=non_negative_float, default=0.01, help="L2 regularisation (default 0.01)"
    )
    parser.add_argument("--no-bold-driver", action="store_true", help="keep the step size fixed")
    parser.add_argument(
        "--cache",
        action="store_true",
        help="cache remote rows per clock (cache: clock): with --allocation static each parameter "
        "is fetched once per sub-epoch instead of once per minibatch; pushes still go to the servers",
    )
    data = parser.add_argument_group("data", "MatrixMarket files, or a synthetic matrix (the default)")
    data.add_argument("--train", metavar="MTX", help="training entries (MatrixMarket coordinate)")
    data.add_argument("--test", metavar="MTX", help="held-out entries for the test RMSE")
    data.add_argument("--rows", type=positive_int, default=20_000, help="synthetic: rows (default 20000)")
    data.add_argument("--cols", type=positive_int, default=20_000, help="synthetic: columns (default 20000)")
    data.add_argument("--entries", type=positive_int, default=2_000_000, help="synthetic: training entries")
    data.add_argument(
        "--test-entries", type=non_negative_int, default=50_000, help="synthetic: held-out entries"
    )
    data.add_argument(
        "--zipf", type=non_negative_float, default=1.0, help="synthetic: popularity skew (default 1.0)"
    )
    data.add_argument(
        "--noise", type=non_negative_float, default=0.1, help="synthetic: noise std (default 0.1)"
    )
    launching.add_launch_arguments(parser)
    args = parser.parse_args(argv)
    config = Config(
        allocation=args.allocation,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        reg=args.reg,
        rank=args.rank,
        seed=args.seed,
        train=args.train,
        test=args.test,
        rows=args.rows,
        cols=args.cols,
        entries=args.entries,
        test_entries=args.test_entries,
        noise=args.noise,
        zipf=args.zipf,
        bold_driver=not args.no_bold_driver,
        cache=args.cache,
        report=args.report,
        quiet=args.quiet,
    )
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse(argv)
    return launching.launch("mf", config, args)


if __name__ == "__main__":
    sys.exit(main())
