"""A keyed, delaying work queue (controller-runtime's workqueue, in asyncio).

* a key waits until it is due; adding a key that is already waiting keeps the earlier time, so
  a burst of events for one job becomes one reconcile;
* a key is handed to one worker at a time; a key added while it is being processed is queued
  again for when the worker is done, so no event is lost and no job is reconciled twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class QueueClosedError(Exception):
    """The queue was closed: workers stop."""


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._due: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._processing: set[K] = set()
        self._again: dict[K, float] = {}
        self._counter = itertools.count()
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._due)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def add(self, key: K, delay: float = 0.0) -> None:
        due = self._now() + max(delay, 0.0)
        if key in self._processing:
            self._again[key] = min(self._again.get(key, due), due)
            return
        self._schedule(key, due)

    def _schedule(self, key: K, due: float) -> None:
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._counter), key))
        self._wakeup.set()

    async def get(self) -> K:
        while True:
            if self._closed:
                raise QueueClosedError
            # Entries superseded by an earlier time for the same key are skipped here.
            while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                heapq.heappop(self._heap)
            now = self._now()
            if self._heap and self._heap[0][0] <= now:
                _due, _n, key = heapq.heappop(self._heap)
                del self._due[key]
                self._processing.add(key)
                return key
            timeout = self._heap[0][0] - now if self._heap else None
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._again:
            self._schedule(key, self._again.pop(key))

    def forget(self, key: K) -> None:
        """Drop a waiting key (its job was deleted)."""
        self._due.pop(key, None)
        self._again.pop(key, None)

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()
