"""The real Coordinator, driven in-process: no process, no socket, a clock the test moves.

The coordinator only talks through its Transport, so a recording transport (below) is all
it needs: the test plays every node and training program, feeding the coordinator their
messages and reading what it sent back, decoded as a node would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dynaps.contract import MAX_NODES, NamedTable, RuntimeConfig
from dynaps.coordinator.core import Coordinator, JobPhase
from dynaps.wire import control, messages
from dynaps.wire.protocol import MsgType, client_of, header
from tests.dynaps.harness import Clock, RecordingTransport
from tests.dynaps.samples import backups_of, homes_of, shard_map_doc


class Job:
    """One Coordinator and the nodes the test plays."""

    def __init__(
        self,
        servers: int = 2,
        workers: int = 1,
        num_shards: int = 8,
        listen_first: float = 0.0,
        **settings: Any,
    ) -> None:
        self.config = RuntimeConfig.model_validate(
            {
                "tables": [NamedTable(name="W", num_keys=64, dim=1)],
                "servers": servers,
                "workers": workers,
                "rebalance_policy": {"num_shards": num_shards},
                **settings,
            }
        )
        self.wire = RecordingTransport()
        self.clock = Clock()
        self.coordinator = Coordinator(self.config, self.wire, clock=self.clock, listen_first=listen_first)
        self.names: dict[int, str] = {}

    def tell(self, sender: int, kind: MsgType, body: dict[str, Any] | None = None) -> None:
        # as it would arrive: a header and the JSON body, parsed by the coordinator's decode
        self.coordinator.receive([header(kind, sender, sender, 0), json.dumps(body or {}).encode()])
        self.coordinator.end_turn()  # a turn of one message (of several: receive them, then end_turn)

    def send_register(self, role: str, name: str) -> None:
        body = {
            "role": role,
            "address": f"tcp://{name}",
            "nonce": f"nonce-{name}",
            "config_digest": control.config_digest(self.config),
            "name": name,
        }
        self.tell(-1, MsgType.REGISTER, body)

    def register(self, role: str, name: str) -> int:
        nonce = f"nonce-{name}"
        self.send_register(role, name)
        welcomes = [(e, b) for e, b in self.wire.take(MsgType.WELCOME) if b["nonce"] == nonce]
        assert len(welcomes) == 1, self.wire.take(MsgType.REFUSED)
        node = int(welcomes[0][1]["node"])
        self.names[node] = name
        return node

    def attach(self, node: int) -> None:
        """The worker's training program connects."""
        self.tell(client_of(node), MsgType.REGISTER, attach_body(self, node))
        assert [e for e, _ in self.wire.take(MsgType.WELCOME)] == [client_of(node)]

    def start(self) -> tuple[list[int], list[int]]:
        """Register, prepare and attach every node: the job runs."""
        servers = [self.register("server", f"s{i}") for i in range(self.config.servers)]
        workers = [self.register("worker", f"w{i}") for i in range(self.config.workers)]
        for node in servers + workers:
            self.tell(node, MsgType.READY, {"version": 1})
        for node in workers:
            self.attach(node)
        assert self.coordinator.phase is JobPhase.RUNNING
        self.wire.clear()
        return servers, workers

    def phase(self) -> JobPhase:
        return self.coordinator.phase

    def memberships(self) -> list[tuple[int, control.Membership]]:
        return self.wire.take_memberships()

    def status(self) -> dict[str, Any]:
        self.coordinator.publish_status()  # as the coordinator's loop does after each turn
        doc = self.coordinator.status()
        assert json.loads(json.dumps(doc)) == doc  # the document is plain JSON
        return doc


def test_servers_and_workers_register_prepare_and_run() -> None:
    job = Job(servers=2, workers=2)
    s1, s2 = job.register("server", "s0"), job.register("server", "s1")
    w1 = job.register("worker", "w0")
    assert job.phase() is JobPhase.REGISTERING
    assert job.memberships() == []
    w2 = job.register("worker", "w1")
    # everyone registered: the shard map is fixed and the nodes (not yet programs) prepare
    prepare = job.memberships()
    assert sorted(e for e, _ in prepare) == [s1, s2, w1, w2]
    assert {m.phase for _, m in prepare} == {"prepare"}
    assert sorted(set(homes_of(prepare[0][1].shard_map))) == [s1, s2]
    assert job.status()["phase"] == "prepare"
    for node in (s1, s2, w1, w2):
        job.tell(node, MsgType.READY, {"version": 1})
    job.attach(w1)
    assert job.phase() is JobPhase.PREPARE  # w2's program is not there yet
    job.attach(w2)
    assert job.phase() is JobPhase.RUNNING
    running = job.memberships()
    assert sorted(e for e, _ in running) == sorted([s1, s2, w1, w2, client_of(w1), client_of(w2)])
    assert {m.phase for _, m in running} == {"running"}
    # nodes hear of it before programs
    endpoints = [e for e, _ in running]
    assert max(endpoints.index(n) for n in (s1, s2, w1, w2)) < endpoints.index(client_of(w1))
    status = job.status()
    assert status["phase"] == "running"
    assert status["servers"] == {"desired": 2, "ready": 2}
    assert status["workers"] == {"desired": 2, "ready": 2, "finished": 0}
    assert [m["rank"] for m in status["members"] if m["role"] == "worker"] == [0, 1]
    job.tell(client_of(w1), MsgType.STATS)
    assert job.wire.take(MsgType.STATS_REPLY) == [(client_of(w1), {"counters": {"phase": "running"}})]


