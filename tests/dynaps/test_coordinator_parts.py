"""The coordinator's decisions that need no coordinator: pure parts, tested alone."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaps.contract import DataLossCause, Partition
from dynaps.coordinator.adoption import Adoption
from dynaps.coordinator.backup_chains import choose_backups
from dynaps.coordinator.barriers import Barriers, MinClock
from dynaps.coordinator.data_loss import STATUS_ENTRIES, STATUS_SHARDS, DataLoss
from dynaps.coordinator.liveness import Liveness
from dynaps.coordinator.process import PACE_SECONDS, turn_pace
from dynaps.coordinator.replicas import RecoveryGroup, Replicas, _follow_chains, plan_recovery
from dynaps.coordinator.reports import MAX_NAME_LENGTH, MAX_REPORTED_NAMES, Reports
from dynaps.coordinator.roster import Member, MemberState, Roster
from dynaps.store.shardmap import NO_BACKUP, ShardMap, shard_of
from dynaps.wire import control
from dynaps.wire.control import RecoverySource, Rejoin


def test_a_lost_servers_shards_go_to_their_backups_or_else_the_least_loaded() -> None:
    homes = np.array([1, 1, 2, 2, 2, 3], dtype=np.int16)
    backups = np.array([[2], [2], [1], [1], [1], [1]], dtype=np.int16)  # one column per backup slot
    synced = np.ones((6, 1), dtype=np.bool_)
    new, plan = plan_recovery(homes, backups, synced, 2, [1, 3], checkpoint=False)
    assert new.tolist() == [1, 1, 1, 1, 1, 3]
    assert plan == [RecoveryGroup(1, RecoverySource.REPLICA, None, [2, 3, 4])]
    # without replication: least loaded first, the lower id on a tie, from initial values
    new, plan = plan_recovery(homes, None, synced, 2, [1, 3], checkpoint=False)
    assert new.tolist() == [1, 1, 3, 1, 3, 3]
    assert plan == [
        RecoveryGroup(1, RecoverySource.INITIAL, DataLossCause.INITIAL, [3]),
        RecoveryGroup(3, RecoverySource.INITIAL, DataLossCause.INITIAL, [2, 4]),
    ]


def test_a_backup_whose_sync_is_not_confirmed_is_no_replica() -> None:
    homes = np.array([1, 2, 2, 2], dtype=np.int16)
    backups = np.array([[2], [1], [1], [3]], dtype=np.int16)
    synced = np.array([[True], [True], [False], [True]])
    _, plan = plan_recovery(homes, backups, synced, 2, [1, 3], checkpoint=False)
    assert plan == [
        RecoveryGroup(1, RecoverySource.REPLICA, None, [1]),
        RecoveryGroup(1, RecoverySource.REPLICA, DataLossCause.REPLICAS_EXHAUSTED, [2]),
        RecoveryGroup(3, RecoverySource.REPLICA, None, [3]),
    ]
    # with a checkpoint, the unsynced shard goes back to it; a shard without a live backup too
    _, plan = plan_recovery(homes, backups, synced, 2, [1], checkpoint=True)
    assert plan == [
        RecoveryGroup(1, RecoverySource.REPLICA, None, [1]),
        RecoveryGroup(1, RecoverySource.CHECKPOINT, DataLossCause.CHECKPOINT, [2, 3]),
    ]


def test_backups_stay_while_valid_and_move_to_the_least_loaded_server() -> None:
    homes = np.array([1, 1, 2, 2, 3, 3], dtype=np.int16)
    first = np.array([[2], [2], [3], [3], [1], [1]], dtype=np.int16)  # the first map's: the next server
    # a fourth server joins: nothing moves; server 3 leaves: only what it backed up moves
    assert choose_backups(homes, first, [1, 2, 3, 4], 1).tolist() == first.tolist()
    moved = choose_backups(np.array([1, 1, 2, 2, 4, 4], dtype=np.int16), first, [1, 2, 4], 1)[:, 0]
    kept = first[:, 0] != 3
    assert moved[kept].tolist() == first[kept, 0].tolist()
    assert 3 not in moved.tolist()
    assert (moved != np.array([1, 1, 2, 2, 4, 4])).all()
    assert choose_backups(homes[:2], None, [1], 1).tolist() == [[-1], [-1]]  # one server: no backup


def test_silence_loses_a_node_later_than_a_dropped_connection() -> None:
    liveness = Liveness.for_heartbeat(0.2)
    roster = Roster(2, 0, clock=lambda: 0.0)
    quiet, dropped = roster.admit("server", "a", "a", 0, None), roster.admit("server", "b", "b", 0, None)
    assert not isinstance(quiet, str)
    assert not isinstance(dropped, str)
    quiet.state = dropped.state = MemberState.READY
    dropped.disconnected(0.1)
    assert liveness.overdue(roster.active(), 0.1 + liveness.grace_after_disconnect / 2) == []
    assert liveness.overdue(roster.active(), 0.1 + liveness.grace_after_disconnect) == [dropped]
    dropped.reconnected()  # zmq connected to it again, and it speaks
    dropped.heard(0.5)
    assert liveness.overdue(roster.active(), 1.0) == []
    assert liveness.overdue(roster.active(), liveness.lost_after + 0.01) == [quiet]


@pytest.mark.parametrize("heartbeat", [0.2, 15.0])  # 15 s: lost_after (150 s) above the join timeout
def test_among_a_thousand_members_only_the_silent_ones_are_lost_on_time(heartbeat: float) -> None:
    """Members well inside their limits are skipped after one test (issue 15): the silent one,
    the joining one past its timeout and the dropped one are still found, not a tick late."""
    liveness = Liveness.for_heartbeat(heartbeat, silent_node_timeout=0.0)
    roster = Roster(1000, 0, clock=lambda: 0.0)
    members = [roster.admit("server", f"s{i}", f"s{i}", 0, None) for i in range(1000)]
    assert all(not isinstance(m, str) for m in members)
    live = [m for m in members if not isinstance(m, str)]
    for member in live[1:]:
        member.state = MemberState.READY
    joining, silent, dropped = live[0], live[500], live[999]  # joining: never READY
    limit = min(liveness.lost_after, liveness.join_timeout)
    now = 1000.0
    for member in live:
        member.heard(now - limit / 2)
    silent.heard(now - liveness.lost_after - 0.01)
    joining.heard(now - liveness.join_timeout - 0.01)
    dropped.disconnected(now - liveness.grace_after_disconnect - 0.01)
    assert liveness.overdue(reversed(roster.members.values()), now) == [joining, silent, dropped]  # id order
    silent.heard(now - liveness.lost_after + 0.01)  # just inside: not yet
    assert silent not in liveness.overdue(roster.members.values(), now)


def test_a_message_read_after_the_drop_does_not_keep_a_dropped_node() -> None:
    """A dead node's last heartbeat can be read after its connection's drop was noted (it waited
    in the inbox): only zmq connecting to it again ends the suspicion."""
    liveness = Liveness.for_heartbeat(0.2)
    roster = Roster(1, 0, clock=lambda: 0.0)
    dead = roster.admit("server", "a", "a", 0, None)
    assert not isinstance(dead, str)
    dead.state = MemberState.READY
    dead.disconnected(1.0)
    dead.heard(1.01)  # sent before it died, read after the drop
    assert liveness.overdue(roster.active(), 1.0 + liveness.grace_after_disconnect + 0.01) == [dead]


def test_silence_is_not_judged_while_the_coordinator_is_behind_its_inbox_or_after_it_stalled() -> None:
    """Heartbeats that wait unread in the coordinator's inbox are not silence: it judges silence
    only when it read everything and did not stall before the look; drops count always."""
    liveness = Liveness.for_heartbeat(0.2)
    roster = Roster(3, 0, clock=lambda: 0.0)
    members = [roster.admit("server", n, n, 0, None) for n in "abc"]
    assert all(isinstance(m, Member) for m in members)
    talker, mute, dropped = (m for m in members if isinstance(m, Member))
    for member in (talker, mute, dropped):
        member.state = MemberState.READY
    assert liveness.overdue(roster.active(), 0.1) == []
    dropped.disconnected(4.9)
    later = liveness.lost_after + 2.0
    # the coordinator was busy for seconds: nobody is silent for that, the drop still counts
    assert liveness.overdue(roster.active(), later, caught_up=False) == [dropped]
    roster.remove(dropped, lost=True)
    talker.heard(later + 0.01)  # its heartbeats are read now
    assert liveness.overdue(roster.active(), later + 0.05, caught_up=False) == []  # more unread
    assert liveness.overdue(roster.active(), later + 0.1) == [mute]  # read up: only the mute one


def test_a_barrier_passes_once_every_running_client_reached_it_or_a_later_one() -> None:
    barriers = Barriers()
    barriers.reach(10, 0)
    assert barriers.settle([10, 11]) == (-1, [])
    barriers.reach(11, 1)  # went on already (it passed 0 before a coordinator restart)
    assert barriers.settle([10, 11]) == (0, [10])
    assert barriers.settle([11]) == (1, [11])
    assert barriers.generation == 2


def test_the_minimum_clock_only_moves_forward() -> None:
    clock = MinClock()
    assert not clock.advance([])
    assert clock.advance([3, 2])
    assert clock.value == 2
    assert not clock.advance([1, 5])


def test_scaling_down_picks_the_highest_ranks_and_skips_the_draining() -> None:
    roster = Roster(1, 4)
    workers = [roster.admit("worker", f"w{i}", f"w{i}", 0, None) for i in range(4)]
    assert all(not isinstance(w, str) for w in workers)
    roster.members[4].state = MemberState.DRAINING
    assert [m.rank for m in roster.want("worker", 1)] == [2, 1]
    assert roster.desired["worker"] == 1
    assert roster.want("worker", 5) == []


def rejoin(
    epoch: int, members: list[tuple[int, int | None]], version: int, lost: list[int] | None = None
) -> Rejoin:
    """A node's REJOIN: its shard map's epoch, the members of its last membership (named
    ``pod-<id>``) and that membership's version, and whom it lists as lost."""
    heartbeat = control.Heartbeat(role="server", address="tcp://x")
    return Rejoin(
        heartbeat=heartbeat,
        shard_map={"epoch": epoch},
        members=members,
        members_version=version,
        member_names=[(node, f"pod-{node}") for node, _ in members],
        lost=lost or [],
    )


