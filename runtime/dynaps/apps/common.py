"""What every training app shares: the worker-API protocol, the checks of its tables, and
helpers to split keys and work (reductions and progress: dynaps.apps.reporting; arguments
and where an app runs: dynaps.apps.launching).

The apps run against anything that looks like ``dynaps.connect()``'s result
(:class:`PSLike`): a real job, or :class:`dynaps.apps.inprocess.InProcessPS`, the
single-process numpy baseline that runs the *same* training code without a parameter
server.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dynaps.contract import Allocation, Partition, UpdaterKind
from dynaps.errors import UsageError
from dynaps.store.shardmap import balanced_homes, shard_key_range

Array = npt.NDArray[Any]
Keys = npt.NDArray[np.int64]


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
