"""Replicas follow membership changes, and loss is counted: the real Coordinator in-process.

The test plays the nodes (see test_coordinator_core.py): it answers MIGRATE_OUT with
MIGRATE_READY, RECOVER with RECOVERED, and sends the REPLICA_SYNCED a backup passes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import generate_latest

from dynaps.contract import DATA_LOSS_EXIT_CODE, Partition
from dynaps.coordinator import metrics
from dynaps.coordinator.core import JobPhase
from dynaps.coordinator.replicas import Replicas
from dynaps.store.shardmap import NO_BACKUP, ShardMap
from dynaps.wire import control
from dynaps.wire.protocol import MsgType
from tests.dynaps.samples import backups_of, homes_of, shard_map_doc
from tests.dynaps.test_coordinator_core import Job

REPLICATED: dict[str, Any] = {"fault_tolerance": {"replication": 1}}


def lose(job: Job, node: int) -> None:
    """``node``'s connection drops and it stays silent: the coordinator declares it lost."""
    job.clock.now += 0.1
    job.wire.dropped.append(node)
    job.coordinator.tick()
    job.clock.now += job.coordinator.liveness.grace_after_disconnect + 0.01
    for member in job.coordinator.roster.active():
        if member.id != node:
            job.tell(member.id, MsgType.HEARTBEAT, {"role": member.role, "address": member.address})
    job.coordinator.tick()
    assert node in job.status()["lost"]


def shard_map(job: Job) -> dict[str, Any]:
    """The newest shard map announced (to the first node): its epoch, homes and backup rows."""
    memberships = job.memberships()
    assert memberships
    doc = memberships[-1][1].shard_map
    return {"epoch": doc["epoch"], "homes": homes_of(doc), "backups": backups_of(doc)}


def add_server(job: Job, name: str) -> int:
    """A server joins the running job and the shards it gets migrate to it."""
    job.coordinator.run_command("scale", {"servers": len(job.coordinator.roster.active("server")) + 1})
    node = job.register("server", name)
    job.tell(node, MsgType.READY, {"version": job.coordinator.outbox.version})
    while outs := job.wire.take(MsgType.MIGRATE_OUT):
        for source, out in outs:
            land(job, source, out)
    return node


def land(job: Job, source: int, out: dict[str, Any]) -> None:
    """A migration lands: the target is ready and the backups pass on the source's freeze
    marker (in either order: the coordinator commits once it has both)."""
    job.tell(out["target"], MsgType.MIGRATE_READY, {"id": out["id"]})
    current = job.coordinator.homes.shard_map
    assert current is not None
    assert current.backups is not None
    for shard in out["shards"]:
        for backup in current.backups[shard]:
            if int(backup) not in (NO_BACKUP, out["target"]):
                marker = {"epoch": current.epoch, "home": source, "shards": [shard], "migration": out["id"]}
                job.tell(int(backup), MsgType.REPLICA_SYNCED, marker)


def test_a_migration_waits_for_the_backups_to_pass_on_the_freeze_marker() -> None:
    job = Job(servers=2, workers=1, num_shards=8, **REPLICATED)
    job.start()
    job.coordinator.run_command("scale", {"servers": 3})
    s3 = job.register("server", "s2")
    job.tell(s3, MsgType.READY, {"version": job.coordinator.outbox.version})
    (source, out), *_ = job.wire.take(MsgType.MIGRATE_OUT)  # s3 takes shards of both servers at once
    epoch = job.coordinator.homes.epoch
    job.tell(out["target"], MsgType.MIGRATE_READY, {"id": out["id"]})
    assert job.coordinator.homes.epoch == epoch, "committed before the backups held the source's rows"
    current = job.coordinator.homes.shard_map
    assert current is not None
    assert current.backups is not None
    pairs = [(shard, int(current.backups[shard, 0])) for shard in out["shards"]]
    stale = {"epoch": epoch, "home": source, "shards": [pairs[0][0]]}  # a plain report: no marker
    job.tell(pairs[0][1], MsgType.REPLICA_SYNCED, stale)
    assert job.coordinator.homes.epoch == epoch
    for shard, backup in pairs[:-1]:
        marker = {"epoch": epoch, "home": source, "shards": [shard], "migration": out["id"]}
        job.tell(backup, MsgType.REPLICA_SYNCED, marker)
    assert job.coordinator.homes.epoch == epoch, "one backup has not passed the marker on"
    shard, backup = pairs[-1]
    marker = {"epoch": epoch, "home": source, "shards": [shard], "migration": out["id"]}
    job.tell(backup, MsgType.REPLICA_SYNCED, marker)
    committed = job.coordinator.homes.shard_map
    assert committed is not None
    assert committed.epoch == epoch + 1
    assert all(h == s3 for h in committed.homes[out["shards"]])


