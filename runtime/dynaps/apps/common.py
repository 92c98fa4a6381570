"""What every training app shares: arguments, the worker-API protocol, reductions, progress.

The apps run against anything that looks like ``dynaps.connect()``'s result
(:class:`PSLike`): a real job, or :class:`dynaps.apps.inprocess.InProcessPS`, the
single-process numpy baseline that runs the *same* training code without a parameter
server.  Scalars that all workers need (losses, metric sums) are summed through a small
table (:class:`Reducer`), so the apps work the same under ``dynaps run`` and LocalCluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dynaps.apps.arguments import non_negative_int, positive_float, positive_int
from dynaps.config import ATTACH_ENV
from dynaps.contract import Allocation, Partition, TableSpec, UpdaterKind
from dynaps.errors import DynapsError, UsageError
from dynaps.store.shardmap import balanced_homes, shard_key_range

Array = npt.NDArray[Any]
Keys = npt.NDArray[np.int64]

METRICS_TABLE = "metrics"
METRICS_DIM = 16  # the most values one reduction carries
METRICS_SLOTS = 3  # reductions rotate over three keys (see Reducer)


class TableLike(Protocol):
    name: str
    num_keys: int
    dim: int
    dtype: np.dtype[Any]

    def pull(self, keys: Any, *, wait: bool = True) -> Any: ...
    def push(self, keys: Any, updates: Any, *, wait: bool = True) -> Any: ...
    def pull_one(self, key: int, out: Array | None = None) -> Array: ...
    def push_one(self, key: int, update: Any) -> None: ...
    def set(self, keys: Any, values: Any, *, wait: bool = True) -> Any: ...
    def localize(self, keys: Any, *, wait: bool = True) -> Any: ...
    def local_mask(self, keys: Any) -> npt.NDArray[np.bool_]: ...
    def set_sampler(self, sampler: Any = None, strategy: str = "naive", **options: Any) -> None: ...
    def prepare_sample(self, n: int) -> Any: ...
    def pull_sample(self, handle: Any, k: int) -> tuple[Keys, Array]: ...
    def finish_sample(self, handle: Any) -> None: ...


class PSLike(Protocol):
    @property
    def rank(self) -> int: ...
    @property
    def num_workers(self) -> int: ...

    def table(self, name: str) -> Any: ...
    def barrier(self, timeout: float | None = None) -> None: ...
    def clock(self, timeout: float | None = None) -> int: ...
    def wait_all(self, timeout: float | None = None) -> None: ...
    def stats(self) -> dict[str, int]: ...


def metrics_table() -> dict[str, TableSpec]:
    return {METRICS_TABLE: TableSpec(num_keys=METRICS_SLOTS, dim=METRICS_DIM, dtype="float64")}


def dynamic(ps: PSLike, allocation: str) -> bool:
    """Whether this run localizes: the app's switch, and the job must allow it."""
    if allocation == Allocation.STATIC:
        return False
    config = getattr(ps, "config", None)
    if config is not None and config.allocation == Allocation.STATIC:
        if ps.rank == 0:
            print("note: the job runs with allocation static, so localize is a no-op", file=sys.stderr)
        return False
    return True


def home_starts(ps: PSLike, num_keys: int) -> list[int]:
    """Where each server's range of a table's keys begins in the job's first shard map (a
    range-partitioned table of ``num_keys``): what an app's blocks of keys line up with so
    that a block's localize asks one home.  Computed from the job's configuration, so every
    worker finds the same; empty for a hash-partitioned job or one without servers (a
    single process)."""
    config = getattr(ps, "config", None)
    if config is None or config.rebalance_policy.partition != Partition.RANGE:
        return []
    num_shards = config.rebalance_policy.num_shards
    homes = balanced_homes(num_shards, range(config.servers))
    first_shards = np.flatnonzero(np.diff(homes)) + 1
    return [shard_key_range(int(s), num_keys, num_shards)[0] for s in first_shards]


