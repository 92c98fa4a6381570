"""The coordinator: rendezvous, membership, the shard map, barriers, clocks and job end.

One per job.  Start-up is two-phase so that no data message can reach a node before it
knows who may send it:

1. servers and worker nodes REGISTER and get node ids (WELCOME);
2. when all expected nodes are there, the coordinator fixes the shard map and sends
   MEMBERSHIP(phase=prepare) to the nodes, which build their stores and answer READY;
3. the training processes (clients) REGISTER with their node id; once every node is
   READY and every worker's client is registered, MEMBERSHIP(phase=running) goes to
   everyone and training starts.

While the job runs, nodes join (a new server gets shards by migration; a new worker
joins barriers and data leases), leave (LEAVE: drain, then LEFT) or die (their
connection dropped and no HEARTBEAT followed, or they fell silent: the membership lists
them as lost, and the nodes recover their keys; one declared lost is refused if it speaks
again, and exits).  Every change is a new MEMBERSHIP version; every change of the shard
map a new epoch.  The job ends when every worker's program has exited: the coordinator
sends SHUTDOWN to every process and exits with the job's status.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from dynaps.contract import RuntimeConfig
from dynaps.coordinator import commands
from dynaps.coordinator.adoption import Adoption
from dynaps.coordinator.barriers import Barriers, MinClock
from dynaps.coordinator.checkpoint_rounds import CheckpointRounds
from dynaps.coordinator.departures import Departures
from dynaps.coordinator.http import status_document
from dynaps.coordinator.job_end import JobEnd
from dynaps.coordinator.joining import Joining
from dynaps.coordinator.leases import Leases
from dynaps.coordinator.liveness import Liveness
from dynaps.coordinator.member_messages import MemberMessages
from dynaps.coordinator.outbox import Outbox
from dynaps.coordinator.progress import Progress
from dynaps.coordinator.published_status import PublishedStatus
from dynaps.coordinator.rebuilding import Rebuilding
from dynaps.coordinator.reports import Reports
from dynaps.coordinator.roster import Member, MemberState, Roster
from dynaps.coordinator.shard_homes import ShardHomes
from dynaps.coordinator.stages import Stages
from dynaps.errors import ProtocolError
from dynaps.wire import control
from dynaps.wire.codec import decode, peek
from dynaps.wire.control import Membership
from dynaps.wire.protocol import Message, MsgType, node_of
from dynaps.wire.transport import Transport

log = logging.getLogger(__name__)


class JobPhase(enum.StrEnum):
    """The job's phase (its value is what /status and STATS_REPLY say)."""

    REGISTERING = "registering"  # waiting for the expected nodes
    ADOPTING = "adopting"  # the coordinator restarted: collecting the running job
    PREPARE = "prepare"  # the shard map is fixed; nodes build their stores
    RUNNING = "running"
    STOPPING = "stopping"  # SHUTDOWN sent