def test_a_migration_waiting_for_a_lost_backup_commits_when_it_is_replaced() -> None:
    job = Job(servers=4, workers=1, num_shards=16, **REPLICATED)
    (*_, s4), _ = job.start()
    job.tell(s4, MsgType.LEAVE)  # its shards migrate to the others, one migration at a time
    waited: set[int] = set()
    while not waited:
        [(source, out)] = job.wire.take(MsgType.MIGRATE_OUT)
        current = job.coordinator.homes.shard_map
        assert current is not None
        assert current.backups is not None
        waited = {int(current.backups[shard, 0]) for shard in out["shards"]} - {out["target"]}
        if not waited:  # every shard moves onto its backup: nothing to wait for
            land(job, source, out)
    job.tell(out["target"], MsgType.MIGRATE_READY, {"id": out["id"]})
    assert out["id"] in job.coordinator.homes.rebalancer.running, "committed without the backup's marker"
    lose(job, waited.pop())  # its marker will never come; its slot is filled by a server not synced yet
    assert out["id"] not in job.coordinator.homes.rebalancer.running
    homes = job.coordinator.homes.shard_map
    assert homes is not None
    assert all(h == out["target"] for h in homes.homes[out["shards"]])


def test_backups_are_present_and_synced_after_a_migration_commits() -> None:
    job = Job(servers=2, workers=1, num_shards=8, **REPLICATED)
    (s1, s2), _ = job.start()
    s3 = add_server(job, "s2")
    latest = shard_map(job)
    homes, backups = latest["homes"], latest["backups"]
    assert s3 in homes
    assert all(b in (s1, s2, s3) and b != h for h, (b,) in zip(homes, backups, strict=True))
    # the migrated shards kept their backups, which hold their data: nothing waits for a sync
    assert job.status()["replication"] == {"factor": 1, "synced": 8, "unsynced": 0, "minCopies": 1}
    lose(job, s1)
    recovers = job.wire.take(MsgType.RECOVER)
    assert recovers
    assert {body["source"] for _, body in recovers} == {"replica"}
    assert job.status()["dataLoss"] == []


def test_a_new_backup_counts_only_once_its_home_reports_the_sync() -> None:
    job = Job(servers=3, workers=1, num_shards=6, **REPLICATED)
    (s1, s2, s3), _ = job.start()
    lose(job, s2)  # its shards go to their backup s3, which needs a new backup
    latest = shard_map(job)
    moved = [2, 3]
    assert latest["homes"] == [s1, s1, s3, s3, s3, s3]
    assert latest["backups"] == [[s3], [s3], [s1], [s1], [s1], [s1]]
    assert job.status()["replication"]["unsynced"] == len(moved) + 2  # s1's shards lost backup s2
    [(_, recover)] = job.wire.take(MsgType.RECOVER)
    job.tell(s3, MsgType.RECOVERED, {"id": recover["id"], "keys": 0})
    # a report from another pair, or of an older epoch, does not count
    job.tell(s1, MsgType.REPLICA_SYNCED, {"epoch": latest["epoch"] - 1, "home": s3, "shards": moved})
    job.tell(s3, MsgType.REPLICA_SYNCED, {"epoch": latest["epoch"], "home": s1, "shards": moved})
    assert job.status()["replication"]["unsynced"] == len(moved) + 2
    job.tell(s1, MsgType.REPLICA_SYNCED, {"epoch": latest["epoch"], "home": s3, "shards": moved})
    assert job.status()["replication"]["unsynced"] == 2
    lose(job, s3)
    assert job.wire.take(MsgType.RECOVER) == [
        # holders: nobody else may hold their keys (no worker localized any; s2 is dead)
        (s1, {"id": recover["id"] + 1, "shards": [2, 3, 4, 5], "source": "replica", "holders": []})
    ]
    assert job.status()["dataLoss"] == []