def check_table(
    ps: PSLike, name: str, num_keys: int, dim: int, *, gradients: bool = False, lr: float | None = None
) -> Any:
    """The table ``name``, after checking that the job declared it with the shape the data needs.

    ``gradients``: the app pushes raw gradients for the owner's optimiser step, so a table
    whose updater adds them would climb the loss instead of descending it, silently.
    ``lr``: the app's ``--lr``, which only the tables it declares itself (LocalCluster,
    ``--print-tables``) take; a job's tables step with their own, and rank 0 says so.
    """
    try:
        table = ps.table(name)
    except UsageError as exc:
        raise UsageError(f"{exc}; declare {{name: {name}, numKeys: {num_keys}, dim: {dim}}}") from None
    if table.num_keys < num_keys or table.dim != dim:
        raise UsageError(
            f"table {name!r} has numKeys={table.num_keys}, dim={table.dim}, but this data and these "
            f"arguments need numKeys >= {num_keys}, dim = {dim}: fix the manifest's tables or the arguments"
        )
    updater = table.updater_spec
    if gradients and updater.kind == UpdaterKind.ADD:
        raise UsageError(
            f"table {name!r} adds what is pushed (updater kind add), but this app pushes gradients for "
            f"an optimiser step on the owner: declare its updater, e.g. updater: {{kind: adagrad, lr: 0.1}} "
            f"(the app's --print-tables prints the tables it expects)"
        )
    if lr is not None and updater.kind != UpdaterKind.ADD and updater.lr != lr and ps.rank == 0:
        print(
            f"note: table {name!r} steps with its updater's lr {updater.lr:g} (the job's tables), "
            f"not --lr {lr:g}: change the manifest's updater to change the step",
            file=sys.stderr,
        )
    return table


class Reducer:
    """Sum small vectors over all workers through the metrics table.

    Call ``n`` uses key ``n % 3``: every worker pushes its part, rank 0 zeroes the key
    of call ``n + 1``, then all meet at a barrier and read the sum.  The key zeroed now
    was last read in call ``n - 2``, before every worker's push in call ``n - 1``, and
    rank 0 zeroes it before the barrier that precedes any push of call ``n + 1``: one
    barrier per reduction, and no worker can see a stale sum.
    """

    def __init__(self, ps: PSLike) -> None:
        self.ps = ps
        self.table = check_table(ps, METRICS_TABLE, METRICS_SLOTS, METRICS_DIM)
        self.calls = 0
        if ps.rank == 0:  # an earlier run in the same job may have left sums behind
            self.table.set(np.arange(METRICS_SLOTS), np.zeros((METRICS_SLOTS, METRICS_DIM)))
        ps.barrier()

    def sum(self, values: Any) -> npt.NDArray[np.float64]:
        part = np.zeros(METRICS_DIM)
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(flat) > METRICS_DIM:
            raise UsageError(f"Reducer.sum takes at most {METRICS_DIM} values, got {len(flat)}")
        part[: len(flat)] = flat
        slot = self.calls % METRICS_SLOTS
        self.calls += 1
        self.table.push([slot], part[None, :])
        if self.ps.rank == 0:
            self.table.set([(slot + 1) % METRICS_SLOTS], np.zeros((1, METRICS_DIM)))
        self.ps.barrier()
        total: npt.NDArray[np.float64] = np.asarray(self.table.pull([slot]), dtype=np.float64)[0]
        return total[: len(flat)]


class AccessMeter:
    """Keys read and written, and how many of them locally, since the last ``take``."""

    # the first three are served by this process without a message (cached: value_cache)
    FIELDS = (
        "keys_pulled_local",
        "keys_pulled_cached",
        "keys_pushed_local",
        "keys_pulled_remote",
        "keys_pushed_remote",
    )

    def __init__(self, ps: PSLike) -> None:
        self.ps = ps
        self.last = self._now()

    def _now(self) -> npt.NDArray[np.float64]:
        stats = self.ps.stats()
        return np.array([stats.get(name, 0) for name in self.FIELDS], dtype=np.float64)

    def take(self) -> npt.NDArray[np.float64]:
        """[local accesses, all accesses] since the last call."""
        now = self._now()
        delta, self.last = now - self.last, now
        return np.array([delta[:3].sum(), delta.sum()])


@dataclass
class EpochReport:
    """One line of progress: what an epoch cost and what the model is worth afterwards."""

    app: str
    epoch: int
    epochs: int
    seconds: float  # wall time of the epoch's training (rank 0, barrier to barrier)
    loss: float  # training loss over the epoch, all workers
    quality: dict[str, float] = field(default_factory=dict)  # held-out metrics
    accesses: float = 0.0  # keys pulled + pushed by all workers
    local_share: float = 0.0  # share of those served from local memory
    eval_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def keys_per_second(self) -> float:
        return self.accesses / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        quality = "  ".join(f"{name} {value:.4f}" for name, value in self.quality.items())
        extra = "  ".join(f"{name} {value:.4g}" for name, value in self.extra.items())
        parts = [
            f"[{self.app}] epoch {self.epoch}/{self.epochs}  {self.seconds:6.2f} s  loss {self.loss:.4f}",
            quality,
            f"keys/s {self.keys_per_second:,.0f}  local {100 * self.local_share:.1f}%",
            extra,
        ]
        return "  ".join(part for part in parts if part)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["keys_per_second"] = self.keys_per_second
        return doc