class Coordinator:
    """The job's control logic; it reaches the network only through ``transport``.

    ``clock`` (seconds, monotonic) times failure detection, adoption and periodic
    checkpoints, so that tests can drive time.
    """

    def __init__(
        self,
        config: RuntimeConfig,
        transport: Transport,
        clock: Callable[[], float] = time.monotonic,
        listen_first: float = 0.0,
    ) -> None:
        """``listen_first``: seconds a fresh coordinator holds registrations back, listening for
        the heartbeats of a running job to adopt (a replacement coordinator whose first message
        is a recreated pod's REGISTER must not mistake the job for a new one)."""
        self.config = config
        self.clock = clock
        self.listen_until = clock() + listen_first
        self.digest = control.config_digest(config)
        self.roster = Roster(config.servers, config.workers, clock)
        self.outbox = Outbox(transport, self.roster)
        self.send = self.outbox.send
        self.phase = JobPhase.REGISTERING
        self.barriers = Barriers()
        self.min_clock = MinClock()
        self.end = JobEnd(self.roster, self.outbox, config.fault_tolerance, stopped=self._stopped)
        self.started_at = time.time()
        self.homes = ShardHomes(
            config.rebalance_policy,
            config.fault_tolerance.replication,
            self.roster,
            self.send,
            num_keys=[t.num_keys for t in config.tables],
            announce=self._announce,
            in_checkpoint=lambda: self.checkpoints.in_progress,
            checkpoint_exists=lambda: self.checkpoints.recoverable,
            checkpoint_age=lambda: self.checkpoints.last_age,
            on_loss=self.end.on_data_loss,
            clock=clock,
        )
        self.liveness = Liveness.for_job(config.fault_tolerance, config.allocation, self.homes.is_home)
        # after a restart, a member no one heard from is declared lost as silence would: sooner
        # where a backup holds what it had
        replicated = config.fault_tolerance.replication > 0
        self.adoption = Adoption(
            missing_wait=self.liveness.lost_after if replicated else self.liveness.silent_node_timeout
        )
        self.checkpoints = CheckpointRounds(
            config.fault_tolerance.checkpoint,
            config.job,
            [t.to_wire() for t in config.tables],
            self.roster,
            self.send,
            epoch=lambda: self.homes.epoch,
            may_start=lambda: self.phase == JobPhase.RUNNING and self.homes.settled,
            resumed=self.homes.start_migrations,
            clock=clock,
        )
        self.leases = Leases()
        self.reports = Reports()
        self.stages = Stages(config.stages)
        self.progress = Progress(
            self.roster,
            self.send,
            self.barriers,
            self.min_clock,
            self.stages,
            config.consistency.model,
            running=lambda: self.phase == JobPhase.RUNNING,
        )
        self.departures = Departures(
            self.roster,
            self.outbox,
            self.homes,
            self.leases,
            announce=self._announce,
            settle=self._settle,
            abandon_checkpoint=self._abandon_checkpoint,
            faults=config.fault_tolerance,
        )
        self.joining = Joining(
            self.roster,
            self.outbox,
            self.homes,
            self.departures,
            self.barriers,
            self.min_clock,
            announce=self._announce,
        )
        self.rebuilding = Rebuilding(
            self.adoption, self.roster, self.outbox, self.homes, self.departures, clock
        )
        self.member_messages = MemberMessages(
            self.roster,
            self.outbox,
            self.homes,
            self.barriers,
            self.progress,
            self.departures,
            self.checkpoints,
            self.adoption,
            self.leases,
            self.reports,
            self.stages,
            phase=lambda: self.phase.value,
            adopting=lambda: self.phase is JobPhase.ADOPTING,
            membership=self.membership,
        )
        self.published = PublishedStatus(self._status_document)
        self.published.refresh()

    # ------------------------------------------------------------------ membership

    def membership(self) -> Membership:
        assert self.homes.shard_map is not None
        return self.outbox.membership(self.homes.shard_map, preparing=self.phase == JobPhase.PREPARE)

    def _announce(self, clients: bool = True) -> None:
        """A new membership version for everyone (nodes before clients)."""
        assert self.homes.shard_map is not None
        self.outbox.announce(self.homes.shard_map, self.phase == JobPhase.PREPARE, clients)

    # ------------------------------------------------------------------ messages

    def receive(self, frames: list[Any]) -> None:
        if self._member_heartbeat(frames):
            return
        try:
            msg = decode(frames, [])
            self.published.stale = True  # anything but a member's heartbeat may change /status
            self._dispatch(msg)
        except ProtocolError as exc:
            log.warning("coordinator dropped a malformed message: %s", exc)

    def _member_heartbeat(self, frames: list[Any]) -> bool:
        """A member's heartbeat, noted from its header alone: its body matters only from a node
        we do not know (adoption, fencing), and decoding it (JSON, pydantic: 6.5 us) was a sixth
        of what a heartbeat cost the coordinator (bench/README.md: 1,000 nodes send 5,000 a second).
        It changes nothing /status shows (when the member was last heard is not in it)."""
        peeked = peek(frames)
        if peeked is None or peeked[0] is not MsgType.HEARTBEAT:
            return False
        member = self.roster.get(peeked[1])
        if member is None or member.id != peeked[1]:
            return False  # decoded and dispatched as before: adopted, fenced or dropped
        member.heard(self.clock())
        return True

    def _dispatch(self, msg: Message) -> None:
        kind = msg.type
        if kind is MsgType.REGISTER:
            self._on_register(control.body_of(msg, control.Register))
            return
        member = self.roster.get(node_of(msg.sender))
        restarted = self.phase in (JobPhase.REGISTERING, JobPhase.ADOPTING)
        if member is None and kind is MsgType.HEARTBEAT and restarted:
            self._adopt(node_of(msg.sender), control.body_of(msg, control.Heartbeat))
            return
        if member is None:
            node = node_of(msg.sender)
            if kind is MsgType.HEARTBEAT and node in self.roster.lost and msg.sender == node:
                # Declared lost, yet alive (it was paused): others serve its keys now, so
                # it must stop (fencing); what it sends meanwhile is dropped everywhere.
                self.outbox.fence(node, control.body_of(msg, control.Heartbeat).address)
                return
            if node in self.roster.former:
                return  # a node that left (and lingers) or was declared lost: no longer ours
            if kind is MsgType.HEARTBEAT and msg.sender == node:
                # A node this coordinator never knew: it joined before a restart and missed the
                # rebuilding, and no membership lists it any more: it must start again.
                log.error("heartbeat of node %d, which is not a member: told to exit", node)
                self.outbox.fence(node, control.body_of(msg, control.Heartbeat).address)
                return
            raise ProtocolError(f"{kind.name} from unknown endpoint {msg.sender}")
        member.heard(self.clock())
        if kind is MsgType.HEARTBEAT:
            return
        if kind is MsgType.READY:
            self._on_ready(member)
        elif kind is MsgType.WORKER_DONE:
            self._on_worker_done(member, control.body_of(msg, control.WorkerDone))
        else:
            self.member_messages.handle(member, msg)

    # ------------------------------------------------------------------ joining

    def _on_register(self, reg: control.Register) -> None:
        listening = self.phase == JobPhase.REGISTERING and self.clock() < self.listen_until
        if self.phase == JobPhase.ADOPTING or listening:
            self.adoption.defer(reg)  # after the running job is rebuilt, or none was heard
            return
        if reg.config_digest != self.digest:
            self.outbox.refuse(reg, "its configuration (tables, shards) differs from the coordinator's")
            return
        again = self.joining.welcome_again(reg)
        if again is not None:  # a copy: the membership that followed its answer goes again too
            if self.homes.shard_map is not None and (reg.role != "client" or self.phase == JobPhase.RUNNING):
                self.outbox.send_whole(again, self.membership())
            return
        if reg.role == "client":
            self._register_client(reg)
            return
        if self.phase == JobPhase.STOPPING:
            self.outbox.refuse(reg, "the job is ending")
            return
        member = self.joining.admit(reg, replacing=self.phase != JobPhase.REGISTERING)
        if member is None:
            return
        if self.phase == JobPhase.REGISTERING:
            if self.roster.complete():
                self._prepare()
        else:  # a late joiner: it builds its store from the current membership
            self.outbox.send_whole(member.id, self.membership())

    def _register_client(self, reg: control.Register) -> None:
        if not self.joining.attach(reg):
            return
        if self.phase == JobPhase.RUNNING:
            self._announce()
        self._maybe_start()
        self.progress.settle_stages()  # a stage may wait for this worker

    def _prepare(self) -> None:
        restored = self.config.fault_tolerance.checkpoint.restore_from is not None
        shard_map = self.homes.initial([m.id for m in self.roster.active("server")], restored)
        self.phase = JobPhase.PREPARE
        log.info("all %d nodes registered; preparing epoch %d", len(self.roster.members), shard_map.epoch)
        self._announce(clients=False)

    def _on_ready(self, member: Member) -> None:
        if member.state != MemberState.JOINING:
            return
        member.state = MemberState.READY
        if self.phase == JobPhase.PREPARE:
            self._maybe_start()
            return
        self.joining.joined(member)

    def _maybe_start(self) -> None:
        if self.phase != JobPhase.PREPARE:
            return
        if not self.roster.started():
            return
        self.phase = JobPhase.RUNNING
        log.info(
            "job running with %d servers and %d workers",
            len(self.roster.active("server")),
            len(self.roster.active("worker")),
        )
        self._announce()

    # ------------------------------------------------------------------ restart

    def _adopt(self, node: int, heartbeat: control.Heartbeat) -> None:
        """A heartbeat from a node we never registered: we restarted and the job runs on
        (:mod:`dynaps.coordinator.rebuilding`)."""
        if self.phase == JobPhase.REGISTERING and self.roster.members:
            log.error("heartbeat of unknown node %d while registering a new job: ignored", node)
            return
        if self.phase == JobPhase.REGISTERING:
            log.warning("coordinator restarted: rebuilding the running job from its nodes")
            self.phase = JobPhase.ADOPTING
        self.rebuilding.heard(node, heartbeat)

    def _finish_adoption(self) -> None:
        if not self.rebuilding.take_over():
            return
        shard_map = self.homes.shard_map
        assert shard_map is not None
        self.phase = JobPhase.RUNNING
        log.warning(
            "job rebuilt after a coordinator restart: %d nodes, epoch %d",
            len(self.roster.members),
            shard_map.epoch,
        )
        for reg in self.rebuilding.carry_on(self._announce):
            self._on_register(reg)
        self.homes.rebalance()
        self._settle()

    # ------------------------------------------------------------------ failures

    def end_turn(self) -> None:
        """The turn's messages are handled: commit the migrations that became ready in it, in
        one epoch (:meth:`ShardHomes.commit_ready`)."""
        if self.homes.commit_due:
            self.homes.commit_ready()

    def tick(self, caught_up: bool = True) -> None:
        """Periodic duties: detect lost nodes, take periodic checkpoints.  ``caught_up``: the
        inbox was read to its end before (else silence is not judged, see Liveness.overdue)."""
        now = self.clock()
        if self.phase == JobPhase.ADOPTING:
            if self.adoption.due(now):
                self._finish_adoption()
                self.published.stale = True
            return
        if self.phase == JobPhase.REGISTERING and now >= self.listen_until and self.adoption.deferred:
            for reg in self.adoption.finish():  # no running job spoke up: a new job
                self._on_register(reg)
        self.checkpoints.tick(now, self.phase == JobPhase.RUNNING)
        self.homes.tick(now)
        for endpoint, up in self.outbox.connection_events():
            member = self.roster.get(endpoint)
            if member is not None:
                if up:
                    member.reconnected()
                else:
                    member.disconnected(now)
        waited = bool(self.liveness.waiting)
        lost = self.liveness.overdue(self.roster.members.values(), now, caught_up)  # unsorted: cheaper
        for member in lost:
            self.departures.lost(member)
        if lost or waited or self.liveness.waiting:
            self.published.stale = True  # /status says whom the job waits for, and for how long
        self.end.await_missing_workers(now, self.phase == JobPhase.RUNNING)

    def _abandon_checkpoint(self) -> None:
        if self.checkpoints.in_progress:
            self.checkpoints.end(committed=False)

    # ------------------------------------------------------------------ the workers' progress, the end

    def _settle(self) -> None:
        """Workers came, went or finished: a barrier may pass, a stage go on, the job may end."""
        self.progress.check_barrier()
        self.progress.settle_stages()
        self._check_done()

    def _on_worker_done(self, member: Member, done: control.WorkerDone) -> None:
        if self.end.worker_done(member, done):
            self.progress.publish_min_clock()
            self._settle()

    def _check_done(self) -> None:
        if self.phase == JobPhase.PREPARE:
            self._maybe_start()
        if self.phase != JobPhase.RUNNING:
            return
        if self.roster.finished():
            self.finish(0, "all workers finished")

    def finish(self, exit_code: int, reason: str) -> None:
        """End the job (the first verdict wins; :mod:`dynaps.coordinator.job_end`)."""
        self.end.finish(exit_code, reason)

    def _stopped(self) -> None:
        self.phase = JobPhase.STOPPING
        self.published.refresh()

    @property
    def exit_code(self) -> int | None:
        """The job's exit code once it ended (None: it runs)."""
        return self.end.exit_code

    @property
    def reason(self) -> str:
        """Why the job ended (empty while it runs)."""
        return self.end.reason

    # ------------------------------------------------------------------ status, actions (HTTP)

    def status(self) -> dict[str, Any]:
        """The /status document; computed on the coordinator's thread, read from any."""
        return self.published.doc

    def publish_status(self, now: float | None = None) -> None:
        """Rebuild /status for a reader if the job changed or it is old
        (:mod:`dynaps.coordinator.published_status`; the loop calls this only when someone
        reads it, :mod:`dynaps.coordinator.status_reads`)."""
        self.published.publish(now)

    def _status_document(self) -> dict[str, Any]:
        doc = status_document(
            job=self.config.job,
            phase=self.phase.value,
            version=self.outbox.version,
            started_at=self.started_at,
            exit_code=self.end.exit_code,
            reason=self.end.reason,
            roster=self.roster,
            homes=self.homes,
            last_checkpoint=self.checkpoints.last,
            leases=self.leases,
            barriers=self.barriers,
            reports=self.reports,
        )
        doc["waitingFor"] = self.liveness.report(self.clock())  # silent nodes the job waits for
        if self.stages.active:
            doc["stage"] = self.stages.status()
        return doc

    def run_command(self, action: str, body: dict[str, Any]) -> None:
        """An action POSTed to the HTTP endpoint (see :mod:`dynaps.coordinator.http`)."""
        if action == "shutdown":
            self.finish(0, "shutdown requested")
        elif action == "checkpoint":
            self.checkpoints.request()
        for node, reason in commands.drains(action, body, self.roster):
            self.send(node, MsgType.DRAIN, control.Drain(reason=reason))
        self.published.refresh()
