"""The single-process numpy baseline: the worker API over plain arrays in this process.

An app's ``train(ps, config)`` runs unchanged on :class:`InProcessPS`: one worker, every
key local, pushes applied with the table's own updater (the same code the parameter
server runs).  That makes "the same algorithm without a parameter server" literal, and
is what benchmarks compare the distributed runs against.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.client.sampling import SamplingStrategy, make_strategy
from dynaps.contract import TableSpec
from dynaps.errors import UnknownTableError, UsageError
from dynaps.store.updaters import make_updater

Array = npt.NDArray[Any]
Keys = npt.NDArray[np.int64]


class Done:
    """An operation that completed at once (what ``wait=False`` returns here)."""

    __slots__ = ("out",)

    def __init__(self, out: Any = None) -> None:
        self.out = out

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        return self.out


class ArrayTable:
    """A table held in this process: ``num_keys x dim`` values plus the updater's state."""

    static_allocation = False  # every key is local

    def __init__(self, name: str, spec: TableSpec, counters: Counter[str]) -> None:
        self.name = name
        self.num_keys = spec.num_keys
        self.dim = spec.dim
        self.dtype = np.dtype(spec.dtype)
        self.updater = make_updater(spec.updater)
        self.updater_spec = spec.updater
        self.values = np.zeros((spec.num_keys, spec.dim), dtype=self.dtype)
        self.states = tuple(np.zeros_like(self.values) for _ in range(self.updater.num_states))
        self._counters = counters
        self._sampling: SamplingStrategy | None = None

    def _keys(self, keys: Any) -> Keys:
        array = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(array) and (array.min() < 0 or array.max() >= self.num_keys):
            raise UsageError(f"keys outside table {self.name!r}, whose keys are [0, {self.num_keys})")
        return array

    def pull(self, keys: Any, *, wait: bool = True) -> Any:
        keys = self._keys(keys)
        self._counters["keys_pulled_local"] += len(keys)
        out = self.values.take(keys, axis=0)
        return out if wait else Done(out)

    def push(self, keys: Any, updates: Any, *, wait: bool = True) -> Done | None:
        keys = self._keys(keys)
        self._counters["keys_pushed_local"] += len(keys)
        rows = np.asarray(updates, dtype=self.dtype).reshape(len(keys), self.dim)
        self.updater.apply(self.values, self.states, keys, rows)
        return None if wait else Done()

    def pull_one(self, key: int, out: Array | None = None) -> Array:
        row: Array = self.pull([key])[0]
        if out is None:
            return row
        np.copyto(out, row, casting="same_kind")
        return out

    def push_one(self, key: int, update: Any) -> None:
        self.push([key], update)

    def set(self, keys: Any, values: Any, *, wait: bool = True) -> Done | None:
        keys = self._keys(keys)
        self.values[keys] = np.asarray(values, dtype=self.dtype).reshape(len(keys), self.dim)
        return None if wait else Done()

    def localize(self, keys: Any, *, wait: bool = True) -> Done | None:
        return None if wait else Done()  # everything is local

    def replicate(self, keys: Any, *, sync_ms: float = 20.0) -> None:
        return None  # everything is local: nothing to replicate

    def local_mask(self, keys: Any) -> npt.NDArray[np.bool_]:
        return np.ones(len(self._keys(keys)), dtype=bool)

    def set_sampler(self, sampler: Any = None, strategy: str = "naive", **options: Any) -> None:
        self._sampling = make_strategy(self, sampler, strategy, **options)

    def prepare_sample(self, n: int) -> Any:
        if self._sampling is None:
            self.set_sampler()
        assert self._sampling is not None
        return self._sampling.prepare(n)

    def pull_sample(self, handle: Any, k: int) -> tuple[Keys, Array]:
        assert self._sampling is not None, "prepare_sample first"
        keys, values = self._sampling.pull(handle, k)
        return keys, values

    def finish_sample(self, handle: Any) -> None:
        if self._sampling is not None:
            self._sampling.finish(handle)


class InProcessPS:
    """``dynaps.connect()``'s interface for one worker without a parameter server."""

    rank = 0
    num_workers = 1

    def table(self, name: str) -> ArrayTable:
        table = self._tables.get(name)
        if table is None:
            raise UnknownTableError(f"no table named {name!r}; declared: {', '.join(sorted(self._tables))}")
        return table

    def __init__(self, tables: dict[str, TableSpec]) -> None:
        self.counters: Counter[str] = Counter()
        self._tables = {name: ArrayTable(name, spec, self.counters) for name, spec in tables.items()}
        self._clock = 0

    def barrier(self, timeout: float | None = None) -> None:
        return None

    def clock(self, timeout: float | None = None) -> int:
        self._clock += 1  # the only worker: never a wait, every operation already complete
        return self._clock

    def wait_all(self, timeout: float | None = None) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return dict(self.counters)