def test_an_adoption_waits_for_quiet_and_takes_the_newest_map() -> None:
    adoption = Adoption(quiet=1.0)
    adoption.heard(1, 0.0)
    adoption.heard(2, 0.5)
    adoption.rejoined(1, rejoin(3, [(1, None), (2, 0)], 5))
    assert not adoption.due(1.6)  # node 2 has not rejoined: wait longer
    assert adoption.due(6.6)
    adoption.rejoined(2, rejoin(4, [(1, None), (2, 0)], 5))
    adoption.rejoined(9, rejoin(9, [], 9))  # not being adopted: ignored
    assert adoption.due(1.6)
    assert adoption.newest_map() == {"epoch": 4}


def test_an_adoption_never_takes_back_a_node_declared_lost() -> None:
    """One paused through its loss may speak up to a replacement coordinator: it is not
    expected, its map is not taken, and it is remembered as lost."""
    adoption = Adoption(quiet=1.0, missing_wait=30.0)
    for node in (1, 2, 3):
        adoption.heard(node, 0.0)
    adoption.rejoined(1, rejoin(5, [(1, None), (2, 0)], 9, lost=[3]))
    adoption.rejoined(2, rejoin(5, [(1, None), (2, 0)], 9, lost=[3]))
    adoption.rejoined(3, rejoin(7, [(1, None), (2, 0), (3, 1)], 8))  # paused before its loss
    assert adoption.lost == {3}
    assert adoption.newest_map() == {"epoch": 5}
    assert adoption.missing() == {}


