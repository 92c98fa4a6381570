"""Where ``replication: k`` puts a shard's backups, through joins, drains and losses: the
real Coordinator in-process, the test playing the nodes (see test_coordinator_replicas.py).

The rule: after every change the coordinator commits, each shard has
``min(k, ready servers - 1)`` backups, on distinct ready servers, none of them its home,
and at most one draining server more, where it was, until its backups are handed over;
a backup that stays keeps its place in the chain (no needless sync).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaps.store.shardmap import NO_BACKUP, ShardMap
from dynaps.wire.protocol import MsgType
from tests.dynaps.test_coordinator_core import Job
from tests.dynaps.test_coordinator_replicas import add_server, land, lose

COPIES = 2


def current(job: Job) -> ShardMap:
    shard_map = job.coordinator.homes.shard_map
    assert shard_map is not None
    return shard_map


def check_placement(job: Job, before: ShardMap | None = None) -> None:
    shard_map = current(job)
    assert shard_map.backups is not None
    assert shard_map.backups.shape[0] == shard_map.num_shards
    assert shard_map.backups.shape[1] in (COPIES, COPIES + 1), "one slot more only for a leaver"
    ready = set(job.coordinator.roster.ready_servers())
    draining = set(job.coordinator.homes._lingering())
    for shard, (home, chain) in enumerate(
        zip(shard_map.homes.tolist(), shard_map.backups.tolist(), strict=True)
    ):
        placed = [b for b in chain if b != NO_BACKUP]
        assert chain[: len(placed)] == placed, f"shard {shard}: an empty slot before a backup {chain}"
        assert len(set(placed)) == len(placed), f"shard {shard}: a server twice in {chain}"
        assert home not in placed, f"shard {shard}: its home {home} backs it up"
        leaving = [b for b in placed if b not in ready]
        assert set(leaving) <= draining, f"shard {shard}: backups {placed} not ready nor draining ({ready})"
        assert len(leaving) <= 1, f"shard {shard}: two leavers in {chain}"
        staying = [b for b in placed if b in ready]
        assert len(staying) == min(COPIES, len(ready - {home})), f"shard {shard}: {chain}, ready {ready}"
        if before is not None and before.backups is not None:
            stayed = [b for b in before.backups[shard].tolist() if b in placed]
            assert [b for b in placed if b in stayed] == stayed, f"shard {shard}: kept backups reordered"


def sync_backups(job: Job) -> None:
    """Every backup reports the sync its home sent at this epoch (as the nodes do)."""
    shard_map = current(job)
    if shard_map.backups is None:
        return
    for slot in range(shard_map.backups.shape[1]):
        for backup in {int(b) for b in shard_map.backups[:, slot]} - {NO_BACKUP}:
            for home in {int(h) for h in shard_map.homes}:
                shards = np.flatnonzero((shard_map.backups[:, slot] == backup) & (shard_map.homes == home))
                if len(shards):
                    report = {"epoch": shard_map.epoch, "home": home, "shards": shards.tolist()}
                    job.tell(backup, MsgType.REPLICA_SYNCED, report)


def answer(job: Job) -> None:
    """Play the nodes until nothing is asked: migrations and hand-overs land, recoveries
    finish, backups report their syncs, each commit checked against the map before it."""
    while True:
        before = current(job)
        outs = job.wire.take(MsgType.MIGRATE_OUT)
        recovers = job.wire.take(MsgType.RECOVER)
        if not outs and not recovers:
            sync_backups(job)  # may start hand-overs
            if not any(kind is MsgType.MIGRATE_OUT for _, kind, _ in job.wire.sent):
                return
            continue
        for home, recover in recovers:
            job.tell(home, MsgType.RECOVERED, {"id": recover["id"], "keys": 0})
        for source, out in outs:
            land(job, source, out)
            check_placement(job, before)
            before = current(job)
        job.clock.now += 5.0  # the rebalance after a recovery is due
        for member in job.coordinator.roster.active():  # and nobody fell silent meanwhile
            job.tell(member.id, MsgType.HEARTBEAT, {"role": member.role, "address": member.address})
        job.coordinator.tick()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["join", "drain", "lose"]), min_size=1, max_size=6), st.data())
def test_every_change_leaves_k_distinct_ready_backups(steps: list[str], data: st.DataObject) -> None:
    job = Job(servers=4, workers=1, num_shards=12, fault_tolerance={"replication": COPIES})
    job.start()
    check_placement(job)
    joined = 0
    for step in steps:
        ready = job.coordinator.roster.ready_servers()
        before = current(job)
        if step == "join":
            joined += 1
            add_server(job, f"extra{joined}")
        elif len(ready) < 2:
            continue  # the last server neither drains nor dies here
        elif step == "drain":
            server = data.draw(st.sampled_from(ready))
            job.tell(server, MsgType.LEAVE, {"reason": "drain requested"})
            check_placement(job, before)  # it stays in the chains, each gets a new backup after
            answer(job)
            leftover = current(job).backups
            assert leftover is None or server not in leftover, "the drained server still backs up"
            job.tell(server, MsgType.LEFT)
        else:
            lose(job, data.draw(st.sampled_from(ready)))
        check_placement(job, before)
        answer(job)
        check_placement(job)


def test_a_lost_home_and_its_first_backup_leave_the_second_backup_as_home() -> None:
    job = Job(servers=4, workers=1, num_shards=8, fault_tolerance={"replication": COPIES})
    (s1, s2, s3, s4), _ = job.start()
    first = current(job)
    assert first.backups is not None
    assert first.backups[:2].tolist() == [[s2, s3], [s2, s3]]  # the chain follows the ids
    lose(job, s1)  # declared lost first: its shards go to s2, which is dead too
    lose(job, s2)
    recovers = job.wire.take(MsgType.RECOVER)
    assert (s3, [0, 1, 2, 3], "replica") in [(h, b["shards"], b["source"]) for h, b in recovers]
    assert job.status()["dataLoss"] == []
    shard_map = current(job)
    assert shard_map.backups is not None
    assert shard_map.homes[:4].tolist() == [s3] * 4
    assert shard_map.backups[:4].tolist() == [[s4, NO_BACKUP]] * 4  # all the two left can do
    status = job.status()["replication"]
    assert status["minCopies"] == 0  # s4 backed up s1's shards only once s3 syncs it
    job.tell(s4, MsgType.REPLICA_SYNCED, {"epoch": shard_map.epoch, "home": s3, "shards": [0, 1, 2, 3]})
    assert int(np.asarray(job.coordinator.homes.replicas.synced_copies()[:4]).min()) == 1


def test_a_drain_whose_moves_take_several_rounds() -> None:
    """The example hypothesis found (join, join, drain the newest): the drain's migrations
    run one after another, over several rounds of answer(), in which time passes."""
    job = Job(servers=4, workers=1, num_shards=12, fault_tolerance={"replication": COPIES})
    job.start()
    for joined in (1, 2):
        add_server(job, f"extra{joined}")
        answer(job)
    newest = max(job.coordinator.roster.ready_servers())
    before = current(job)
    job.tell(newest, MsgType.LEAVE, {"reason": "drain requested"})
    answer(job)
    job.tell(newest, MsgType.LEFT)
    check_placement(job, before)
    assert job.status()["lost"] == []
    assert newest not in current(job).homes
