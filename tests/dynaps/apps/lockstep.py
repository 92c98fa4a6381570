"""Several workers of an app in one process, taking turns in a fixed order: a deterministic
multi-worker baseline for tests.

Each worker is a thread with its own :class:`LockstepPS` (its rank, the shared tables of
one :class:`dynaps.apps.inprocess.InProcessPS`).  Only one worker runs at a time: a worker
runs until it reaches a barrier (or returns), then hands the turn to the next rank, and the
last rank to arrive hands it back to the first.  So between two barriers the workers run
one after another in rank order, every float operation on a shared table happens in the
same order in every run, and two computations that should take the same steps can be
compared bit for bit (a LocalCluster adds the metrics from the workers in whatever order
they arrive).  Every table also records which keys each worker localized.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.apps.inprocess import ArrayTable, InProcessPS
from dynaps.contract import TableSpec

TURN_TIMEOUT = 60.0  # seconds one worker may wait for its turn: a deadlock fails the test


class Turns:
    """Whose turn it is, among the workers that have not returned."""

    def __init__(self, workers: int) -> None:
        self.turn = 0
        self.running = list(range(workers))
        self.changed = threading.Condition()

    def wait_for(self, rank: int) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.turn == rank, timeout=TURN_TIMEOUT):
                raise TimeoutError(f"worker {rank} waited {TURN_TIMEOUT} s for its turn")

    def pass_on(self, rank: int, finished: bool = False) -> None:
        """The next running rank after ``rank`` takes the turn (cyclically; ``rank`` itself
        when it runs alone)."""
        with self.changed:
            if finished:
                self.running.remove(rank)
            after = [r for r in self.running if r > rank]
            self.turn = (after or self.running or [-1])[0]
            self.changed.notify_all()


class RecordingTable:
    """A shared table that records the keys each worker localizes (in call order)."""

    def __init__(self, table: ArrayTable, rank: int, localized: list[tuple[int, npt.NDArray[np.int64]]]):
        self._table = table
        self._rank = rank
        self._localized = localized

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def localize(self, keys: Any, *, wait: bool = True) -> Any:
        self._localized.append((self._rank, np.asarray(keys, dtype=np.int64).copy()))
        return self._table.localize(keys, wait=wait)


class LockstepPS:
    """One worker's view of the shared tables: its rank, and barriers that take turns."""

    def __init__(self, shared: InProcessPS, turns: Turns, rank: int, workers: int, log: dict[str, Any]):
        self.rank = rank
        self.num_workers = workers
        self._shared = shared
        self._turns = turns
        self._log = log

    def table(self, name: str) -> RecordingTable:
        return RecordingTable(self._shared.table(name), self.rank, self._log.setdefault(name, []))

    def barrier(self, timeout: float | None = None) -> None:
        self._turns.pass_on(self.rank)
        self._turns.wait_for(self.rank)

    def clock(self, timeout: float | None = None) -> int:
        self.barrier()
        return self._shared.clock()

    def wait_all(self, timeout: float | None = None) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return self._shared.stats()


def run(
    train: Callable[[Any, Any], Any], tables: dict[str, TableSpec], config: Any, workers: int
) -> tuple[list[Any], dict[str, list[tuple[int, npt.NDArray[np.int64]]]]]:
    """``train(ps, config)`` on ``workers`` lockstep workers: (each rank's result, the keys
    each table was asked to localize, as (rank, keys) in call order)."""
    shared, turns = InProcessPS(tables), Turns(workers)
    localized: dict[str, Any] = {}
    results: list[Any] = [None] * workers
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            turns.wait_for(rank)
            results[rank] = train(LockstepPS(shared, turns, rank, workers, localized), config)
        except BaseException as exc:  # handed to the test's thread below
            errors.append(exc)
        finally:
            turns.pass_on(rank, finished=True)

    threads = [threading.Thread(target=worker, args=(rank,), daemon=True) for rank in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TURN_TIMEOUT * 2)
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError("a lockstep worker did not finish")
    return results, localized
