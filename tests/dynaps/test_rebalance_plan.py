"""Planning a rebalance (dynaps.coordinator.rebalance): balanced with the fewest moves, as
the module's rules state them shard by shard, and which migrations run at once."""

from __future__ import annotations

import collections

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaps.coordinator.rebalance import Rebalancer, plan_moves


def the_rules_shard_by_shard(
    homes: list[int], staying: list[int], leaving: list[int]
) -> list[tuple[int, int, int]]:
    """Quotas to the most loaded first; a shard moves if its home leaves, is not staying,
    or is over quota (its last shards); the moves fill the deficits in server order."""
    counts = {s: homes.count(s) for s in staying}
    base, extra = divmod(len(homes), len(staying))
    by_load = sorted(staying, key=lambda s: (-counts[s], s))
    quota = {s: base + (1 if i < extra else 0) for i, s in enumerate(by_load)}
    surplus = [shard for shard, home in enumerate(homes) if home in leaving or home not in quota]
    for server in staying:
        over = counts[server] - quota[server]
        if over > 0:
            surplus.extend([shard for shard, home in enumerate(homes) if home == server][-over:])
    deficit = collections.deque(s for s in sorted(staying) for _ in range(max(0, quota[s] - counts[s])))
    moves = []
    for shard in sorted(surplus):
        if not deficit:
            break
        moves.append((shard, homes[shard], deficit.popleft()))
    return moves


@settings(max_examples=300)
@given(
    st.lists(st.integers(1, 8), min_size=1, max_size=60),
    st.sets(st.integers(1, 10), min_size=1, max_size=6),
    st.sets(st.integers(1, 10), max_size=2),
)
def test_the_plan_follows_the_rules_shard_by_shard(
    homes: list[int], staying: set[int], leaving: set[int]
) -> None:
    stay, leave = sorted(staying), sorted(leaving - staying)
    planned = plan_moves(np.asarray(homes, dtype=np.int16), stay, leave)
    assert planned == the_rules_shard_by_shard(homes, stay, leave)
    after = list(homes)
    for shard, source, target in planned:
        assert after[shard] == source
        after[shard] = target
    held = [after.count(s) for s in stay]  # every shard on a staying server, balanced
    assert sum(held) == len(homes)
    assert max(held) - min(held) <= 1


def test_a_joiner_receives_from_several_servers_at_once_and_each_sends_one_at_a_time() -> None:
    """Four servers of 4 shards each and a joiner: it takes a shard from each, four
    migrations running at once; a server sends one migration at a time."""
    homes = np.repeat(np.arange(1, 5), 4).astype(np.int16)
    rebalancer = Rebalancer(max_concurrent=4)
    rebalancer.replan(homes, [1, 2, 3, 4, 5], [])
    started = rebalancer.start_next()
    assert sorted(m.source for m in started) == [2, 3, 4]  # 16 over 5: 4 stay on server 1, 3 on the others
    assert {m.target for m in started} == {5}
    assert rebalancer.start_next() == []  # nothing else is queued
    # two moves from one server: the second waits for the first
    rebalancer = Rebalancer(max_concurrent=4, shards_per_migration=1)
    rebalancer.replan(np.array([1, 1, 1, 1], dtype=np.int16), [1, 2, 3], [])
    first = rebalancer.start_next()
    assert [(m.source, m.target) for m in first] == [(1, 2)]
    assert rebalancer.start_next() == []
    rebalancer.commit(first[0].id)
    assert [(m.source, m.target) for m in rebalancer.start_next()] == [(1, 3)]
