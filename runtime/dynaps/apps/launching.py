"""The arguments every app takes, and where an app runs: in the job that started it, in a
LocalCluster on this machine, or as the single-process numpy baseline (``--baseline``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dynaps.apps.arguments import non_negative_int, positive_float, positive_int
from dynaps.config import ATTACH_ENV
from dynaps.contract import Allocation, TableSpec
from dynaps.errors import DynapsError


def add_common_arguments(
    parser: argparse.ArgumentParser, epochs: int, batch: int, lr: float, *, adagrad: bool = False
) -> None:
    """The arguments every app takes. ``adagrad``: the tables' owners take the steps, so
    ``--lr`` is their updater's (what ``--print-tables`` declares; a job's manifest sets it)."""
    parser.add_argument(
        "--allocation",
        choices=[a.value for a in Allocation],
        default="dynamic",
        help="dynamic: localize the keys this worker is about to use (Lapse); "
        "static: never localize, the classic parameter server (default dynamic)",
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=epochs, help=f"passes over the data (default {epochs})"
    )
    parser.add_argument("--batch", type=positive_int, default=batch, help=f"minibatch size (default {batch})")
    lr_help = (
        f"AdaGrad's step size on the tables' owners (default {lr}); a job's tables take "
        "theirs from the manifest's updater"
        if adagrad
        else f"initial step size (default {lr})"
    )
    parser.add_argument("--lr", type=positive_float, default=lr, help=lr_help)
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of data generation and training (default 0)"
    )
    parser.add_argument(
        "--report", metavar="FILE", help="write every epoch's figures to FILE as JSON (rank 0)"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def print_tables(tables: dict[str, TableSpec]) -> None:
    """Print the tables an app needs, in manifest syntax (``--print-tables``)."""
    for name, spec in tables.items():
        updater = spec.updater
        extra = "" if updater.kind == "add" else f", updater: {{kind: {updater.kind}, lr: {updater.lr}}}"
        print(f"- {{name: {name}, numKeys: {spec.num_keys}, dim: {spec.dim}, dtype: {spec.dtype}{extra}}}")


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "where it runs",
        "Under `dynaps run` (or in a ParameterServerJob) the app joins that job. Started on its "
        "own, it runs a job on this machine (a LocalCluster), or the numpy baseline.",
    )
    group.add_argument("--servers", type=positive_int, default=1, help="servers of the local job (default 1)")
    group.add_argument("--workers", type=positive_int, default=2, help="workers of the local job (default 2)")
    group.add_argument(
        "--baseline", action="store_true", help="run the single-process numpy baseline instead (no PS)"
    )
    group.add_argument(
        "--print-tables",
        action="store_true",
        help="print the tables these arguments need, in manifest syntax",
    )


def launch(
    app: str, config: Any, args: argparse.Namespace, consistency: str = "async", staleness: int = 0
) -> int:
    """Run ``dynaps.apps.<app>.train(ps, config)`` in the job, a LocalCluster, or in-process.

    ``consistency`` and ``staleness`` are the local job's (a real job has its own).  A
    mistake of the user's (a file that is not there, training that diverged) is one line on
    stderr and exit code 2, as for a wrong argument; so is a local job that failed (its
    message carries the workers' own tracebacks).
    """
    try:
        return _launch(app, config, args, consistency, staleness)
    except DynapsError as exc:
        print(f"python -m dynaps.apps.{app}: error: {exc}", file=sys.stderr)
        return 2


def _launch(app: str, config: Any, args: argparse.Namespace, consistency: str, staleness: int) -> int:
    import importlib
    import os

    module = importlib.import_module(f"dynaps.apps.{app}")  # importable by LocalCluster's runners
    if args.print_tables:
        print_tables(module.tables(config))
        return 0
    if args.baseline:
        from dynaps.apps.inprocess import InProcessPS

        module.train(InProcessPS(module.tables(config)), config)
        return 0
    if os.environ.get(ATTACH_ENV):  # started by dynaps: the job declares the tables
        import dynaps

        module.train(dynaps.connect(), config)
        return 0
    from dynaps.local.cluster import LocalCluster

    print(
        f"[{app}] not started by dynaps: running on a local job with {args.servers} servers and "
        f"{args.workers} workers (allocation {config.allocation}, consistency {consistency})",
        file=sys.stderr,
        flush=True,
    )
    tables = module.tables(config)
    with LocalCluster(
        args.servers,
        args.workers,
        tables,
        allocation=config.allocation,
        consistency=consistency,
        staleness=staleness,
    ) as cluster:
        cluster.run(module.train, config)
    return 0