def test_a_recovery_from_an_unsynced_backup_is_reported_as_loss() -> None:
    job = Job(servers=3, workers=1, num_shards=6, **REPLICATED)
    (s1, s2, s3), _ = job.start()
    lose(job, s2)
    [(_, first)] = job.wire.take(MsgType.RECOVER)
    job.tell(s3, MsgType.RECOVERED, {"id": first["id"], "keys": 0})
    assert job.status()["dataLoss"] == []  # s2's shards came from s3's synced replica
    lose(job, s3)  # before s3 reported its new backup s1 synced (for s2's old shards 2, 3)
    recovers = job.wire.take(MsgType.RECOVER)
    # the partial replica is what is left of shards 2 and 3; 4 and 5 had a synced one
    assert sorted((h, b["source"], b["shards"]) for h, b in recovers) == [
        (s1, "replica", [2, 3]),
        (s1, "replica", [4, 5]),
    ]
    recover = next(body for _, body in recovers if body["shards"] == [2, 3])
    [loss] = job.status()["dataLoss"]
    assert (loss["cause"], loss["server"], loss["shards"]) == ("replicas-exhausted", s3, [2, 3])
    assert (loss["keys"], loss["keysCounted"]) == (21, False)  # all keys of the shards, so far
    job.tell(s1, MsgType.RECOVERED, {"id": recover["id"], "keys": 40})
    [loss] = job.status()["dataLoss"]
    assert (loss["keys"], loss["keysCounted"]) == (40, True)  # what the home rebuilt itself
    assert job.phase() is JobPhase.RUNNING  # onDataLoss: Continue by default


def test_losses_without_replica_are_listed_with_their_cause(tmp_path: Path) -> None:
    job = Job(servers=3, workers=1, num_shards=6)
    (s1, s2, s3), _ = job.start()
    lose(job, s3)  # its two shards go to the two others, one each
    losses = job.status()["dataLoss"]
    assert [(loss["cause"], loss["shards"], loss["keys"]) for loss in losses] == [
        ("initial", [4], 11),
        ("initial", [5], 10),
    ]
    assert all("checkpointAgeSeconds" not in loss for loss in losses)
    job = Job(servers=2, workers=1, num_shards=4, fault_tolerance={"checkpoint": {"path": str(tmp_path)}})
    (s1, s2), (w1,) = job.start()
    job.coordinator.run_command("checkpoint", {})
    for node in (s1, s2):
        job.tell(node, MsgType.CHECKPOINT_DONE, {"id": 1, "phase": "pause"})
    for node in (s1, s2, w1):
        job.tell(node, MsgType.CHECKPOINT_DONE, {"id": 1, "phase": "write", "keys": 10})
    assert job.status()["lastCheckpoint"]["id"] == 1
    lose(job, s2)
    [loss] = job.status()["dataLoss"]
    assert (loss["cause"], loss["shards"], loss["keys"]) == ("checkpoint", [2, 3], 32)
    assert 0 <= loss["checkpointAgeSeconds"] < 60
    assert "dynaps_job_lost_keys_total 32.0" in _metrics(job)


def test_on_data_loss_fail_ends_the_job_with_a_reason() -> None:
    job = Job(servers=2, workers=1, num_shards=4, fault_tolerance={"on_data_loss": "Fail"})
    (_, s2), _ = job.start()
    lose(job, s2)
    status = job.status()
    assert status["exitCode"] == DATA_LOSS_EXIT_CODE
    assert "data loss" in status["reason"]
    assert "initial values" in status["reason"]
    assert job.phase() is JobPhase.STOPPING
    assert job.wire.take(MsgType.SHUTDOWN)


def test_a_draining_server_hands_its_backups_over_before_it_leaves() -> None:
    """A draining backup stays in its chains, each of which gets a new backup after it;
    once that one is synced the home freezes the shards and the commit takes the leaver
    out after the marker passed: no shard has a synced copy fewer at any point."""
    job = Job(servers=3, workers=1, num_shards=6, **REPLICATED)
    (s1, s2, s3), _ = job.start()
    job.tell(s3, MsgType.LEAVE, {"reason": "drain requested"})
    latest = shard_map(job)
    # s2's shards 2, 3 were backed up on s3: it stays, s1 joins their chains after it
    assert latest["backups"] == [[s2, -1], [s2, -1], [s3, s1], [s3, s1], [s1, -1], [s1, -1]]
    assert job.status()["replication"]["unsynced"] == 0  # s3 still counts where it is
    while moves := job.wire.take(MsgType.MIGRATE_OUT):  # s3's own shards move away, one by one
        assert {source for source, _ in moves} == {s3}, "a hand-over started before its new backup synced"
        for source, out in moves:
            land(job, source, out)
    current = job.coordinator.homes.shard_map
    assert current is not None
    job.tell(s1, MsgType.REPLICA_SYNCED, {"epoch": current.epoch, "home": s2, "shards": [2, 3]})
    sent = job.wire.take(MsgType.MIGRATE_OUT)
    assert len(sent) == 1, sent
    home, handover = sent[0]
    assert (home, handover["target"], handover["leaving"], handover["shards"]) == (s2, s2, s3, [2, 3])
    assert shard_map(job)["backups"][2:4] == [[s3, s1]] * 2, "committed before the marker passed"
    land(job, home, handover)
    latest = shard_map(job)
    assert latest["backups"][2:4] == [[s1], [s1]]
    assert all(s3 not in chain for chain in latest["backups"])
    synced = job.coordinator.homes.replicas.synced_copies()
    assert synced[2:4].tolist() == [1, 1], "the hand-over cost a synced copy"