def test_registrations_of_another_job_or_beyond_its_size_are_refused() -> None:
    job = Job(servers=1, workers=1)
    job.start()
    body = {"role": "server", "address": "tcp://extra", "nonce": "n", "config_digest": "x" * 16}
    job.tell(-1, MsgType.REGISTER, body)
    job.tell(-1, MsgType.REGISTER, {**body, "config_digest": control.config_digest(job.config)})
    reasons = [refused["reason"] for _, refused in job.wire.take(MsgType.REFUSED)]
    assert reasons == [
        "its configuration (tables, shards) differs from the coordinator's",
        "the job wants 1 servers and has them",
    ]
    assert job.wire.addresses.get(-2) is None  # the temporary endpoint is forgotten


def test_a_drained_server_migrates_its_shards_out_then_leaves() -> None:
    job = Job(servers=2, workers=1, num_shards=8)
    (s1, s2), _ = job.start()
    job.coordinator.run_command("drain", {"node": "s1"})
    assert job.wire.take(MsgType.DRAIN) == [(s2, {"reason": "drain requested"})]
    job.tell(s2, MsgType.LEAVE, {"reason": "drain requested"})
    assert job.memberships()  # the leaving node is announced
    [(source, out)] = job.wire.take(MsgType.MIGRATE_OUT)
    assert (source, out["target"], out["shards"]) == (s2, s1, [4, 5, 6, 7])
    assert job.status()["migrationsInFlight"] == 1
    job.tell(s1, MsgType.MIGRATE_READY, {"id": out["id"]})
    [(_, membership), *_] = job.memberships()
    assert homes_of(membership.shard_map) == [s1] * 8
    assert membership.shard_map["epoch"] == out["epoch"] + 1
    status = job.status()
    assert (status["migrationsInFlight"], status["migrationsCompleted"]) == (0, 1)
    job.tell(s2, MsgType.LEFT)
    assert [m["id"] for m in job.status()["members"] if m["role"] == "server"] == [s1]
    assert job.status()["lost"] == []
    job.tell(s2, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s1"})  # lingering: ignored


def test_the_migrations_ready_in_one_turn_commit_in_one_epoch() -> None:
    """A server joins a job of two and takes shards from both at once (two migrations), and
    when both are ready in one turn of the coordinator they commit in one epoch."""
    job = Job(servers=2, workers=1, num_shards=16, servers_range=(2, 3))
    job.start()
    job.coordinator.run_command("scale", {"servers": 3})
    joiner = job.register("server", "s2")
    job.tell(joiner, MsgType.READY, {"version": job.coordinator.outbox.version})
    outs = [out for _, out in job.wire.take(MsgType.MIGRATE_OUT)]
    assert len(outs) == 2
    assert {out["target"] for out in outs} == {joiner}
    epoch = job.coordinator.homes.epoch
    job.memberships()  # the join's announcement
    for out in outs:  # one turn: the coordinator reads both, then ends it
        ready = control.MigrateReady(id=out["id"])
        job.coordinator.receive(messages.control(MsgType.MIGRATE_READY, out["target"], ready))
    assert job.coordinator.homes.epoch == epoch  # nothing commits inside the turn
    job.coordinator.end_turn()
    assert job.coordinator.homes.epoch == epoch + 1
    shard_map = job.coordinator.homes.shard_map
    assert shard_map is not None
    assert all((shard_map.homes[out["shards"]] == out["target"]).all() for out in outs)
    assert job.status()["migrationsCompleted"] == len(outs)  # (the next planned one starts)
    memberships = job.memberships()
    assert {m.shard_map["epoch"] for _, m in memberships} == {epoch + 1}  # one announcement


def test_a_crashed_server_is_recovered_before_shards_move_again() -> None:
    job = Job(servers=2, workers=1, num_shards=8)
    (s1, s2), (w1,) = job.start()
    job.clock.now += 0.1  # s2's last word came before its connection dropped
    job.wire.dropped.append(s2)
    job.coordinator.tick()  # the connection dropped: suspect, not yet lost
    assert job.status()["lost"] == []
    job.clock.now += job.coordinator.liveness.grace_after_disconnect + 0.01
    job.coordinator.tick()
    assert job.status()["lost"] == [s2]
    # its shards get a new home at once, which rebuilds them (no replica, no checkpoint)
    [(home, recover)] = job.wire.take(MsgType.RECOVER)
    assert (home, recover["shards"], recover["source"]) == (s1, [4, 5, 6, 7], "initial")
    [(_, membership), *_] = job.memberships()
    assert (membership.lost, homes_of(membership.shard_map)) == ([s2], [s1] * 8)
    # a server that joins meanwhile gets shards only after the recovery, and a moment later
    s3 = job.register("server", "s2")
    job.tell(s3, MsgType.READY, {"version": membership.version})
    assert job.wire.take(MsgType.MIGRATE_OUT) == []
    job.tell(s1, MsgType.RECOVERED, {"id": recover["id"]})
    job.coordinator.tick()
    assert job.wire.take(MsgType.MIGRATE_OUT) == []
    job.clock.now += 2.5
    job.tell(w1, MsgType.HEARTBEAT, {"role": "worker", "address": "tcp://w0"})
    job.tell(s1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0"})
    job.tell(s3, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s2"})
    job.coordinator.tick()
    [(source, out)] = job.wire.take(MsgType.MIGRATE_OUT)
    assert (source, out["target"], len(out["shards"])) == (s1, s3, 4)


def test_a_silent_worker_is_lost_and_its_data_shards_go_back() -> None:
    job = Job(servers=1, workers=2)
    (s1,), (w1, w2) = job.start()
    job.tell(client_of(w1), MsgType.LEASE, {"epoch": 0, "num_shards": 3})
    job.tell(client_of(w2), MsgType.LEASE, {"epoch": 0, "num_shards": 3})
    replies = job.wire.take(MsgType.LEASE_REPLY)
    assert replies == [(client_of(w1), {"epoch": 0, "shard": 0}), (client_of(w2), {"epoch": 0, "shard": 1})]
    # without replication its localized keys have no copy: the job waits the long timeout
    job.clock.now += job.coordinator.liveness.silent_node_timeout + 0.1
    job.tell(s1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0"})
    job.tell(w2, MsgType.HEARTBEAT, {"role": "worker", "address": "tcp://w1"})
    job.coordinator.tick()
    assert job.status()["lost"] == [w1]
    # w2 finishes piece 1 and gets w1's unfinished piece 0 before the never-leased piece 2
    job.tell(client_of(w2), MsgType.LEASE, {"epoch": 0, "num_shards": 3, "finished": 1})
    job.tell(client_of(w2), MsgType.LEASE, {"epoch": 0, "num_shards": 3, "finished": 0})
    job.tell(client_of(w2), MsgType.LEASE, {"epoch": 0, "num_shards": 3, "finished": 2})
    shards = [body["shard"] for _, body in job.wire.take(MsgType.LEASE_REPLY)]
    assert shards == [0, 2, None]
    assert job.status()["dataShards"] == {"0": {"shards": 3, "done": 3, "held": 0, "free": 0}}


def lose_silently(job: Job, victim: int, others: list[int]) -> None:
    """``victim`` stops answering past the long timeout while ``others`` speak."""
    job.clock.now += job.coordinator.liveness.silent_node_timeout + 0.1
    for node in others:
        job.tell(node, MsgType.HEARTBEAT, {"role": "worker", "address": f"tcp://{job.names[node]}"})
    job.coordinator.tick()
    assert victim in job.status()["lost"]


def test_a_worker_lost_unfinished_holds_the_end_until_its_replacement_finishes() -> None:
    job = Job(servers=1, workers=2)
    (s1,), (w1, w2) = job.start()
    lose_silently(job, w1, [s1, w2])
    job.tell(w2, MsgType.WORKER_DONE, {"exit_code": 0})
    job.coordinator.tick()
    assert job.status()["exitCode"] is None, "rank 0's work is not done: the job must not succeed"
    again = job.register("worker", "w0")  # the replacement (the same pod name) takes rank 0
    assert job.coordinator.roster.get(again).rank == 0  # type: ignore[union-attr]
    job.tell(again, MsgType.READY, {"version": 1})
    job.attach(again)
    job.tell(again, MsgType.WORKER_DONE, {"exit_code": 0})
    assert job.status()["exitCode"] == 0


def test_a_worker_lost_unfinished_and_never_replaced_fails_the_job_after_the_timeout() -> None:
    job = Job(servers=1, workers=2, fault_tolerance={"lost_worker_timeout_seconds": 30})
    (s1,), (w1, w2) = job.start()
    lose_silently(job, w1, [s1, w2])
    job.tell(w2, MsgType.WORKER_DONE, {"exit_code": 0})
    job.coordinator.tick()  # the wait starts when the others are done
    job.clock.now += 29
    job.tell(s1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0"})
    job.tell(w2, MsgType.HEARTBEAT, {"role": "worker", "address": "tcp://w1"})
    job.coordinator.tick()
    assert job.status()["exitCode"] is None
    job.clock.now += 1.5
    job.tell(s1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0"})
    job.tell(w2, MsgType.HEARTBEAT, {"role": "worker", "address": "tcp://w1"})
    job.coordinator.tick()
    status = job.status()
    assert status["exitCode"] == 1
    assert "worker ranks [0] were lost unfinished" in status["reason"]


def test_a_worker_lost_after_it_finished_or_dropped_by_a_scale_down_is_not_waited_for() -> None:
    job = Job(servers=1, workers=3)
    (s1,), (w1, w2, w3) = job.start()
    job.tell(w1, MsgType.WORKER_DONE, {"exit_code": 0})
    lose_silently(job, w1, [s1, w2, w3])  # finished, then lost: its work is done
    lose_silently(job, w3, [s1, w2])  # rank 2, lost unfinished ...
    job.coordinator.run_command("scale", {"workers": 2})  # ... but the job no longer wants rank 2
    job.tell(w2, MsgType.WORKER_DONE, {"exit_code": 0})
    assert job.status()["exitCode"] == 0


def test_a_checkpoint_round_pauses_writes_commits_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    job = Job(servers=2, workers=1, fault_tolerance={"checkpoint": {"path": str(root)}})
    (s1, s2), (w1,) = job.start()
    job.coordinator.run_command("checkpoint", {})
    pause = job.wire.take(MsgType.CHECKPOINT)
    assert pause == [(s1, {"id": 1, "phase": "pause"}), (s2, {"id": 1, "phase": "pause"})]
    job.tell(s1, MsgType.CHECKPOINT_DONE, {"id": 1, "phase": "pause"})
    assert job.wire.take(MsgType.CHECKPOINT) == []  # s2 still has keys in transfer
    job.tell(s2, MsgType.CHECKPOINT_DONE, {"id": 1, "phase": "pause"})
    write = job.wire.take(MsgType.CHECKPOINT)
    path = str(root / "ckpt-000001")
    assert write == [(n, {"id": 1, "phase": "write", "path": path}) for n in (s1, s2, w1)]
    for node, keys in ((s1, 32), (s2, 30), (w1, 2)):
        job.tell(node, MsgType.CHECKPOINT_DONE, {"id": 1, "phase": "write", "keys": keys})
    resume = job.wire.take(MsgType.CHECKPOINT)
    assert resume == [(s1, {"id": 1, "phase": "resume"}), (s2, {"id": 1, "phase": "resume"})]
    manifest = json.loads((root / "ckpt-000001" / "MANIFEST.json").read_text())
    assert (manifest["job"], manifest["epoch"], manifest["keys"]) == ("local", 1, 64)
    assert job.status()["lastCheckpoint"]["id"] == 1


def test_a_node_that_cannot_write_abandons_the_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    job = Job(servers=2, workers=1, fault_tolerance={"checkpoint": {"path": str(root)}})
    (s1, s2), (w1,) = job.start()
    job.coordinator.run_command("checkpoint", {})
    assert len(job.wire.take(MsgType.CHECKPOINT)) == 2  # the pause orders
    for server in (s1, s2):
        job.tell(server, MsgType.CHECKPOINT_DONE, {"id": 1, "phase": "pause"})
    assert len(job.wire.take(MsgType.CHECKPOINT)) == 3  # the write orders
    job.tell(s1, MsgType.CHECKPOINT_DONE, {"id": 1, "phase": "write", "keys": 32})
    job.tell(s2, MsgType.CHECKPOINT_DONE, {"id": 1, "phase": "write", "failed": "W is a link"})
    resume = job.wire.take(MsgType.CHECKPOINT)
    assert resume == [(s1, {"id": 1, "phase": "resume"}), (s2, {"id": 1, "phase": "resume"})]
    job.tell(w1, MsgType.CHECKPOINT_DONE, {"id": 1, "phase": "write", "keys": 2})  # late: ignored
    assert not (root / "ckpt-000001" / "MANIFEST.json").exists()
    assert not (root / "LATEST").exists()
    assert job.status()["lastCheckpoint"] is None


def test_a_checkpoint_waits_for_migrations_and_a_lost_node_abandons_it(tmp_path: Path) -> None:
    job = Job(servers=2, workers=1, fault_tolerance={"checkpoint": {"path": str(tmp_path)}})
    (s1, s2), (w1,) = job.start()
    job.tell(s2, MsgType.LEAVE)
    [(_, out)] = job.wire.take(MsgType.MIGRATE_OUT)
    job.coordinator.run_command("checkpoint", {})
    assert job.wire.take(MsgType.CHECKPOINT) == []  # ownership is changing
    job.tell(s1, MsgType.MIGRATE_READY, {"id": out["id"]})
    job.coordinator.tick()
    assert job.wire.take(MsgType.CHECKPOINT) == [
        (s1, {"id": 1, "phase": "pause"}),
        (s2, {"id": 1, "phase": "pause"}),
    ]
    job.clock.now += 0.1
    job.wire.dropped.append(w1)
    job.coordinator.tick()
    job.clock.now += 1.0
    job.tell(s1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0"})
    job.tell(s2, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s1"})
    job.coordinator.tick()
    assert job.status()["lost"] == [w1]
    assert job.wire.take(MsgType.CHECKPOINT) == [
        (s1, {"id": 1, "phase": "resume"}),
        (s2, {"id": 1, "phase": "resume"}),
    ]
    assert job.status()["lastCheckpoint"] is None


def test_barriers_pass_when_every_running_program_reached_them() -> None:
    job = Job(servers=1, workers=2)
    _, (w1, w2) = job.start()
    job.tell(client_of(w1), MsgType.BARRIER, {"generation": 0})
    assert job.wire.take(MsgType.BARRIER_DONE) == []
    job.tell(client_of(w2), MsgType.BARRIER, {"generation": 0})
    done = job.wire.take(MsgType.BARRIER_DONE)
    assert done == [(client_of(w1), {"generation": 0}), (client_of(w2), {"generation": 0})]
    assert job.status()["barrierPassed"] == 0
    # a program that finished no longer holds the others up
    job.tell(client_of(w1), MsgType.BARRIER, {"generation": 1})
    job.tell(w2, MsgType.WORKER_DONE, {"exit_code": 0})
    assert job.wire.take(MsgType.BARRIER_DONE) == [(client_of(w1), {"generation": 1})]


def test_the_job_ends_when_every_program_exited() -> None:
    job = Job(servers=1, workers=2)
    (s1,), (w1, w2) = job.start()
    job.tell(w1, MsgType.WORKER_DONE, {"exit_code": 0})
    assert job.status()["exitCode"] is None
    job.tell(w2, MsgType.WORKER_DONE, {"exit_code": 0})
    assert job.status()["exitCode"] == 0
    assert job.phase() is JobPhase.STOPPING
    shutdown = job.wire.take(MsgType.SHUTDOWN)
    assert [e for e, _ in shutdown] == [s1, w1, w2, client_of(w1), client_of(w2)]
    assert job.status()["phase"] == "stopping"


def test_a_registration_sent_again_is_answered_again_not_admitted_twice() -> None:
    """A node (or program) whose REGISTER, or its answer, went with a coordinator that died
    sends it again with the same nonce: the same id, and the membership that followed."""
    job = Job(servers=1, workers=1)
    server = job.register("server", "s0")
    job.send_register("server", "s0")  # while the job gathers its nodes: the answer again only
    assert [b["node"] for _, b in job.wire.take(MsgType.WELCOME)] == [server]
    worker = job.register("worker", "w0")
    assert job.memberships()  # everyone registered: the job prepares
    job.send_register("worker", "w0")
    assert [(e, b["node"]) for e, b in job.wire.take(MsgType.WELCOME)] == [(worker, worker)]
    [(to, again)] = job.memberships()
    assert (to, again.phase) == (worker, "prepare")
    assert len(job.coordinator.roster.members) == 2
    for node in (server, worker):
        job.tell(node, MsgType.READY, {"version": 1})
    job.attach(worker)
    job.memberships()
    job.tell(client_of(worker), MsgType.REGISTER, attach_body(job, worker))  # the program's, again
    assert [e for e, _ in job.wire.take(MsgType.WELCOME)] == [client_of(worker)]
    assert [(e, m.phase) for e, m in job.memberships()] == [(client_of(worker), "running")]  # no announce


def attach_body(job: Job, node: int) -> dict[str, Any]:
    """A training program's REGISTER, to attach to its worker ``node``."""
    return {
        "role": "client",
        "address": f"tcp://{job.names[node]}-program",
        "nonce": f"client-{node}",
        "config_digest": control.config_digest(job.config),
        "node": node,
    }


@pytest.mark.parametrize("scale_to", [1, 2])
def test_scaling_down_drains_the_newest_workers(scale_to: int) -> None:
    job = Job(servers=1, workers=3)
    _, workers = job.start()
    job.coordinator.run_command("scale", {"workers": scale_to})
    drained = [e for e, _ in job.wire.take(MsgType.DRAIN)]
    assert drained == workers[scale_to:][::-1]
    assert job.status()["workers"]["desired"] == scale_to


def test_a_restarted_coordinator_adopts_the_running_job() -> None:
    job = Job(servers=1, workers=1, num_shards=4)
    shard_map = shard_map_doc([1, 1, 1, 1], epoch=7)
    job.tell(1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0", "name": "s0"})
    beat = {"role": "worker", "address": "tcp://w0", "name": "w0", "rank": 0, "client": "tcp://w0-program"}
    job.tell(2, MsgType.HEARTBEAT, beat)
    assert job.phase() is JobPhase.ADOPTING
    assert sorted(e for e, _ in job.wire.take(MsgType.ADOPT)) == [1, 2]
    heartbeat = {"role": "server", "address": "tcp://s0"}
    job.tell(1, MsgType.REJOIN, {"heartbeat": heartbeat, "shard_map": shard_map})
    job.tell(2, MsgType.REJOIN, {"heartbeat": heartbeat, "shard_map": {**shard_map, "epoch": 6}})
    job.coordinator.tick()
    assert job.phase() is JobPhase.ADOPTING  # nodes may still be coming
    job.clock.now += 1.5
    job.coordinator.tick()
    assert job.phase() is JobPhase.RUNNING
    [(_, membership), *_] = job.memberships()
    assert membership.shard_map["epoch"] == 7
    assert job.status()["epoch"] == 7


def restart_with_one_worker_unheard(job: Job) -> None:
    """A restarted coordinator hears server 1 and worker 2 (rank 0); both knew worker 3 (rank
    1), whose heartbeats do not come."""
    shard_map = shard_map_doc([1, 1, 1, 1], epoch=4)
    worker = {"role": "worker", "address": "tcp://w0", "name": "w0", "rank": 0, "client": "tcp://w0-program"}
    job.tell(1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0", "name": "s0"})
    job.tell(2, MsgType.HEARTBEAT, worker)
    known = [[1, None], [2, 0], [3, 1]]
    for node in (1, 2):
        rejoin = {
            "heartbeat": worker,
            "shard_map": shard_map,
            "highest_node_id": 3,
            "members": known,
            "members_version": 4,
            "member_names": [[1, "s0"], [2, "w0"], [3, "w1"]],
        }
        job.tell(node, MsgType.REJOIN, rejoin)
    job.clock.now += 1.5
    job.coordinator.tick()


def test_a_member_unheard_after_a_restart_gets_time_then_is_lost_and_its_rank_awaited() -> None:
    """Chaos seed 114993: a worker whose heartbeats missed the rebuilding was left out, and
    the job then ended "all workers finished" without its rank's part of the work."""
    job = Job(servers=1, workers=2, num_shards=4)
    restart_with_one_worker_unheard(job)
    assert job.phase() is JobPhase.ADOPTING  # a node the others knew may still come
    job.clock.now += job.config.fault_tolerance.silent_node_timeout_seconds
    job.coordinator.tick()
    assert job.phase() is JobPhase.RUNNING
    [(_, first), *_] = job.memberships()
    assert first.version > 4  # after the nodes' own: a later restart tells the newest by it
    assert first.lost == [3]  # its keys are taken back as lost, not forgotten as if it had left
    assert [n.id for n in first.nodes] == [1, 2]
    job.tell(2, MsgType.WORKER_DONE, {"exit_code": 0})
    job.coordinator.tick()
    assert job.phase() is JobPhase.RUNNING  # rank 1 did not finish its part
    job.tell(3, MsgType.HEARTBEAT, {"role": "worker", "address": "tcp://w1", "rank": 1})
    [(_, refused)] = job.wire.take(MsgType.REFUSED)  # it speaks at last: told to exit
    assert refused["node"] == 3
    replacement = job.register("worker", "w1")
    assert job.coordinator.roster.get(replacement).rank == 1  # type: ignore[union-attr]


def test_a_member_whose_pod_registers_anew_is_lost_without_waiting_out_its_silence() -> None:
    """w1's pod was recreated while the coordinator was away: its REGISTER under that name
    says the member the others knew is gone, so the rebuilding ends at the quiet moment and
    the new pod takes its rank."""
    job = Job(servers=1, workers=2, num_shards=4, listen_first=1.0)
    job.send_register("worker", "w1")  # held until the job is rebuilt
    restart_with_one_worker_unheard(job)
    assert job.phase() is JobPhase.RUNNING  # 1.5 s, not the silence limit
    [(_, first), *_] = job.memberships()
    assert first.lost == [3]
    [(_, welcome)] = job.wire.take(MsgType.WELCOME)
    assert welcome["nonce"] == "nonce-w1"
    assert job.coordinator.roster.get(welcome["node"]).rank == 1  # type: ignore[union-attr]


def test_a_member_heard_late_in_the_rebuilding_is_adopted() -> None:
    job = Job(servers=1, workers=2, num_shards=4)
    restart_with_one_worker_unheard(job)
    beat = {"role": "worker", "address": "tcp://w1", "name": "w1", "rank": 1, "client": "tcp://w1-program"}
    job.tell(3, MsgType.HEARTBEAT, beat)
    assert [e for e, _ in job.wire.take(MsgType.ADOPT)][-1] == 3
    shard_map = shard_map_doc([1, 1, 1, 1], epoch=4)
    job.tell(
        3,
        MsgType.REJOIN,
        {
            "heartbeat": beat,
            "shard_map": shard_map,
            "members": [[1, None], [2, 0], [3, 1]],
            "members_version": 4,
        },
    )
    job.clock.now += 1.5
    job.coordinator.tick()
    assert job.phase() is JobPhase.RUNNING
    [(_, first), *_] = job.memberships()
    assert (first.lost, [n.id for n in first.nodes]) == ([], [1, 2, 3])


def test_a_node_declared_lost_before_a_restart_is_never_adopted_again() -> None:
    """Paused through its loss, it speaks up to the replacement coordinator: adopted, it would
    serve keys the homes took back (updates acknowledged and then lost without a word). It is
    told to exit, stays in the memberships' lost list, and its later heartbeats are fenced."""
    job = Job(servers=1, workers=2, num_shards=4)
    shard_map = shard_map_doc([1, 1, 1, 1], epoch=6)
    zombie = {"role": "worker", "address": "tcp://w1", "name": "w1", "rank": 1}
    job.tell(3, MsgType.HEARTBEAT, zombie)  # first: before anyone said it was lost
    job.tell(1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0", "name": "s0"})
    job.tell(4, MsgType.HEARTBEAT, {"role": "worker", "address": "tcp://w2", "name": "w1", "rank": 1})
    known = [[1, None], [4, 1]]
    for node in (1, 4):
        body = {
            "heartbeat": zombie,
            "shard_map": shard_map,
            "members": known,
            "members_version": 9,
            "lost": [3],
        }
        job.tell(node, MsgType.REJOIN, body)
    stale = {**shard_map, "epoch": 5}
    job.tell(3, MsgType.REJOIN, {"heartbeat": zombie, "shard_map": stale, "members": [[1, None], [3, 1]]})
    job.clock.now += 1.5
    job.coordinator.tick()
    assert job.phase() is JobPhase.RUNNING
    assert [b["node"] for _, b in job.wire.take(MsgType.REFUSED)] == [3]
    [(_, first), *_] = job.memberships()
    assert ([n.id for n in first.nodes], first.lost) == ([1, 4], [3])
    job.tell(3, MsgType.HEARTBEAT, zombie)
    assert [b["node"] for _, b in job.wire.take(MsgType.REFUSED)] == [3]  # fenced again


@pytest.mark.parametrize(
    "bad",
    [
        {"members": [[0, None]]},  # no node has id 0
        {"members": [[1, -1]]},  # nor a negative rank
        {"members_version": -1},
        {"lost": [0]},
        {"member_names": [[0, "w0"]]},
        {"member_names": [[1, "x" * 254]]},  # longer than any pod name
        {"took_back": [{"node": 3, "keys": 0, "shards": [0]}]},  # a loss of no key
        {"took_back": [{"node": 3, "keys": 1, "shards": [0]}] * 65},  # more than a node keeps
        {"replicas": [{"epoch": 0, "home": 1, "shards": [0]}]},  # epochs start at 1
        {"replicas": [{"home": 1, "shards": [0]}]},  # of no epoch
        {"replicas": [{"epoch": 3, "home": 1, "shards": "all"}]},
        {"replicas": [{"epoch": 3, "home": 1, "shards": [0]}] * (MAX_NODES + 1)},  # one per home at most
    ],
)
def test_a_malformed_rejoin_is_dropped_and_the_node_stays_unrejoined(bad: dict[str, Any]) -> None:
    job = Job(servers=1, workers=1, num_shards=4)
    shard_map = shard_map_doc([1, 1, 1, 1], epoch=3)
    server = {"role": "server", "address": "tcp://s0", "name": "s0"}
    job.tell(1, MsgType.HEARTBEAT, server)
    job.tell(1, MsgType.REJOIN, {"heartbeat": server, "shard_map": shard_map, **bad})
    assert job.coordinator.adoption.maps == {1: None}  # still waiting for a REJOIN it can read


def test_a_heartbeat_of_a_node_the_coordinator_never_knew_tells_it_to_exit() -> None:
    """It joined before a restart and missed the rebuilding: no membership lists it, and it
    would wait for one for ever."""
    job = Job(servers=1, workers=1)
    job.start()
    job.tell(9, MsgType.HEARTBEAT, {"role": "worker", "address": "tcp://w9", "rank": 0})
    [(_, refused)] = job.wire.take(MsgType.REFUSED)
    assert refused["node"] == 9
    assert job.phase() is JobPhase.RUNNING


def test_a_restarted_coordinator_asks_the_first_nodes_it_hears_for_their_member_lists() -> None:
    """Three lists, the newest taken: one node that lagged does not matter, and a thousand
    nodes do not send a thousand lists of a thousand."""
    job = Job(servers=2, workers=2, num_shards=4)
    for node, role in enumerate(("server", "server", "worker", "worker"), start=1):
        job.tell(node, MsgType.HEARTBEAT, {"role": role, "address": f"tcp://n{node}", "name": f"n{node}"})
    assert [(e, b.get("members", False)) for e, b in job.wire.take(MsgType.ADOPT)] == [
        (1, True),
        (2, True),
        (3, True),
        (4, False),
    ]


def test_a_replacement_coordinator_holds_a_recreated_pods_registration_until_it_adopted() -> None:
    """The first message a replacement coordinator gets may be a REGISTER of a recreated pod:
    it must not start a new job with it and then ignore the running job's nodes."""
    job = Job(servers=1, workers=1, num_shards=4, listen_first=1.0)
    job.send_register("worker", "w0")  # w0's pod was recreated while the coordinator was away
    assert job.wire.take(MsgType.WELCOME) == []
    job.tell(1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0", "name": "s0"})
    job.tell(2, MsgType.HEARTBEAT, {"role": "worker", "address": "tcp://w0", "name": "w0", "rank": 0})
    assert job.phase() is JobPhase.ADOPTING
    shard_map = shard_map_doc([1, 1, 1, 1], epoch=3)
    beat = {"role": "server", "address": "x"}
    # node 1 heard of node 9 (dead since): the new coordinator must not give its id again
    job.tell(1, MsgType.REJOIN, {"heartbeat": beat, "shard_map": shard_map, "highest_node_id": 9})
    job.tell(2, MsgType.REJOIN, {"heartbeat": beat, "shard_map": shard_map, "highest_node_id": 2})
    job.clock.now += 1.5
    job.coordinator.tick()
    assert job.phase() is JobPhase.RUNNING
    [(_, welcome)] = job.wire.take(MsgType.WELCOME)  # now it replaces the adopted w0
    assert welcome["nonce"] == "nonce-w0"
    assert welcome["node"] == 10  # above every id given out before the restart
    assert job.coordinator.roster.named("w0").id == welcome["node"]  # type: ignore[union-attr]


def test_a_fresh_coordinator_takes_registrations_once_no_running_job_spoke_up() -> None:
    job = Job(servers=1, workers=1, listen_first=1.0)
    job.send_register("server", "s0")
    job.send_register("server", "s0")  # sent again: held once
    job.coordinator.tick()
    assert job.wire.take(MsgType.WELCOME) == []
    job.clock.now += 1.0
    job.coordinator.tick()
    assert [b["nonce"] for _, b in job.wire.take(MsgType.WELCOME)] == ["nonce-s0"]
    assert job.phase() is JobPhase.REGISTERING


def test_a_server_that_leaves_before_its_incoming_shards_arrive_aborts_their_migration() -> None:
    """A server that joined and was told to drain homes nothing yet, so it leaves at once: the
    migration towards it is aborted (its source unfreezes) instead of waiting for ever, and
    the shards are planned again (found by test_migration_model)."""
    job = Job(servers=1, workers=1, num_shards=4)
    (s1,), _ = job.start()
    job.coordinator.run_command("scale", {"servers": 2})
    s2 = job.register("server", "s1")
    job.tell(s2, MsgType.READY, {"version": job.coordinator.outbox.version})
    [(source, out)] = job.wire.take(MsgType.MIGRATE_OUT)
    assert (source, out["target"]) == (s1, s2)
    job.coordinator.run_command("drain", {"node": "s1"})
    job.tell(s2, MsgType.LEFT, {})
    assert (s1, {"id": out["id"]}) in job.wire.take(MsgType.MIGRATE_ABORT)
    assert job.status()["migrationsInFlight"] == 0


def test_a_server_that_leaves_while_it_homes_shards_counts_as_lost() -> None:
    """Its copies went with it: the coordinator must not plan a move from it (that would
    wait for ever) nor call it a clean departure; the loss path rebuilds or counts them."""
    job = Job(servers=2, workers=1, num_shards=4)
    (s1, s2), _ = job.start()
    job.tell(s2, MsgType.LEFT, {})
    status = job.status()
    assert s2 in status["lost"]
    assert status["migrationsInFlight"] == 0
    assert not job.wire.take(MsgType.MIGRATE_OUT)
    [(_, membership), *_] = job.memberships()
    assert homes_of(membership.shard_map) == [s1] * 4  # its shards go to the survivor
    assert status["dataLoss"], "no replica: what it homed is counted as lost"


def test_under_replication_a_lost_servers_shards_go_to_their_backups() -> None:
    job = Job(servers=3, workers=1, num_shards=6, fault_tolerance={"replication": 1})
    (s1, s2, s3), _ = job.start()
    job.clock.now += 0.1
    job.wire.dropped.append(s2)
    job.coordinator.tick()
    job.clock.now += 1.0
    job.tell(s1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0"})
    job.tell(s3, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s2"})
    job.coordinator.tick()
    [(home, recover)] = job.wire.take(MsgType.RECOVER)
    assert (home, recover["shards"], recover["source"]) == (s3, [2, 3], "replica")
    [(_, membership), *_] = job.memberships()
    assert homes_of(membership.shard_map) == [s1, s1, s3, s3, s3, s3]
    assert backups_of(membership.shard_map) == [[s3], [s3], [s1], [s1], [s1], [s1]]  # backups for the new map


def test_a_question_asked_again_gets_the_first_answer_again() -> None:
    """A program whose BARRIER, CLOCK or LEASE (or its answer) was lost asks again after a
    silence (dynaps.client.barriers): the coordinator answers as it did, never twice over."""
    job = Job(servers=1, workers=2, consistency={"model": "bsp"})
    _, (w1, w2) = job.start()
    for worker in (w1, w2):
        job.tell(client_of(worker), MsgType.BARRIER, {"generation": 0})
    job.wire.take(MsgType.BARRIER_DONE)
    job.tell(client_of(w1), MsgType.BARRIER, {"generation": 0})  # its BARRIER_DONE was lost
    assert job.wire.take(MsgType.BARRIER_DONE) == [(client_of(w1), {"generation": 0})]
    assert job.status()["barrierPassed"] == 0
    for worker in (w1, w2):
        job.tell(client_of(worker), MsgType.CLOCK, {"clock": 1})
    assert sorted(job.wire.take(MsgType.CLOCK_MIN)) == [
        (client_of(w1), {"clock": 1}),
        (client_of(w2), {"clock": 1}),
    ]
    job.tell(client_of(w2), MsgType.CLOCK, {"clock": 1})  # its CLOCK_MIN was lost
    assert job.wire.take(MsgType.CLOCK_MIN) == [(client_of(w2), {"clock": 1})]
    job.tell(client_of(w1), MsgType.LEASE, {"epoch": 0, "num_shards": 3})
    job.tell(client_of(w1), MsgType.LEASE, {"epoch": 0, "num_shards": 3})  # the answer was lost
    job.tell(client_of(w1), MsgType.LEASE, {"epoch": 0, "num_shards": 3, "finished": 0})
    job.tell(client_of(w1), MsgType.LEASE, {"epoch": 0, "num_shards": 3, "finished": 0})  # lost too
    shards = [body["shard"] for _, body in job.wire.take(MsgType.LEASE_REPLY)]
    assert shards == [0, 0, 1, 1]
    assert job.status()["dataShards"] == {"0": {"shards": 3, "done": 1, "held": 1, "free": 1}}
