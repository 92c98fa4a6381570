"""The job's stages (``spec.stages``): which one runs, when it ends, who takes part in the next.

A stage runs ``epochs`` or ``steps`` *units* with its own worker count (FlexPS's flexible
parallelism).  Units are numbered over all stages; the coordinator counts ``done``, the units
every running program completed.  A program reports each unit it completes (STAGE with its
own count) and waits for the answer (STAGE_DONE with the job's count and stage): the unit is
complete once every running worker that stays reported it, a barrier of its own.

At a stage's first unit the stage *gates*: nobody starts it before the stage's worker count
is attached.  The coordinator shrinks at once (the surplus workers are told to leave in their
answer, then drained: their programs end, their nodes hand their keys back and go) and grows
once no worker is draining any more (new workers would otherwise be refused as surplus):
the new count shows in ``/status`` (``workers.desired``), and ``dynaps run`` or the operator
starts the workers.  A worker that joins asks where the job is and starts at the current unit.

A restarted coordinator learns ``done`` again from the programs' repeated reports (a program
that completed ``n`` units proves that ``n - 1`` were complete).  Everything here is pure: the
coordinator sends what it returns and applies the worker counts.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Set
from typing import Any

from dynaps.contract import StageSpec
from dynaps.wire.control import StageDone


class Stages:
    def __init__(self, stages: list[StageSpec]) -> None:
        self.specs = list(stages)
        # units before each stage, and the total: stage i runs units [starts[i], starts[i + 1])
        self.starts = [0, *itertools.accumulate(stage.length for stage in self.specs)]
        self.total = self.starts[-1]
        self.done = 0  # units every running program completed, over all stages
        self.reached: dict[int, int] = {}  # client endpoint -> units it reported complete
        self.waiting: set[int] = set()  # clients whose latest report is not yet answered
        self.leaving: set[int] = set()  # worker node ids told to leave at a stage's start

    @property
    def active(self) -> bool:
        return bool(self.specs)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def index(self) -> int:
        """The stage the job is in (``len(specs)`` once every stage ran)."""
        return bisect.bisect_right(self.starts, self.done) - 1 if not self.finished else len(self.specs)

    def current(self) -> StageSpec | None:
        index = self.index()
        return self.specs[index] if index < len(self.specs) else None

    def at_start(self) -> bool:
        """The job stands at the first unit of a stage (where the stage's workers gather)."""
        return not self.finished and self.done == self.starts[self.index()]

    def reach(self, client: int, done: int | None) -> None:
        """``client`` completed ``done`` units (None: it starts, and is where the job is)."""
        if done is None:
            done = self.done
        else:
            done = min(done, self.total)
            # it could complete unit done - 1 only after unit done - 2 was complete everywhere
            self.done = max(self.done, done - 1)
        self.reached[client] = max(self.reached.get(client, 0), done)
        self.waiting.add(client)

    def complete(self, staying: Set[int]) -> bool:
        """Count the units every staying client (endpoints) completed; True when that began a
        new stage (the caller applies its worker count)."""
        before = self.index()
        while staying and not self.finished and all(self.reached.get(c, -1) > self.done for c in staying):
            self.done += 1
        return self.index() != before and not self.finished

    def gate_open(self, staying: int) -> bool:
        """Whether the programs may go on: within a stage always, at its start once ``staying``
        workers are at least the stage's count."""
        stage = self.current()
        return stage is None or not self.at_start() or staying >= stage.workers

    def release(self, running: Mapping[int, int], draining: Set[int]) -> list[tuple[int, StageDone]]:
        """The answers due now: ``running`` maps the attached programs' endpoints to their
        nodes, ``draining`` are nodes that leave (told by a stage, or drained otherwise)."""
        leaving = self.leaving | draining
        staying = sum(1 for node in running.values() if node not in leaving)
        open_ = self.gate_open(staying)
        answers = []
        for client in sorted(self.waiting):
            node = running.get(client)
            if node is None:
                self.waiting.discard(client)  # its program ended or its node went
            elif node in leaving:
                answers.append((client, StageDone(done=self.done, index=self.index(), leave=True)))
            elif self.reached.get(client, 0) <= self.done and open_:
                answers.append((client, StageDone(done=self.done, index=self.index())))
        self.waiting.difference_update(client for client, _ in answers)
        return answers

    def status(self) -> dict[str, Any]:
        """``stage`` of /status: the current stage (the last one, complete, once all ran)."""
        index = min(self.index(), len(self.specs) - 1)
        stage = self.specs[index]
        done = min(self.done - self.starts[index], stage.length)
        return {
            "name": stage.name,
            "index": index,
            "count": len(self.specs),
            "unit": str(stage.unit),
            "done": done,
            "length": stage.length,
            "workers": stage.workers,
            "completed": self.done,
            "total": self.total,
            "finished": self.finished,
            "progress": f"{done}/{stage.length} {stage.unit}",
        }