def _metrics(job: Job) -> str:
    return generate_latest(metrics.registry(job.status, [str(phase) for phase in JobPhase])).decode()


def test_after_a_restore_backups_count_once_their_homes_synced_them(tmp_path: Path) -> None:
    restore = {"replication": 1, "checkpoint": {"path": str(tmp_path), "restore_from": "latest"}}
    job = Job(servers=2, workers=1, num_shards=4, fault_tolerance=restore)
    (s1, s2), _ = job.start()
    # the homes loaded the checkpoint; their backups still hold initial values
    assert job.status()["replication"] == {"factor": 1, "synced": 0, "unsynced": 4, "minCopies": 0}
    job.tell(s2, MsgType.REPLICA_SYNCED, {"epoch": 1, "home": s1, "shards": [0, 1]})
    job.tell(s1, MsgType.REPLICA_SYNCED, {"epoch": 1, "home": s2, "shards": [2, 3]})
    assert job.status()["replication"] == {"factor": 1, "synced": 4, "unsynced": 0, "minCopies": 1}


def test_a_drained_middle_of_a_chain_leaves_its_successors_synced() -> None:
    """The middle of a chain drains: it stays until the new backup at the end is synced,
    and the hand-over commit (after the home's marker passed every synced backup) keeps
    the last backup counted, whose predecessor changed: nothing the middle passed on can
    arrive after the change.  Before, the middle left the chain at once and the last
    backup was not counted until the home's sync reached it."""
    job = Job(servers=4, workers=1, num_shards=8, fault_tolerance={"replication": 2})
    job.start()
    homes = job.coordinator.homes
    before = homes.shard_map
    assert before is not None
    assert before.backups is not None
    home, middle, last = int(before.homes[0]), int(before.backups[0, 0]), int(before.backups[0, 1])
    job.tell(middle, MsgType.LEAVE, {"reason": "drain requested"})
    while moves := job.wire.take(MsgType.MIGRATE_OUT):  # the middle's own shards move away
        for source, out in moves:
            assert "leaving" not in out, "a hand-over started before its new backup synced"
            land(job, source, out)
    during = homes.shard_map
    assert during is not None
    assert during.backups is not None
    chain = [int(b) for b in during.backups[0]]
    assert chain[:2] == [middle, last]
    assert homes.replicas.synced[0, :2].all(), "the drain cost a synced copy"
    new = chain[2]
    job.tell(new, MsgType.REPLICA_SYNCED, {"epoch": during.epoch, "home": home, "shards": [0]})
    handovers = [(h, out) for h, out in job.wire.take(MsgType.MIGRATE_OUT) if 0 in out["shards"]]
    assert handovers, "no hand-over once the new backup synced"
    land(job, *handovers[0])
    after = homes.shard_map
    assert after is not None
    assert after.backups is not None
    assert [int(b) for b in after.backups[0] if b != NO_BACKUP] == [last, new]
    assert homes.replicas.synced[0].sum() == 2, "the last backup stopped counting"


def test_backups_after_one_whose_predecessor_changed_count_only_after_the_sync() -> None:
    """Should a chain ever drop a server that lives on without a hand-over (the first of
    three backups here), the second acknowledges the rows the dropped one was passing on
    without keeping them, and the third, whose predecessor did not change, lacks them
    too: neither counts until the home's sync at the new epoch reaches it."""
    homes = np.zeros(1, dtype=np.int16)
    old = ShardMap(1, 1, Partition.RANGE, homes + 1, np.asarray([[2, 3, 4]], dtype=np.int16))
    new = ShardMap(2, 1, Partition.RANGE, homes + 1, np.asarray([[3, 4, 5]], dtype=np.int16))
    replicas = Replicas(1, 3)
    replicas.reset(old, synced=True)
    replicas.follow(old, new, members=[1, 2, 3, 4, 5])  # 2 lives on
    assert not replicas.synced.any()
    stale = control.ReplicaSynced(epoch=1, home=1, shards=[0])
    assert replicas.confirm(4, stale, new) == 0
    for backup in (3, 4, 5):
        assert replicas.confirm(backup, control.ReplicaSynced(epoch=2, home=1, shards=[0]), new) == 1
    lost = Replicas(1, 3)
    lost.reset(old, synced=True)
    lost.follow(old, new, members=[1, 3, 4, 5])  # 2 was lost: its rows are dropped unacknowledged
    assert lost.synced[0].tolist() == [True, True, False, False]


