"""The coordinator's decisions that need no coordinator: pure parts, tested alone."""

from __future__ import annotations

import numpy as np

from dynaps.coordinator.adoption import Adoption
from dynaps.coordinator.barriers import Barriers, MinClock
from dynaps.coordinator.liveness import Liveness
from dynaps.coordinator.roster import MemberState, Roster
from dynaps.coordinator.shard_homes import recovery_homes


def test_a_lost_servers_shards_go_to_their_backups_or_else_the_least_loaded() -> None:
    homes = np.array([1, 1, 2, 2, 2, 3], dtype=np.int16)
    backups = np.array([2, 2, 1, 1, 1, 1], dtype=np.int16)
    assert recovery_homes(homes, backups, 2, [1, 3]).tolist() == [1, 1, 1, 1, 1, 3]
    # least loaded first, the lower id on a tie
    assert recovery_homes(homes, None, 2, [1, 3]).tolist() == [1, 1, 3, 1, 3, 3]


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
    dropped.heard(0.5)  # it came back
    assert liveness.overdue(roster.active(), 1.0) == []
    assert liveness.overdue(roster.active(), liveness.lost_after + 0.01) == [quiet]


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


def test_an_adoption_waits_for_quiet_and_takes_the_newest_map() -> None:
    adoption = Adoption(quiet=1.0)
    adoption.heard(1, 0.0)
    adoption.heard(2, 0.5)
    adoption.rejoined(1, {"epoch": 3})
    assert not adoption.due(1.6)  # node 2 has not rejoined: wait longer
    assert adoption.due(6.6)
    adoption.rejoined(2, {"epoch": 4})
    adoption.rejoined(9, {"epoch": 9})  # not being adopted: ignored
    assert adoption.due(1.6)
    assert adoption.newest_map() == {"epoch": 4}