def test_an_adoption_waits_longer_for_a_member_the_others_knew() -> None:
    adoption = Adoption(quiet=1.0, missing_wait=30.0)
    adoption.heard(1, 0.0)
    adoption.rejoined(1, rejoin(3, [(1, None), (2, 0)], 5))
    assert adoption.missing() == {2: 0}
    assert not adoption.due(6.6)
    assert adoption.due(31.1)
    adoption.heard(2, 1.0)  # it came after all
    adoption.rejoined(2, rejoin(3, [(1, None), (2, 0)], 5))
    assert adoption.missing() == {}
    assert adoption.due(2.1)


def test_an_adoption_does_not_wait_for_a_member_whose_pod_registers_anew() -> None:
    """Its pod was recreated (the REGISTER under its name waits for the adoption): the old
    one is gone, and waiting out its silence would only hold the job and the new pod up."""
    adoption = Adoption(quiet=1.0, missing_wait=30.0)
    adoption.heard(1, 0.0)
    adoption.rejoined(1, rejoin(3, [(1, None), (2, 0), (3, 1)], 5))
    register = {"role": "worker", "address": "tcp://new", "nonce": "n", "config_digest": "d" * 16}
    adoption.defer(control.Register.model_validate({**register, "name": "pod-9"}))  # no such member
    assert not adoption.due(6.6)
    adoption.defer(control.Register.model_validate({**register, "name": "pod-2", "nonce": "m"}))
    assert adoption.replaced() == {2}
    assert not adoption.due(6.6)  # pod-3 is still awaited
    adoption.defer(control.Register.model_validate({**register, "name": "pod-3", "nonce": "o"}))
    assert adoption.due(1.1)
    assert adoption.missing() == {2: 0, 3: 1}  # both declared lost when the job goes on