def rebuild_without_server_3(
    job: Job, claimed_epoch: int, claims: dict[int, list[dict[str, Any]]] | None = None
) -> None:
    """A restarted coordinator hears servers 1 and 2 and worker 4; all knew server 3 (home of
    shards 4 and 5, backed up by server 1), which died while the coordinator was away.
    Server 1 says in its REJOIN that it holds synced replicas of shards 4 and 5 from server 3,
    as of ``claimed_epoch``; the map the nodes had is of epoch 5."""
    doc = shard_map_doc([1, 1, 2, 2, 3, 3], [[2], [2], [3], [3], [1], [1]], epoch=5)
    worker = {"role": "worker", "address": "tcp://w0", "name": "w0", "rank": 0, "client": "tcp://w0-program"}
    job.tell(1, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s0", "name": "s0"})
    job.tell(2, MsgType.HEARTBEAT, {"role": "server", "address": "tcp://s1", "name": "s1"})
    job.tell(4, MsgType.HEARTBEAT, worker)
    known = [[1, None], [2, None], [3, None], [4, 0]]
    if claims is None:
        claims = {1: [{"epoch": claimed_epoch, "home": 3, "shards": [4, 5]}]}
    for node in (1, 2, 4):
        rejoin = {
            "heartbeat": worker,
            "shard_map": doc,
            "highest_node_id": 4,
            "members": known,
            "members_version": 6,
            "replicas": claims.get(node, []),
        }
        job.tell(node, MsgType.REJOIN, rejoin)
    job.clock.now += 1.5
    job.coordinator.tick()
    assert job.phase() is JobPhase.ADOPTING  # server 3 may still come
    adoption = job.coordinator.adoption
    job.clock.now += max(adoption.quiet * 5, adoption.missing_wait)
    job.coordinator.tick()
    assert job.phase() is JobPhase.RUNNING
    assert 3 in job.status()["lost"]


def test_a_home_lost_while_the_coordinator_was_away_is_rebuilt_from_the_replica_its_backup_named() -> None:
    """The backup passed on its home's REPLICA_SYNCED of the epoch before the coordinator
    died; the replacement, told so in its REJOIN, counts on the replica as the one before
    would have: the lost home's shards come from it and no loss is reported."""
    job = Job(servers=3, workers=1, num_shards=6, **REPLICATED)
    rebuild_without_server_3(job, claimed_epoch=5)
    [(home, recover)] = [(h, b) for h, b in job.wire.take(MsgType.RECOVER) if b["shards"] == [4, 5]]
    assert (home, recover["source"]) == (1, "replica")
    assert job.status()["dataLoss"] == []


def test_a_replica_named_for_an_older_epoch_does_not_count_after_a_restart() -> None:
    """A report of an epoch before the adopted map's says nothing of that epoch's chains:
    the loss is reported, as before backups named their replicas."""
    job = Job(servers=3, workers=1, num_shards=6, **REPLICATED)
    rebuild_without_server_3(job, claimed_epoch=4)
    [loss] = job.status()["dataLoss"]
    assert (loss["cause"], loss["server"], loss["shards"]) == ("replicas-exhausted", 3, [4, 5])


def test_replicas_a_rejoin_names_wrongly_do_not_count() -> None:
    """Claims of the right epoch that the map contradicts are not taken: a server that is no
    backup of the shards, the wrong home, shards out of range. The loss is reported."""
    job = Job(servers=3, workers=1, num_shards=6, **REPLICATED)
    wrong = {
        2: [{"epoch": 5, "home": 3, "shards": [4, 5]}],  # server 2 backs up shards 2 and 3 only
        1: [{"epoch": 5, "home": 2, "shards": [4, 5]}, {"epoch": 5, "home": 3, "shards": [99, -1]}],
    }
    rebuild_without_server_3(job, claimed_epoch=5, claims=wrong)
    [loss] = job.status()["dataLoss"]
    assert (loss["cause"], loss["server"], loss["shards"]) == ("replicas-exhausted", 3, [4, 5])
