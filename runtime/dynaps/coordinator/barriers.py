"""Keeping the workers' training programs in step: barriers and the minimum clock.

A barrier is numbered (its *generation*); a program that reaches one waits for
BARRIER_DONE.  Under bounded staleness, every program reports its clock and learns the
slowest running program's (CLOCK_MIN).  Both decisions are pure: the coordinator sends
what they return.

The minimum clock costs one integer per program and is published to every program only
when it moves, at most once per clock value: with CLOCK itself, at most two messages per
program and clock, never a message per key or per pair of programs (docs/consistency.md).
"""

from __future__ import annotations

from collections.abc import Iterable


class Barriers:
    def __init__(self) -> None:
        self.generation = 0  # the oldest barrier still open (new workers start there)
        self.reached_by: dict[int, int] = {}  # client endpoint -> the latest barrier it reached
        self.waiting: set[int] = set()  # clients whose latest barrier is not yet answered

    def reach(self, client: int, generation: int) -> None:
        self.reached_by[client] = max(self.reached_by.get(client, -1), generation)
        self.waiting.add(client)

    def reached(self, client: int) -> int:
        """The latest barrier ``client`` reached (-1: none)."""
        return self.reached_by.get(client, -1)

    def settle(self, clients: Iterable[int]) -> tuple[int, list[int]]:
        """(the barrier passed, the waiting clients it releases), given the running ``clients``.

        Barrier g is passed once every running client reached g or a later one.  Counting "g
        or later" (not "exactly g") keeps barriers right when some worker already went on
        while the others send g again (after a coordinator restart).
        """
        running = set(clients)
        if running:
            passed = min(self.reached(c) for c in running)
            self.generation = max(self.generation, passed + 1)
        passed = self.generation - 1
        released = [c for c in sorted(self.waiting) if self.reached(c) <= passed]
        self.waiting.difference_update(released)
        return passed, released


class MinClock:
    """The clock of the slowest running program, published whenever it advances."""

    def __init__(self) -> None:
        self.value = 0

    def advance(self, clocks: Iterable[int]) -> bool:
        """Whether the minimum of ``clocks`` (the running programs') moved on."""
        low = min(clocks, default=self.value)
        if low <= self.value:
            return False
        self.value = low
        return True
