"""Choosing the shards' backups (dynaps.coordinator.backup_chains): the rules applied shard by
shard, as the docstring states them, give what the vectorised choice gives, whatever the
homes, old chains, ready, lingering and handed servers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaps.coordinator.backup_chains import choose_backups
from dynaps.store.shardmap import NO_BACKUP


def the_rules_shard_by_shard(
    homes: Sequence[int],
    old: Sequence[Sequence[int]] | None,
    servers: Sequence[int],
    copies: int,
    lingering: Sequence[int],
    handed: Sequence[int],
) -> list[list[int]]:
    """Valid old backups kept in order (a lingering one once, not in a handed shard), then
    the empty slots, shard by shard, to the ready server backing up the fewest (lowest id)."""
    ready = set(servers)
    chains: list[list[int]] = []
    for shard, home in enumerate(homes):
        others = list(dict.fromkeys(b for b in ([] if old is None else old[shard]) if b != home))
        kept_ready = [b for b in others if b in ready][:copies]
        lingers = [] if shard in handed else [b for b in others if b in lingering][:1]
        chains.append([b for b in others if b in kept_ready or b in lingers])
    load = {s: sum(chain.count(s) for chain in chains) for s in ready}
    for home, chain in zip(homes, chains, strict=True):
        while sum(1 for b in chain if b in ready) < copies:
            candidates = [s for s in ready if s != home and s not in chain]
            if not candidates:
                break
            chosen = min(candidates, key=lambda s: (load[s], s))
            chain.append(chosen)
            load[chosen] += 1
    width = copies + 1 if any(len(chain) > copies for chain in chains) else copies
    return [chain + [NO_BACKUP] * (width - len(chain)) for chain in chains]


Chains = npt.NDArray[np.int16]
Situation = tuple[Chains, Chains | None, list[int], int, list[int], list[int]]


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    ids = st.integers(1, 9)
    num_shards = draw(st.integers(1, 30))
    copies = draw(st.integers(1, 3))
    homes = np.asarray(draw(st.lists(ids, min_size=num_shards, max_size=num_shards)), dtype=np.int16)
    old = None
    if draw(st.booleans()):
        width = draw(st.sampled_from([copies, copies + 1]))
        cells = st.one_of(ids, st.just(NO_BACKUP))
        row = st.lists(cells, min_size=width, max_size=width)
        old = np.asarray(draw(st.lists(row, min_size=num_shards, max_size=num_shards)), dtype=np.int16)
    servers = sorted(draw(st.sets(ids, max_size=8)))
    lingering = sorted(draw(st.sets(ids, max_size=2)) - set(servers))
    handed = sorted(draw(st.sets(st.integers(0, num_shards - 1), max_size=num_shards)))
    return homes, old, servers, copies, lingering, handed


@settings(max_examples=400)
@given(situations())
def test_the_vectorised_choice_follows_the_rules_shard_by_shard(situation: Situation) -> None:
    homes, old, servers, copies, lingering, handed = situation
    chosen = choose_backups(homes, old, servers, copies, lingering, handed)
    expected = the_rules_shard_by_shard(
        homes.tolist(), None if old is None else old.tolist(), servers, copies, lingering, handed
    )
    assert chosen.tolist() == expected


def test_most_rows_keep_their_backups_when_one_server_of_many_goes() -> None:
    """Only the rows that named the lost server change, each to a ready server."""
    servers = list(range(1, 101))
    homes = np.repeat(np.arange(1, 101), 100).astype(np.int16)
    old = np.stack([homes % 100 + 1, (homes + 1) % 100 + 1], axis=1).astype(np.int16)
    chosen = choose_backups(homes, old, servers[1:], 2)
    named = (old == 1).any(axis=1)
    assert (chosen[~named] == old[~named]).all()
    assert not (chosen == 1).any()
    assert (chosen[named] != homes[named, None]).all()
