"""How far the workers' training programs are, as the coordinator answers them.

Barriers that pass, the slowest clock published under bounded staleness, stages that begin
and the worker counts they set.  :mod:`dynaps.coordinator.barriers` and
:mod:`dynaps.coordinator.stages` decide, purely; this part sends what they decide to the
programs and applies the stages' worker counts to the roster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dynaps.contract import ConsistencyModel
from dynaps.coordinator.barriers import Barriers, MinClock
from dynaps.coordinator.outbox import Send
from dynaps.coordinator.roster import Member, MemberState, Roster
from dynaps.coordinator.stages import Stages
from dynaps.wire import control
from dynaps.wire.protocol import MsgType, client_of, node_of

log = logging.getLogger(__name__)


class Progress:
    """The coordinator's answers to the programs' BARRIER, CLOCK and STAGE.

    ``running`` says whether the job runs: while it is adopted after a coordinator restart,
    not every worker is known yet, and nothing may pass.
    """

    def __init__(
        self,
        roster: Roster,
        send: Send,
        barriers: Barriers,
        min_clock: MinClock,
        stages: Stages,
        consistency: ConsistencyModel,
        running: Callable[[], bool],
    ) -> None:
        self.roster = roster
        self.send = send
        self.barriers = barriers
        self.min_clock = min_clock
        self.stages = stages
        self.consistency = consistency
        self.running = running

    def check_barrier(self) -> None:
        if not self.running():
            return  # while adopting, not every worker is known yet
        running = [client_of(m.id) for m in self.roster.workers_running() if m.state != MemberState.DRAINING]
        passed, released = self.barriers.settle(running)
        if released:
            log.debug("barrier %d passed: releasing clients %s", passed, released)
        for endpoint in released:
            if self.roster.get(node_of(endpoint)) is not None:
                self.send(endpoint, MsgType.BARRIER_DONE, control.Barrier(generation=passed))

    def settle_stages(self) -> None:
        """Count the stage units every staying program completed, move to the next stage (its
        worker count), and answer the programs that may go on or must leave
        (:mod:`dynaps.coordinator.stages`)."""
        stages = self.stages
        if not stages.active or not self.running():
            return
        workers = self.roster.workers_running()
        running = {client_of(m.id): m.id for m in workers}
        draining = {m.id for m in workers if m.state == MemberState.DRAINING}
        staying = {c for c, node in running.items() if node not in draining and node not in stages.leaving}
        drains: list[int] = []
        if stages.complete(staying):
            drains = self._begin_stage()
        self._grow_for_stage()
        for endpoint, answer in stages.release(running, draining):
            self.send(endpoint, MsgType.STAGE_DONE, answer)
        # after the answers: a leaving program learns it from its answer, then its node drains
        for node in drains:
            self.send(node, MsgType.DRAIN, control.Drain(reason="the next stage has fewer workers"))

    def _begin_stage(self) -> list[int]:
        """A new stage begins: fewer workers are wanted at once (the surplus leave, the highest
        ranks first); more once nobody drains any more (:meth:`_grow_for_stage`)."""
        stage = self.stages.current()
        assert stage is not None
        log.info("stage %d (%s) begins: %d workers", self.stages.index(), stage.name, stage.workers)
        if stage.workers >= self.roster.desired["worker"]:
            return []
        surplus = self.roster.want("worker", stage.workers)
        self.stages.leaving.update(m.id for m in surplus)
        return [m.id for m in surplus]

    def _grow_for_stage(self) -> None:
        stage = self.stages.current()
        if stage is None or stage.workers <= self.roster.desired["worker"] or not self.stages.at_start():
            return
        workers = self.roster.active("worker")
        if any(m.state == MemberState.DRAINING or m.id in self.stages.leaving for m in workers):
            return  # they still count as present: the newcomers would be refused
        log.info("stage %s wants %d workers: waiting for them to join", stage.name, stage.workers)
        self.roster.want("worker", stage.workers)

    def tell_min_clock(self, member: Member) -> None:
        """The slowest clock again, to ``member``'s program alone (it asked again)."""
        if self.consistency != ConsistencyModel.ASYNC:
            self.send(client_of(member.id), MsgType.CLOCK_MIN, control.Clock(clock=self.min_clock.value))

    def publish_min_clock(self) -> None:
        if self.consistency == ConsistencyModel.ASYNC:
            return
        running = self.roster.workers_running()
        if self.min_clock.advance(m.clock for m in running):
            for member in running:
                self.send(client_of(member.id), MsgType.CLOCK_MIN, control.Clock(clock=self.min_clock.value))
