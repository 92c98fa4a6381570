"""The job's stages as a training program sees them: ``for stage, unit in ps.stages(): ...``.

Each iteration is one unit (an epoch or a step) of the stage the job is in; when the program
asks for the next, it reports the unit complete to the coordinator and waits until every
worker of the stage completed it (:mod:`dynaps.coordinator.stages` decides).  At a stage's
end the job changes its worker count: a worker that is not in the next stage sees the
iteration end (so does one drained otherwise), and its program returns normally; a worker
that joins starts at the unit the job is at.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dynaps.client import asking
from dynaps.client.requests import Requests
from dynaps.contract import StageSpec, StageUnit
from dynaps.errors import UsageError
from dynaps.wire import control, messages
from dynaps.wire.protocol import COORDINATOR, MsgType


@dataclass(frozen=True)
class Stage:
    """One stage of ``spec.stages`` as the program runs it."""

    name: str
    index: int  # in spec.stages
    unit: StageUnit  # what one iteration is: an epoch or a step
    length: int  # units the stage runs
    workers: int  # the stage's worker count
    offset: int  # units of the stages before it: ``offset + unit`` numbers a unit over the job


class StageFollower:
    """This program's place in the job's stages, and its reports to the coordinator."""

    def __init__(self, requests: Requests, specs: list[StageSpec]) -> None:
        self._requests = requests
        self._specs = specs
        self._offsets = [sum(s.length for s in specs[:i]) for i in range(len(specs))]
        self._answer: control.StageDone | None = None
        self._asked: control.Stage | None = None  # the report awaiting its answer
        self.current: Stage | None = None

    def stage(self, index: int) -> Stage:
        spec = self._specs[index]
        return Stage(spec.name, index, StageUnit(spec.unit), spec.length, spec.workers, self._offsets[index])

    def units(self, timeout: float | None = None) -> Iterator[tuple[Stage, int]]:
        if not self._specs:
            raise UsageError("ps.stages() needs a job with stages: declare spec.stages in the manifest")
        answer = self._ask(None, timeout)
        while answer is not None and not answer.leave and answer.index < len(self._specs):
            stage = self.current = self.stage(answer.index)
            yield stage, answer.done - stage.offset
            answer = self._ask(answer.done + 1, timeout)
        self.current = None

    def _ask(self, done: int | None, timeout: float | None) -> control.StageDone | None:
        """Report ``done`` units complete and wait for the job's answer; None when this
        worker's node drains (the program is to stop); ClusterError if it was declared lost."""
        requests = self._requests
        if requests.control[0]:
            if requests.own.fenced:
                requests.stopped()
            return None
        requests.wait_all(timeout)  # what this unit sent is applied before it counts as complete
        deadline = requests.deadline(timeout)
        body = control.Stage(done=done)
        self._answer, self._asked = None, body
        requests.transport.send(COORDINATOR, messages.control(MsgType.STAGE, requests.endpoint, body))
        try:
            # a unit waits for the slowest worker, and a stage's start for new workers
            asking.wait_for_answer(
                requests,
                lambda: self._answer is not None,  # set by answered(), as the reply is handled
                deadline,
                lambda: f"the end of stage unit {done}",
                self.repeat,
            )
        finally:
            self._asked = None
        return self._answer

    def answered(self, answer: control.StageDone) -> None:
        if self._asked is not None:
            self._answer = answer

    def repeat(self) -> None:
        """The coordinator restarted: report again what waits for an answer."""
        if self._asked is not None:
            requests = self._requests
            frames = messages.control(MsgType.STAGE, requests.endpoint, self._asked)
            requests.transport.send(COORDINATOR, frames)
