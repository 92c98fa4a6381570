"""Planning a rebalance (dynaps.coordinator.rebalance.plan_moves): balanced with the fewest
moves, as the module's rules state them, shard by shard."""

from __future__ import annotations

import collections

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaps.coordinator.rebalance import plan_moves


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