def test_an_adoption_expects_the_members_of_the_newest_membership_only() -> None:
    """A node that lags may still list a member that left since: it never answers."""
    adoption = Adoption(quiet=1.0, missing_wait=30.0)
    adoption.heard(1, 0.0)
    adoption.heard(2, 0.0)
    adoption.rejoined(1, rejoin(3, [(1, None), (2, 0), (3, 1)], 6))  # before node 3 left
    adoption.rejoined(2, rejoin(3, [(1, None), (2, 0)], 7))
    adoption.rejoined(1, rejoin(3, [(1, None), (2, 0), (3, 1)], 6))  # said again: still older
    assert adoption.missing() == {}
    assert adoption.due(1.1)


def test_a_loss_counts_the_keys_of_its_shards_over_all_tables() -> None:
    ranged, hashed = DataLoss([64, 10], 8, "range"), DataLoss([64, 10], 8, "hash")
    assert ranged.keys_in([0]) == 8 + 2  # keys [0, 8) and [0, 2)
    assert ranged.keys_in(list(range(8))) == hashed.keys_in(list(range(8))) == 74
    expected = sum(
        int(np.isin(shard_of(np.arange(n, dtype=np.int64), n, 8, "hash"), [1, 2]).sum()) for n in (64, 10)
    )
    assert hashed.keys_in([1, 2]) == expected


def test_the_status_of_losses_stays_bounded_and_the_totals_count_them_all() -> None:
    losses = DataLoss([10_000], 1000, "range")
    every_shard = list(range(1000))
    for recovery in range(STATUS_ENTRIES + 5):
        losses.record(DataLossCause.INITIAL, 7, recovery + 1, every_shard, recovery, None)
    shown = losses.status()
    assert len(shown) == STATUS_ENTRIES
    assert shown[-1]["epoch"] == STATUS_ENTRIES + 5  # the latest are kept
    assert len(shown[0]["shards"]) == STATUS_SHARDS
    assert shown[0]["shardCount"] == 1000
    assert losses.totals() == {"entries": STATUS_ENTRIES + 5, "keys": (STATUS_ENTRIES + 5) * 10_000}


