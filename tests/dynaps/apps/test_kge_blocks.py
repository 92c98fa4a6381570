"""KGE's entity blocks: every triple trained once per epoch, never two workers on one entity."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaps.apps import common, kge, kge_blocks, synthetic
from dynaps.apps.kge_blocks import entity_blocks, handed_on, renamed, schedule, tournament
from dynaps.contract import Partition, RebalancePolicy
from dynaps.store.shardmap import ShardMap

from . import lockstep


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8, 16])
def test_the_tournament_pairs_every_two_blocks_once_and_hands_one_block_on(workers: int) -> None:
    rounds = handed_on(tournament(2 * workers))
    assert len(rounds) == 2 * workers - 1
    seen = [frozenset(pair) for pairs in rounds for pair in pairs]
    assert len(set(seen)) == len(seen) == workers * (2 * workers - 1)  # every pair, once
    for pairs in rounds:  # every block in exactly one pair of each round
        assert sorted(b for pair in pairs for b in pair) == list(range(2 * workers))
    for before, after in itertools.pairwise(rounds):
        for w in range(workers):  # a worker keeps one of its blocks: one block moves, not two
            assert set(before[w]) & set(after[w])


def test_odd_block_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="even number"):
        tournament(3)


@settings(max_examples=30, deadline=None)
@given(workers=st.integers(1, 6), seed=st.integers(0, 1000))
def test_each_triple_is_trained_once_per_epoch_by_a_worker_holding_its_ends(workers: int, seed: int) -> None:
    data = synthetic.knowledge_graph(200, 5, 1_500, seed=seed)
    blocks = entity_blocks(data.train, 200, workers)
    graph = renamed(data, blocks)
    plans = [schedule(graph.train, blocks, workers, me) for me in range(workers)]
    trained = np.concatenate([r.triples for plan in plans for r in plan])
    assert sorted(map(tuple, trained.tolist())) == sorted(map(tuple, graph.train.tolist()))
    for turn in range(2 * workers - 1):
        held = [plan[turn].blocks for plan in plans]
        assert len({b for pair in held for b in pair}) == 2 * workers  # no block held twice
        for plan in plans:
            part = plan[turn]
            for column in (0, 2):
                assert np.isin(blocks.block_of(part.triples[:, column]), part.blocks).all()


def test_blocks_are_ranges_of_about_equal_degree_and_renaming_keeps_the_graph() -> None:
    data = synthetic.knowledge_graph(1_000, 10, 10_000, seed=3)
    blocks = entity_blocks(data.train, 1_000, 4)
    assert blocks.count == 8
    assert (blocks.bounds[0], blocks.bounds[-1]) == (0, 1_000)
    graph = renamed(data, blocks)
    degree = np.bincount(graph.train[:, [0, 2]].ravel(), minlength=1_000)
    per_block = np.add.reduceat(degree, blocks.bounds[:-1])
    assert per_block.max() <= 1.1 * per_block.min()
    # the same triples under the new names: entity k is the old blocks.order[k]
    old = graph.train.copy()
    old[:, 0], old[:, 2] = blocks.order[old[:, 0]], blocks.order[old[:, 2]]
    assert (old == data.train).all()
    assert graph.entities == [data.entities[i] for i in blocks.order]


def test_negatives_come_from_the_two_blocks_of_the_round() -> None:
    blocks = kge_blocks.EntityBlocks(order=np.arange(100), bounds=np.array([0, 10, 40, 70, 100]))
    drawn = kge_blocks.negatives(blocks, (3, 1), 5_000, np.random.default_rng(0))
    assert set(np.unique(blocks.block_of(drawn)).tolist()) == {1, 3}
    assert abs((blocks.block_of(drawn) == 1).mean() - 0.5) < 0.05  # uniform over 60 entities, 30 each


@pytest.mark.parametrize(("workers", "bound"), [(2, 1.02), (4, 1.1), (8, 1.15)])
def test_the_rounds_work_is_even_across_workers(workers: int, bound: float) -> None:
    """Every worker waits at each round's barrier for the busiest, so an epoch lasts the sum of
    the rounds' largest shares. Each block's own bucket is placed to keep that near the mean:
    placed by block number instead (round c mod 2W-1), the busiest worker of each round had
    1.25x the mean in sum at 2 workers on this graph, 1.37x at 4 and 1.40x at 8."""
    data = synthetic.knowledge_graph(1_000, 20, 20_000, seed=0)
    blocks = entity_blocks(data.train, 1_000, workers)
    graph = renamed(data, blocks)
    plans = [schedule(graph.train, blocks, workers, me) for me in range(workers)]
    shares = np.array([[len(part.triples) for part in plan] for plan in plans])
    assert shares.max(axis=0).sum() <= bound * shares.sum() / workers


@pytest.mark.parametrize(("servers", "workers"), [(2, 2), (4, 4), (8, 8), (4, 8), (2, 8)])
def test_blocks_line_up_with_the_homes_key_ranges(servers: int, workers: int) -> None:
    """Each block lies within one home's keys, so its localize asks one home (degree-balanced
    blocks crossed most home bounds by an id or two, and each crossing doubled a localize's
    messages); the blocks stay balanced."""
    graph = synthetic.knowledge_graph(5_000, 50, 100_000, seed=1)
    job = SimpleNamespace(config=SimpleNamespace(servers=servers, rebalance_policy=RebalancePolicy()))
    starts = common.home_starts(job, 5_000)
    shard_map = ShardMap.initial(1024, Partition.RANGE, list(range(1, servers + 1)))
    homes = shard_map.home_of(np.arange(5_000), 5_000)
    assert starts == (np.flatnonzero(np.diff(homes)) + 1).tolist()

    def homes_per_block(blocks: kge_blocks.EntityBlocks) -> list[int]:
        return [len(set(homes[blocks.keys(b)].tolist())) for b in range(blocks.count)]

    blocks = entity_blocks(graph.train, 5_000, workers, starts)
    assert homes_per_block(blocks) == [1] * blocks.count
    if workers == 8:  # without them, 16 blocks of 312-313 ids drift off the homes' bounds
        assert max(homes_per_block(entity_blocks(graph.train, 5_000, workers))) == 2
    degree = np.bincount(graph.train[:, [0, 2]].ravel(), minlength=5_000)[blocks.order]
    per_block = np.add.reduceat(degree, blocks.bounds[:-1])
    assert per_block.max() <= 1.01 * per_block.min()


def test_home_starts_are_known_only_for_a_range_partitioned_job() -> None:
    policy = RebalancePolicy(partition=Partition.HASH)
    hashed = SimpleNamespace(config=SimpleNamespace(servers=4, rebalance_policy=policy))
    assert common.home_starts(hashed, 100) == []
    assert common.home_starts(SimpleNamespace(), 100) == []  # one process


@pytest.mark.parametrize(("workers", "warned"), [(2, False), (kge.MANY_BLOCKS, True)])
def test_many_workers_in_entity_blocks_are_told_of_the_ranking(
    workers: int, warned: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kge.Config(entities=200, relations=4, triples=2_000, dim=4, epochs=1, eval_triples=20)
    lockstep.run(kge.train, kge.tables(config), config, workers)
    said = capsys.readouterr().out
    assert "[kge] complex:" in said  # rank 0's notes are printed
    assert (
        "--hot-keys 200 --hot-sync-ms 50 (every entity replicated) ranks as one process does" in said
    ) == warned
