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
them as lost, and the nodes recover their keys).  Every change is a new MEMBERSHIP
version; every change of the shard map a new epoch.  The job ends when every worker's
program has exited: the coordinator sends SHUTDOWN to every process and exits with the
job's status.
"""

from __future__ import annotations

import logging
import queue
import secrets
import time
from typing import Any

import numpy as np

from dynaps.contract import ConsistencyModel, RuntimeConfig
from dynaps.coordinator.checkpoint_rounds import CheckpointRounds
from dynaps.coordinator.http import status_document
from dynaps.coordinator.leases import Leases
from dynaps.coordinator.rebalance import Migration, Rebalancer
from dynaps.coordinator.roster import Member, Roster
from dynaps.errors import ProtocolError
from dynaps.store.shardmap import ShardMap, next_servers
from dynaps.wire import control
from dynaps.wire.control import Membership
from dynaps.wire.protocol import COORDINATOR, Message, MsgType, client_of, control_frames, decode, node_of
from dynaps.wire.transport import Transport

log = logging.getLogger(__name__)

REFUSED_ENDPOINT = -2  # a temporary endpoint id for answering a refused registration
JOIN_TIMEOUT = 120.0  # seconds a joining node may take to build its store
REBALANCE_AFTER_RECOVERY = 2.0  # seconds between rebuilding a lost server's shards and moving them
ADOPT_QUIET = 1.0  # after a restart: seconds without a new node before the job goes on


class Coordinator:
    def __init__(self, config: RuntimeConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self.digest = control.config_digest(config)
        self.roster = Roster(config.servers, config.workers)
        self.rebalancer = Rebalancer(config.rebalance_policy.max_concurrent_migrations)
        self.phase = "registering"
        self.version = 0
        self.shard_map: ShardMap | None = None
        self.barrier_generation = 0  # the oldest barrier still open (new workers start there)
        self.barrier_at: dict[int, int] = {}  # client -> the latest barrier it reached
        self.barrier_waiting: set[int] = set()  # clients whose latest barrier is not yet answered
        self.min_clock = 0
        self.exit_code: int | None = None
        self.reason = ""
        self.started_at = time.time()
        heartbeat = config.fault_tolerance.heartbeat_interval_ms / 1000
        # A crash closes the node's connection: lost once no heartbeat came for a short
        # grace after that.  Silence alone (a hung node, a dead machine) takes longer, so
        # that a node starved of CPU for a moment is not declared lost.
        self.grace_after_disconnect = max(0.2, 2 * heartbeat)
        self.lost_after = max(3.0, 10 * heartbeat)
        self.incarnation = secrets.token_hex(4)
        self.adopting: dict[int, dict[str, Any] | None] = {}  # node -> its shard map, once it rejoined
        self.adopt_until = 0.0
        self.deferred: list[control.Register] = []
        self.recoveries: dict[int, int] = {}  # recovery id -> the new home rebuilding shards
        self.orphaned: list[int] = []  # lost servers whose shards wait for a server to join
        self._rebalance_at: float | None = None
        self._next_recovery = 1
        self.checkpoints = CheckpointRounds(self)
        self.commands: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.leases = Leases()
        self.metrics: dict[str, float] = {}  # what the training programs reported (latest wins)
        self.metrics_by_rank: dict[str, dict[str, float]] = {}
        self.status_doc: dict[str, Any] = {}
        self._refresh_status()

    # ------------------------------------------------------------------ sending

    def send(self, endpoint: int, kind: MsgType, body: dict[str, Any]) -> None:
        self.transport.send(endpoint, control_frames(kind, COORDINATOR, body))

    def _broadcast(self, kind: MsgType, body: dict[str, Any], clients: bool = True) -> None:
        """To every node, then every client (a client's next request then likely meets a
        node that already knows what the client knows)."""
        members = self.roster.active()
        for member in members:
            self.send(member.id, kind, body)
        if clients:
            for member in members:
                if member.client is not None:
                    self.send(client_of(member.id), kind, body)

    def membership(self) -> Membership:
        assert self.shard_map is not None
        return Membership(
            version=self.version,
            phase="prepare" if self.phase == "prepare" else "running",
            nodes=self.roster.infos(),
            shard_map=self.shard_map.to_json(),
            num_workers=len(self.roster.active("worker")),
            lost=list(self.roster.lost),
            incarnation=self.incarnation,
        )

    def _announce(self) -> None:
        """A new membership version for everyone (nodes before clients)."""
        self.version += 1
        self._broadcast(MsgType.MEMBERSHIP, self.membership().model_dump())

    # ------------------------------------------------------------------ messages

    def receive(self, frames: list[Any]) -> None:
        try:
            msg = decode(frames, [])
            self._dispatch(msg)
        except ProtocolError as exc:
            log.warning("coordinator dropped a malformed message: %s", exc)
        self._refresh_status()

    def _dispatch(self, msg: Message) -> None:
        kind = msg.type
        if kind is MsgType.REGISTER:
            self._on_register(control.parse(control.Register, msg.body))
            return
        member = self.roster.get(node_of(msg.sender))
        if member is None and kind is MsgType.HEARTBEAT and self.phase in ("registering", "adopting"):
            self._adopt(node_of(msg.sender), control.parse(control.Heartbeat, msg.body))
            return
        if member is None:
            if node_of(msg.sender) in self.roster.former:
                return  # a node that left (and lingers) or was declared lost: no longer ours
            raise ProtocolError(f"{kind.name} from unknown endpoint {msg.sender}")
        member.last_seen = time.monotonic()
        member.suspect_since = None  # alive after all (a connection came back)
        if kind is MsgType.HEARTBEAT:
            return
        if kind is MsgType.READY:
            self._on_ready(member)
        elif kind is MsgType.BARRIER:
            self._on_barrier(msg.sender, control.parse(control.Barrier, msg.body))
        elif kind is MsgType.CLOCK:
            member.clock = max(member.clock, int((msg.body or {}).get("clock", 0)))
            self._publish_min_clock()
        elif kind is MsgType.WORKER_DONE:
            self._on_worker_done(member, control.parse(control.WorkerDone, msg.body))
        elif kind is MsgType.LEAVE:
            self._on_leave(member, control.parse(control.Leave, msg.body).reason)
        elif kind is MsgType.LEFT:
            self._on_left(member)
        elif kind is MsgType.MIGRATE_READY:
            self._on_migrate_ready(control.parse(control.MigrateReady, msg.body).id)
        elif kind is MsgType.RECOVERED:
            self._on_recovered(control.parse(control.MigrateReady, msg.body).id)
        elif kind is MsgType.CHECKPOINT_DONE:
            self.checkpoints.on_done(member, control.parse(control.CheckpointDone, msg.body))
        elif kind is MsgType.REJOIN:
            self._on_rejoin(member, control.parse(control.Rejoin, msg.body))
        elif kind is MsgType.LEASE:
            lease = control.parse(control.Lease, msg.body)
            shard = self.leases.next(lease.epoch, lease.num_shards, member.id, lease.finished)
            self.send(msg.sender, MsgType.LEASE_REPLY, {"epoch": lease.epoch, "shard": shard})
        elif kind is MsgType.REPORT:
            report = control.parse(control.Report, msg.body)
            self.metrics.update(report.metrics)
            if member.rank is not None:
                self.metrics_by_rank.setdefault(str(member.rank), {}).update(report.metrics)
        elif kind is MsgType.STATS:
            self.send(msg.sender, MsgType.STATS_REPLY, {"counters": {"phase": self.phase}})
        elif kind is MsgType.PING:
            self.send(msg.sender, MsgType.PONG, {})
        else:
            raise ProtocolError(f"coordinator does not handle {kind.name}")

    # ------------------------------------------------------------------ joining

    def _on_register(self, reg: control.Register) -> None:
        if self.phase == "adopting":
            self.deferred.append(reg)  # after the running job is rebuilt
            return
        if reg.config_digest != self.digest:
            self._refuse(reg, "its configuration (tables, shards) differs from the coordinator's")
            return
        if reg.role == "client":
            self._register_client(reg)
            return
        if self.phase == "stopping":
            self._refuse(reg, "the job is ending")
            return
        predecessor = self.roster.named(reg.name)
        if predecessor is not None and self.phase != "registering":
            # The same pod name again: its predecessor is gone (Kubernetes never runs two
            # pods of one name), so do not wait for its heartbeats to stop.
            log.warning("%s %d (%s) was replaced", predecessor.role, predecessor.id, reg.name)
            self._on_lost(predecessor)
        admitted = self.roster.admit(reg.role, reg.address, reg.name, reg.pid, reg.rank)
        if isinstance(admitted, str):
            self._refuse(reg, admitted)
            return
        member = admitted
        self.transport.connect(member.id, member.address)
        self._watch(member.id)
        self.send(member.id, MsgType.WELCOME, {"node": member.id, "nonce": reg.nonce, "rank": member.rank})
        log.info("registered %s %d (%s) at %s", reg.role, member.id, reg.name, reg.address)
        if self.phase == "registering":
            if all(len(self.roster.active(r)) == self.roster.desired[r] for r in ("server", "worker")):
                self._prepare()
        else:  # a late joiner: it builds its store from the current membership
            self.send(member.id, MsgType.MEMBERSHIP, self.membership().model_dump())

    def _register_client(self, reg: control.Register) -> None:
        member = self.roster.get(reg.node or -1)
        if member is None or member.role != "worker":
            self._refuse(reg, f"node {reg.node} is not a worker of this job")
            return
        member.client = reg.address
        self.transport.connect(client_of(member.id), reg.address)
        self.send(
            client_of(member.id),
            MsgType.WELCOME,
            {"node": member.id, "nonce": reg.nonce, "rank": member.rank, "barrier": self.barrier_generation},
        )
        if self.phase == "running":
            self._announce()
        self._maybe_start()

    def _watch(self, node: int) -> None:
        watch = getattr(self.transport, "watch", None)
        if watch is not None:
            watch(node)

    def _refuse(self, reg: control.Register, reason: str) -> None:
        log.error("refused %s at %s: %s", reg.role, reg.address, reason)
        self.transport.connect(REFUSED_ENDPOINT, reg.address)
        self.send(REFUSED_ENDPOINT, MsgType.REFUSED, {"nonce": reg.nonce, "reason": reason})
        self.transport.forget(REFUSED_ENDPOINT, linger=1.0)

    def _new_map(self, homes: Any) -> None:
        """Commit a new shard assignment (a new epoch), with backups under replication."""
        assert self.shard_map is not None
        backups = None
        if self.config.fault_tolerance.replication:
            servers = [m.id for m in self.roster.active("server") if m.state == "ready"]
            backups = next_servers(homes, servers)
        self.shard_map = ShardMap(
            self.shard_map.epoch + 1, self.shard_map.num_shards, self.shard_map.partition, homes, backups
        )

    def _prepare(self) -> None:
        policy = self.config.rebalance_policy
        servers = [m.id for m in self.roster.active("server")]
        self.shard_map = ShardMap.initial(policy.num_shards, policy.partition, servers)
        if self.config.fault_tolerance.replication:
            self.shard_map.backups = next_servers(self.shard_map.homes, servers)
        self.phase = "prepare"
        self.version += 1
        log.info(
            "all %d nodes registered; preparing epoch %d", len(self.roster.members), self.shard_map.epoch
        )
        self._broadcast(MsgType.MEMBERSHIP, self.membership().model_dump(), clients=False)

    def _on_ready(self, member: Member) -> None:
        if member.state != "joining":
            return
        member.state = "ready"
        if self.phase == "prepare":
            self._maybe_start()
            return
        log.info("%s %d joined the running job", member.role, member.id)
        self._announce()
        if member.role == "server":
            orphaned, self.orphaned = self.orphaned, []
            for lost in orphaned:
                self._rehome(lost)
            self._rebalance()

    def _maybe_start(self) -> None:
        if self.phase != "prepare":
            return
        if any(m.state == "joining" for m in self.roster.active()):
            return
        if any(m.client is None and m.exit_code is None for m in self.roster.active("worker")):
            return  # a program that exits without connecting does not hold the others up
        self.phase = "running"
        log.info(
            "job running with %d servers and %d workers",
            len(self.roster.active("server")),
            len(self.roster.active("worker")),
        )
        self._announce()

    # ------------------------------------------------------------------ restart

    def _adopt(self, node: int, heartbeat: control.Heartbeat) -> None:
        """A heartbeat from a node we never registered: we restarted and the job runs on.

        Collect the nodes (they keep their ids), ask each for its shard map (REJOIN), and
        once no new node has appeared for a moment, carry on with the newest map.
        """
        if self.phase == "registering" and self.roster.members:
            log.error("heartbeat of unknown node %d while registering a new job: ignored", node)
            return
        if self.phase == "registering":
            log.warning("coordinator restarted: rebuilding the running job from its nodes")
            self.phase = "adopting"
        member = Member(node, heartbeat.role, heartbeat.address, heartbeat.name, 0, heartbeat.rank)
        member.client = heartbeat.client
        member.exit_code = heartbeat.exit_code
        member.state = "draining" if heartbeat.draining else "ready"
        self.roster.adopt(member)
        self.transport.connect(node, heartbeat.address)
        self._watch(node)
        if heartbeat.client is not None:
            self.transport.connect(client_of(node), heartbeat.client)
        self.adopting[node] = None
        self.adopt_until = time.monotonic() + ADOPT_QUIET
        self.send(node, MsgType.ADOPT, {})

    def _on_rejoin(self, member: Member, rejoin: control.Rejoin) -> None:
        if member.id in self.adopting:
            self.adopting[member.id] = rejoin.shard_map

    def _finish_adoption(self) -> None:
        maps = [doc for doc in self.adopting.values() if doc is not None]
        if not maps:
            return
        newest = max(maps, key=lambda doc: int(doc.get("epoch", 0)))
        self.shard_map = ShardMap.from_json(newest)
        for role in ("server", "worker"):
            count = len(self.roster.active(role))
            self.roster.desired[role] = max(self.roster.desired[role], count)
        self.adopting.clear()
        self.phase = "running"
        log.warning(
            "job rebuilt after a coordinator restart: %d nodes, epoch %d",
            len(self.roster.members),
            self.shard_map.epoch,
        )
        self._announce()
        deferred, self.deferred = self.deferred, []
        for reg in deferred:
            self._on_register(reg)
        self._rebalance()
        self._check_barrier()
        self._check_done()

    # ------------------------------------------------------------------ leaving

    def _on_leave(self, member: Member, reason: str) -> None:
        """The node drains: a server's shards move away; a worker releases its keys."""
        if member.state == "draining":
            return
        log.info("%s %d is leaving (%s)", member.role, member.id, reason or "drain")
        member.state = "draining"
        self._announce()
        if member.role == "server":
            self._rebalance()
        self._check_barrier()
        self._check_done()

    def _on_left(self, member: Member) -> None:
        log.info("%s %d left", member.role, member.id)
        self.leases.release(member.id)
        self.roster.remove(member, lost=False)
        self.transport.forget(member.id)
        if member.client is not None:
            self.transport.forget(client_of(member.id))
        self._announce()
        self._check_barrier()
        self._check_done()

    def drain(self, target: str) -> bool:
        """Ask a node (by name or id) to drain and leave; False if there is no such node."""
        for member in self.roster.active():
            if target in (member.name, str(member.id)):
                self.send(member.id, MsgType.DRAIN, {"reason": "drain requested"})
                return True
        return False

    def scale(self, servers: int | None, workers: int | None) -> None:
        """Change the desired sizes; surplus nodes are asked to drain (the newest first)."""
        for role, wanted in (("server", servers), ("worker", workers)):
            if wanted is None:
                continue
            self.roster.desired[role] = wanted  # type: ignore[index]
            present = [m for m in self.roster.active(role) if m.state != "draining"]  # type: ignore[arg-type]
            surplus = len(present) - wanted
            if surplus > 0:
                victims = sorted(present, key=lambda m: m.rank if m.rank is not None else m.id, reverse=True)
                for member in victims[:surplus]:
                    self.send(member.id, MsgType.DRAIN, {"reason": f"scaling {role}s to {wanted}"})
        self._refresh_status()

    def tick(self) -> None:
        """Periodic duties: detect lost nodes, take periodic checkpoints."""
        now = time.monotonic()
        if self.phase == "adopting":
            rejoined = all(doc is not None for doc in self.adopting.values())
            if (now > self.adopt_until and rejoined) or now > self.adopt_until + ADOPT_QUIET * 5:
                self._finish_adoption()
                self._refresh_status()
            return
        self.checkpoints.tick(now)
        if self._rebalance_at is not None and now >= self._rebalance_at:
            self._rebalance_at = None
            self._rebalance()
        watcher = getattr(self.transport, "disconnected", None)
        for endpoint in watcher() if watcher is not None else ():
            member = self.roster.get(endpoint)
            if member is not None and member.suspect_since is None:
                member.suspect_since = now
        for member in self.roster.active():
            limit = JOIN_TIMEOUT if member.state == "joining" else self.lost_after
            suspect = member.suspect_since is not None and member.last_seen < member.suspect_since
            if now - member.last_seen > limit or (
                suspect and now - member.last_seen > self.grace_after_disconnect
            ):
                self._on_lost(member)
                self._refresh_status()

    def _on_lost(self, member: Member) -> None:
        log.error("%s %d (%s) stopped answering: lost", member.role, member.id, member.name)
        self.roster.remove(member, lost=True)
        returned = self.leases.release(member.id)
        if returned:
            log.warning("%d data shards of node %d go back to the queue", returned, member.id)
        self.transport.forget(member.id)
        if member.client is not None:
            self.transport.forget(client_of(member.id))
        for migration in self.rebalancer.abort_involving(member.id):
            log.warning("migration %d aborted: node %d was lost", migration.id, member.id)
            for node in (migration.source, migration.target):
                if node != member.id:
                    self.send(node, MsgType.MIGRATE_ABORT, {"id": migration.id})
        if self.checkpoints.in_progress:
            self.checkpoints.end(committed=False)
        if member.role == "server" and self.shard_map is not None and member.id in self.shard_map.homes:
            self._rehome(member.id)  # announces the new shard map
            return
        self._announce()
        if member.role == "server":
            self._rebalance()
        self._check_barrier()
        self._check_done()

    def _rehome(self, lost: int) -> bool:
        """Give a lost server's shards new homes, which rebuild them.

        With no server left, the shards wait for the next server that joins (the operator
        recreates the pod); False then.
        """
        assert self.shard_map is not None
        servers = [m.id for m in self.roster.active("server") if m.state == "ready"]
        if not servers:
            log.error("no server left for the shards of lost server %d: waiting for one to join", lost)
            self.orphaned.append(lost)
            self._announce()
            return False
        shards = np.flatnonzero(self.shard_map.homes == lost)
        homes = self.shard_map.homes.copy()
        replicated = self.config.fault_tolerance.replication > 0 and self.shard_map.backups is not None
        load = {s: int((homes == s).sum()) for s in servers}
        for shard in shards:
            backup = int(self.shard_map.backups[shard]) if self.shard_map.backups is not None else -1
            # the backup holds the replica; otherwise the least loaded server takes it
            new_home = backup if replicated and backup in load else min(load, key=lambda s: (load[s], s))
            homes[shard] = new_home
            load[new_home] += 1
        if replicated:
            source = "replica"
        elif self.checkpoints.last is not None or self.config.fault_tolerance.checkpoint.restore_from:
            source = "checkpoint"
        else:
            source = "initial"
            log.error(
                "server %d held shards without replica or checkpoint: their keys restart from "
                "their initial values",
                lost,
            )
        self._new_map(homes)
        self._announce()
        for new_home in sorted({int(homes[s]) for s in shards}):
            mine = [int(s) for s in shards if homes[s] == new_home]
            recovery_id = self._next_recovery
            self._next_recovery += 1
            self.recoveries[recovery_id] = new_home
            self.send(new_home, MsgType.RECOVER, {"id": recovery_id, "shards": mine, "source": source})
        log.warning(
            "epoch %d: %d shards of lost server %d rebuilt from %s",
            self.shard_map.epoch,
            len(shards),
            lost,
            source,
        )
        self._check_barrier()
        self._check_done()
        return True

    def _on_recovered(self, recovery_id: int) -> None:
        self.recoveries.pop(recovery_id, None)
        if not self.recoveries:
            # Rebalance a little later: requests sent again after the loss should land
            # before shards move on (their homes remember what they already applied).
            self._rebalance_at = time.monotonic() + REBALANCE_AFTER_RECOVERY

    # ------------------------------------------------------------------ rebalancing

    def _rebalance(self) -> None:
        assert self.shard_map is not None
        servers = self.roster.active("server")
        staying = [m.id for m in servers if m.state == "ready"]
        leaving = [m.id for m in servers if m.state == "draining"]
        self.rebalancer.replan(self.shard_map.homes, staying, leaving)
        self.start_migrations()

    def start_migrations(self) -> None:
        assert self.shard_map is not None
        if self.checkpoints.in_progress or self.recoveries:
            return  # resumed when they end
        for migration in self.rebalancer.start_next(self.shard_map.epoch):
            log.info(
                "migration %d: %d shards from node %d to node %d",
                migration.id,
                len(migration.shards),
                migration.source,
                migration.target,
            )
            body = control.MigrateOut(
                id=migration.id, shards=migration.shards, target=migration.target, epoch=self.shard_map.epoch
            ).model_dump()
            self.send(migration.source, MsgType.MIGRATE_OUT, body)

    def _on_migrate_ready(self, migration_id: int) -> None:
        """The target holds a copy and the source is frozen: commit the new epoch."""
        migration: Migration | None = self.rebalancer.running.pop(migration_id, None)
        if migration is None or self.shard_map is None:
            return
        homes = self.shard_map.homes.copy()
        homes[migration.shards] = migration.target
        self.shard_map = ShardMap(
            self.shard_map.epoch + 1, self.shard_map.num_shards, self.shard_map.partition, homes
        )
        self.rebalancer.completed += 1
        log.info(
            "epoch %d: %d shards now homed on node %d",
            self.shard_map.epoch,
            len(migration.shards),
            migration.target,
        )
        self._announce()
        self.start_migrations()

    # ------------------------------------------------------------------ barriers, clocks

    def _on_barrier(self, sender: int, barrier: control.Barrier) -> None:
        self.barrier_at[sender] = max(self.barrier_at.get(sender, -1), barrier.generation)
        self.barrier_waiting.add(sender)
        self._check_barrier()

    def _check_barrier(self) -> None:
        """Barrier g is passed once every running worker reached g or a later one.

        Counting "g or later" (not "exactly g") keeps barriers right when some worker
        already went on while the others send g again (after a coordinator restart).
        """
        if self.phase != "running":
            return  # while adopting, not every worker is known yet
        clients = {client_of(m.id) for m in self.roster.workers_running() if m.state != "draining"}
        if clients:
            passed = min(self.barrier_at.get(c, -1) for c in clients)
            self.barrier_generation = max(self.barrier_generation, passed + 1)
        passed = self.barrier_generation - 1
        for endpoint in sorted(self.barrier_waiting):
            if self.barrier_at.get(endpoint, -1) <= passed:
                self.barrier_waiting.discard(endpoint)
                if self.roster.get(node_of(endpoint)) is not None:
                    self.send(endpoint, MsgType.BARRIER_DONE, {"generation": passed})

    def _publish_min_clock(self) -> None:
        if self.config.consistency.model == ConsistencyModel.ASYNC:
            return
        running = self.roster.workers_running()
        low = min((m.clock for m in running), default=self.min_clock)
        if low > self.min_clock:
            self.min_clock = low
            for member in running:
                self.send(client_of(member.id), MsgType.CLOCK_MIN, {"clock": low})

    # ------------------------------------------------------------------ the end

    def _on_worker_done(self, member: Member, done: control.WorkerDone) -> None:
        if member.role != "worker":
            raise ProtocolError(f"WORKER_DONE from {member.id}, which is not a worker")
        member.exit_code = done.exit_code
        log.info("worker %d (rank %s) finished with exit code %d", member.id, member.rank, done.exit_code)
        if done.exit_code != 0 and member.state != "draining":
            self.finish(done.exit_code, f"worker rank {member.rank} exited with code {done.exit_code}")
            return
        self._publish_min_clock()
        self._check_barrier()
        self._check_done()

    def _check_done(self) -> None:
        if self.phase == "prepare":
            self._maybe_start()
        if self.phase != "running":
            return
        workers = [m for m in self.roster.active("worker") if m.state != "draining"]
        if workers and all(m.exit_code is not None for m in workers):
            self.finish(0, "all workers finished")

    def finish(self, exit_code: int, reason: str) -> None:
        if self.exit_code is not None:
            return
        self.exit_code = exit_code
        self.reason = reason
        self.phase = "stopping"
        log.info("job ends (%s): %s", exit_code, reason)
        self._broadcast(MsgType.SHUTDOWN, {"reason": reason, "exit_code": exit_code})
        self._refresh_status()

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The /status document; computed on the coordinator's thread, read from any."""
        return self.status_doc

    def _refresh_status(self) -> None:
        self.status_doc = status_document(self)

    # ------------------------------------------------------------------ actions (HTTP)

    def run_command(self, action: str, body: dict[str, Any]) -> None:
        if action == "shutdown":
            self.finish(0, "shutdown requested")
        elif action == "scale":
            self.scale(_optional_int(body, "servers"), _optional_int(body, "workers"))
        elif action == "drain" and not self.drain(str(body.get("node", ""))):
            log.warning("drain of unknown node %r ignored", body.get("node"))
        elif action == "checkpoint":
            self.checkpoints.request()
        self._refresh_status()


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    return int(value) if isinstance(value, int) and value >= 0 else None