def test_reported_names_are_bounded_where_they_arrive() -> None:
    """A program reporting a new name every step must not grow /status, the job object in
    etcd and the scrape without end: past the limit new names are dropped and counted,
    while the names already kept still take new values."""
    reports = Reports()
    for step in range(MAX_REPORTED_NAMES + 6):
        reports.add(0, {f"loss_at_step_{step}": float(step)})
    assert len(reports.metrics) == MAX_REPORTED_NAMES
    assert len(reports.by_rank["0"]) == MAX_REPORTED_NAMES
    assert reports.dropped == 6
    reports.add(1, {"loss_at_step_0": 9.0, "x" * (MAX_NAME_LENGTH + 1): 1.0})
    assert reports.metrics["loss_at_step_0"] == 9.0
    assert reports.by_rank["1"] == {"loss_at_step_0": 9.0}
    assert reports.dropped == 7


def test_the_coordinator_paces_its_turns_only_at_a_thousand_heartbeats_a_second() -> None:
    """Below that rate a barrier or clock message is never held back; at 1,000 nodes a turn
    per heartbeat cost a wake-up each."""
    assert turn_pace(10, 200) == 0.0
    assert turn_pace(199, 200) == 0.0
    assert turn_pace(200, 200) == PACE_SECONDS
    assert turn_pace(1000, 200) == PACE_SECONDS
    assert turn_pace(1000, 2000) == 0.0  # 500 a second


@st.composite
def chain_changes(draw: st.DrawFn) -> tuple[ShardMap, ShardMap, Replicas, list[int], list[int]]:
    """A map, the next one (some homes and backups changed), what the backups were known to
    hold, the shards a migration moved, the servers still members."""
    num_shards, copies = draw(st.integers(1, 12)), draw(st.integers(1, 3))
    ids = st.integers(1, 6)
    cell = st.one_of(ids, st.just(NO_BACKUP))

    def column(values: st.SearchStrategy[int], width: int) -> npt.NDArray[np.int16]:
        row = st.lists(values, min_size=width, max_size=width)
        return np.asarray(draw(st.lists(row, min_size=num_shards, max_size=num_shards)), dtype=np.int16)

    old = ShardMap(3, num_shards, Partition.RANGE, column(ids, 1)[:, 0], column(cell, copies))
    keep = np.asarray(draw(st.lists(st.booleans(), min_size=num_shards, max_size=num_shards)))
    homes = np.where(keep, old.homes, column(ids, 1)[:, 0]).astype(np.int16)
    width = draw(st.sampled_from([copies, copies + 1]))
    assert old.backups is not None
    fresh = column(cell, width)
    backups = fresh.copy()
    backups[keep, :copies] = old.backups[keep]  # kept rows keep their chains (and maybe a slot more)
    new = ShardMap(4, num_shards, Partition.RANGE, homes, backups)
    replicas = Replicas(num_shards, copies)
    size = replicas.synced.size
    known = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    replicas.synced[:] = np.asarray(known).reshape(replicas.synced.shape)
    replicas.since[:] = draw(st.integers(1, 3))
    flushed = sorted(draw(st.sets(st.integers(0, num_shards - 1))))
    members = sorted(draw(st.sets(ids)))
    return old, new, replicas, flushed, members


@settings(max_examples=300)
@given(chain_changes())
def test_following_only_the_changed_chains_gives_what_following_every_chain_gives(
    change: tuple[ShardMap, ShardMap, Replicas, list[int], list[int]],
) -> None:
    old, new, replicas, flushed, members = change
    slots = replicas.slots
    assert old.backups is not None
    moved = np.zeros((old.num_shards, 1), dtype=np.bool_)
    moved[flushed] = True
    every = _follow_chains(
        replicas.synced.copy(),
        replicas.since.copy(),
        np.column_stack([old.homes, old.backup_slots(slots)]),
        np.column_stack([new.homes, new.backup_slots(slots)]),
        moved,
        members,
        new.epoch,
    )
    replicas.follow(old, new, flushed, members)
    np.testing.assert_array_equal(replicas.synced, every[0])
    np.testing.assert_array_equal(replicas.since, every[1])
