"""Sparse logistic regression with a server-side AdaGrad: the classic parameter-server workload.

One table, ``weights`` (a row of one value per feature), with an ``adagrad`` updater:
workers pull the weights of their minibatch's features, compute the log-loss gradient
and push it; whoever owns a feature takes the AdaGrad step.  Popular features are used
by every worker, so most of the model cannot be made local; with ``--allocation
dynamic`` each worker localizes only the features that no other worker's data contains.

Quality: log loss and AUC on held-out examples.

    python -m dynaps.apps.lr --epochs 5
    python -m dynaps.apps.lr --train a.libsvm --test b.libsvm
    dynaps run examples/lr.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dynaps.apps import common, launching, reporting, synthetic
from dynaps.apps.arguments import positive_int
from dynaps.apps.data import SparseExamples, read_libsvm
from dynaps.apps.metrics import auc, log_loss_sum
from dynaps.contract import TableSpec, UpdaterKind, UpdaterSpec


@dataclass(frozen=True)
class Config:
    allocation: str = "dynamic"
    epochs: int = 5
    batch: int = 500
    lr: float = 0.1  # AdaGrad, applied by the owner of each feature
    seed: int = 0
    train: str | None = None  # libsvm files; synthetic data when absent
    test: str | None = None
    features: int = 100_000
    examples: int = 200_000
    nonzeros: int = 20
    report: str | None = None
    quiet: bool = False


_DATA: dict[tuple[Any, ...], tuple[SparseExamples, SparseExamples]] = {}


def load(config: Config) -> tuple[SparseExamples, SparseExamples]:
    key = (config.train, config.test, config.features, config.examples, config.nonzeros, config.seed)
    if key not in _DATA:
        if config.train:
            train = read_libsvm(config.train)
            test = read_libsvm(config.test, train.num_features) if config.test else train.rows(np.arange(0))
            train.num_features = test.num_features = max(train.num_features, test.num_features)
        else:
            every = synthetic.sparse_classification(
                config.examples, config.features, nonzeros=config.nonzeros, seed=config.seed
            )
            cut = len(every) * 9 // 10
            train, test = every.rows(np.arange(cut)), every.rows(np.arange(cut, len(every)))
        _DATA.clear()
        _DATA[key] = (train, test)
    return _DATA[key]


def tables(config: Config, features: int | None = None) -> dict[str, TableSpec]:
    if features is None:
        features = load(config)[0].num_features if config.train else config.features
    adagrad = UpdaterSpec(kind=UpdaterKind.ADAGRAD, lr=config.lr)
    return {"weights": TableSpec(num_keys=features, dim=1, updater=adagrad), **reporting.metrics_table()}


def train(ps: common.PSLike, config: Config) -> list[dict[str, Any]]:
    data, test = load(config)
    weights = common.check_table(ps, "weights", data.num_features, 1, gradients=True, lr=config.lr)
    progress = reporting.Progress(ps, "lr", config.epochs, config.quiet)
    moving = common.dynamic(ps, config.allocation)
    me, workers = ps.rank, ps.num_workers
    owner = np.arange(len(data)) * workers // len(data)  # contiguous shares of the examples
    mine = data.rows(np.flatnonzero(owner == me))
    progress.note(
        f"{len(data):,} training and {len(test):,} test examples, {data.num_features:,} features, "
        f"{workers} workers, allocation {'dynamic' if moving else 'static'}"
    )
    if moving:
        # features that only this worker's examples contain: nobody else will ask for them
        row_owner = np.repeat(owner, np.diff(data.indptr))
        users = np.zeros((workers, data.num_features), dtype=bool)
        users[row_owner, data.indices] = True
        exclusive = np.flatnonzero(users[me] & (users.sum(axis=0) == 1))
        weights.localize(exclusive)
    ps.barrier()

    rng = np.random.default_rng([config.seed, 13, me])
    for epoch in range(1, config.epochs + 1):
        progress.start_epoch()
        order = rng.permutation(len(mine))
        loss = 0.0
        for part in common.chunks(len(order), config.batch):
            loss += _step(weights, mine.rows(order[part]))
        seconds, mean_loss = progress.end_epoch(loss, len(mine))
        started = time.perf_counter()
        quality = _evaluate(weights, test) if me == 0 else {}
        progress.report(epoch, seconds, mean_loss, quality, time.perf_counter() - started)
        ps.barrier()
    progress.write(config.report, asdict(config))
    return [r.to_dict() for r in progress.reports]


def _margins(weights: Any, block: SparseExamples) -> tuple[Any, Any, Any, Any]:
    """Scores of a CSR block: (margin per example, unique features, their index, example of each nonzero)."""
    features, index = np.unique(block.indices, return_inverse=True)
    w = weights.pull(features)[:, 0].astype(np.float64)
    row = np.repeat(np.arange(len(block)), np.diff(block.indptr))
    margin = np.bincount(row, weights=block.values * w[index], minlength=len(block))
    return margin, features, index, row


def _step(weights: Any, block: SparseExamples) -> float:
    margin, features, index, row = _margins(weights, block)
    p = 1.0 / (1.0 + np.exp(-np.clip(margin, -30, 30)))
    grad = np.bincount(index, weights=(p - block.labels)[row] * block.values, minlength=len(features))
    weights.push(features, grad[:, None].astype(np.float32))
    return log_loss_sum(p, block.labels)


def _evaluate(weights: Any, test: SparseExamples) -> dict[str, float]:
    if not len(test):
        return {}
    margin = np.concatenate(
        [
            _margins(weights, test.rows(np.arange(p.start, p.stop)))[0]
            for p in common.chunks(len(test), 20_000)
        ]
    )
    p = 1.0 / (1.0 + np.exp(-np.clip(margin, -30, 30)))
    return {"test log loss": log_loss_sum(p, test.labels) / len(test), "AUC": auc(margin, test.labels)}


def parse(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m dynaps.apps.lr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    launching.add_common_arguments(parser, epochs=5, batch=500, lr=0.1, adagrad=True)
    data = parser.add_argument_group("data", "libsvm files, or synthetic examples (the default)")
    data.add_argument("--train", metavar="LIBSVM", help="training examples")
    data.add_argument("--test", metavar="LIBSVM", help="held-out examples")
    data.add_argument(
        "--features", type=positive_int, default=100_000, help="synthetic: features (default 100000)"
    )
    data.add_argument(
        "--examples", type=positive_int, default=200_000, help="synthetic: examples (default 200000)"
    )
    data.add_argument(
        "--nonzeros", type=positive_int, default=20, help="synthetic: features per example (default 20)"
    )
    launching.add_launch_arguments(parser)
    args = parser.parse_args(argv)
    fields = {f: getattr(args, f) for f in Config.__dataclass_fields__ if hasattr(args, f)}
    return Config(**fields), args


def main(argv: list[str] | None = None) -> int:
    config, args = parse(argv)
    return launching.launch("lr", config, args)


if __name__ == "__main__":
    sys.exit(main())