# Called as ``hook(phase, epoch)`` in every worker right after the barrier that starts
# ("start") or ends ("end") an epoch: bench/cpu_scaling.py reads every process's CPU there,
# so that a job's set-up and its evaluations between epochs stay out of the epoch's figure.
EPOCH_HOOKS: list[Callable[[str, int], None]] = []


class Progress:
    """Per-epoch timing, access counting and printing, identical in every app."""

    def __init__(self, ps: PSLike, app: str, epochs: int, quiet: bool = False) -> None:
        self.ps = ps
        self.app = app
        self.epochs = epochs
        self.quiet = quiet or ps.rank != 0
        self.reducer = Reducer(ps)
        self.meter = AccessMeter(ps)
        self.reports: list[EpochReport] = []
        self.started = 0.0
        self.epoch = 0  # the epoch under way (from 1), or the last one ended
        self._accesses = (0.0, 0.0)

    def note(self, text: str) -> None:
        """One line about the run (rank 0 only), before the epochs start."""
        if not self.quiet:
            print(f"[{self.app}] {text}", flush=True)

    def start_epoch(self) -> None:
        self.ps.barrier()
        self.epoch += 1
        for hook in EPOCH_HOOKS:
            hook("start", self.epoch)
        self.meter.take()
        self.started = time.perf_counter()

    def end_epoch(self, loss_sum: float, loss_count: float) -> tuple[float, float]:
        """Close the epoch's timing: (seconds, mean training loss over all workers)."""
        self.ps.barrier()
        seconds = time.perf_counter() - self.started
        for hook in EPOCH_HOOKS:
            hook("end", self.epoch)
        local, total = self.meter.take()
        summed = self.reducer.sum([loss_sum, loss_count, local, total])
        self._accesses = (float(summed[2]), float(summed[3]))
        return seconds, float(summed[0] / max(summed[1], 1.0))

    def report(
        self,
        epoch: int,
        seconds: float,
        loss: float,
        quality: dict[str, float],
        eval_seconds: float = 0.0,
        extra: dict[str, float] | None = None,
    ) -> EpochReport:
        local, total = self._accesses
        rep = EpochReport(
            self.app,
            epoch,
            self.epochs,
            seconds,
            loss,
            quality,
            total,
            float(local / total) if total else 0.0,
            eval_seconds,
            extra or {},
        )
        self.reports.append(rep)
        if not self.quiet:
            print(rep.line(), flush=True)
        publish = getattr(self.ps, "report", None)  # a job's /status (and the job's K8s status)
        if publish is not None and self.ps.rank == 0:
            publish({**quality, "loss": loss, "epoch": float(epoch), "epochs": float(self.epochs)})
        return rep

    def write(self, path: str | None, config: Any) -> None:
        if path and self.ps.rank == 0:
            doc = {"config": config, "epochs": [r.to_dict() for r in self.reports]}
            with open(path, "w", encoding="utf-8") as out:
                json.dump(doc, out, indent=2, default=str)


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


def chunks(n: int, size: int) -> list[slice]:
    return [slice(first, min(first + size, n)) for first in range(0, n, size)]


def most_frequent(counts: Any, hot: float) -> Keys:
    """The keys of the ``hot`` largest ``counts`` (a count, or a fraction of all keys below 1),
    sorted: every worker computes the same set of hot keys from the same data."""
    number = round(hot * len(counts)) if 0 < hot < 1 else int(hot)
    if number <= 0:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.argsort(-np.asarray(counts), kind="stable")[: min(number, len(counts))])


def set_in_chunks(table: Any, keys: Keys, values: Array, size: int = 50_000) -> None:
    """Assign many rows without one huge message."""
    for part in chunks(len(keys), size):
        table.set(keys[part], values[part])


def pull_in_chunks(table: Any, keys: Keys, size: int = 50_000) -> Array:
    """Read many rows without one huge message."""
    return np.concatenate([table.pull(keys[part]) for part in chunks(len(keys), size)])


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
