"""The apps on real processes: one LocalCluster holding every app's tables, and `dynaps run`.

Static and dynamic runs of MF take the same synchronous steps in the same order, so they
must reach the same model; only where the keys live differs.  Likewise the dense app under
bsp takes the single-process baseline's steps with the global batch.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import dynaps
from dynaps.apps import dense, kge, kge_blocks, lr, mf, reporting, w2v
from dynaps.apps.inprocess import InProcessPS

from .test_apps import TINY_DENSE, TINY_KGE, TINY_LR, TINY_MF, TINY_W2V

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[dynaps.LocalCluster]:
    tables = {**mf.tables(TINY_MF), **kge.tables(TINY_KGE), **w2v.tables(TINY_W2V), **lr.tables(TINY_LR)}
    tables.update(dense.tables(TINY_DENSE))
    with dynaps.LocalCluster(servers=2, workers=2, tables=tables) as c:
        yield c


def test_mf_static_and_dynamic_reach_the_same_model(cluster: dynaps.LocalCluster) -> None:
    config = replace(TINY_MF, epochs=3)
    static = cluster.run(mf.train, replace(config, allocation="static"))  # first: nothing localized yet
    dynamic = cluster.run(mf.train, config)
    for a, b in zip(static[0], static[1], strict=True):  # every worker reports the global figures
        assert (a["loss"], a["quality"], a["accesses"]) == (b["loss"], b["quality"], b["accesses"])
    assert all(r["local_share"] == 0.0 for r in static[0])
    assert dynamic[0][-1]["local_share"] == 1.0  # DSGD blocks: every training access is local
    for s, d in zip(static[0], dynamic[0], strict=True):
        assert d["quality"]["test RMSE"] == pytest.approx(s["quality"]["test RMSE"], rel=1e-5)
        assert d["loss"] == pytest.approx(s["loss"], rel=1e-5)


def test_kge_localizes_ahead_and_learns(cluster: dynaps.LocalCluster) -> None:
    reports = cluster.run(kge.train, replace(TINY_KGE, clustering="relations", neg_strategy="onlylocal"))[0]
    assert reports[-1]["quality"]["MRR"] > 0.1  # random ranking: about 0.02
    assert reports[-1]["local_share"] > 0.5


def hot_state(ps: dynaps.PS, config: kge.Config) -> tuple[dict[str, int], int, int]:
    """The entities' replica stats, the reads served by a replica, and how many of the hot
    entities this worker's node owns (localize leaves hot keys at their homes)."""
    data = kge.load(config)
    if config.clustering == "entities":
        blocks = kge_blocks.entity_blocks(data.train, len(data.entities), ps.num_workers)
        data = kge_blocks.renamed(data, blocks)
    hot = kge.hot_entities(data.train, len(data.entities), config.hot_keys)
    owned = int(ps.table("entities").local_mask(hot).sum())
    return ps.table("entities").hot_stats, ps.stats()["keys_pulled_cached"], owned


@pytest.mark.parametrize("clustering", ["relations", "entities"])
def test_kge_with_replicated_hot_entities_learns(clustering: str) -> None:
    # a cluster of its own: AdaGrad's state of an earlier KGE run stays with the keys
    # (``set`` resets values, not optimiser state), and the next run then barely learns
    config = replace(TINY_KGE, clustering=clustering, neg_strategy="onlylocal", hot_keys=0.1, hot_sync_ms=5)
    with dynaps.LocalCluster(servers=2, workers=2, tables=kge.tables(config)) as cluster:
        reports = cluster.run(kge.train, config)[0]
        after = cluster.run(hot_state, config)
    assert reports[-1]["quality"]["MRR"] > 0.1  # random ranking: about 0.02
    for stats, cached, owned in after:
        assert stats == {}  # train stops replicating (after a flush) when it ends
        assert cached > 0  # hot keys were read from a replica
        assert owned == 0  # and never relocated: every worker localized around them


def replicated_relations(ps: dynaps.PS) -> dict[str, int]:
    stats: dict[str, int] = ps.table("relations").hot_stats
    return stats


def test_kge_in_entity_blocks_learns_with_every_training_access_local() -> None:
    # clustering="entities", the default; relations synced every 100 ms and at barriers
    config = replace(TINY_KGE, hot_sync_ms=100)
    with dynaps.LocalCluster(servers=2, workers=2, tables=kge.tables(config)) as cluster:
        reports = cluster.run(kge.train, config)[0]
        after = cluster.run(replicated_relations)
    assert reports[-1]["quality"]["MRR"] > 0.1  # random ranking: about 0.02
    # entities: the round's two blocks, localized; relations: the replica (counted as
    # cached). Remote: only the replica's refreshes (4 relations each: 0.03-0.05 % of the
    # accesses in 4 runs syncing every 5 ms); the bound leaves room for a loaded machine
    assert reports[-1]["local_share"] > 0.98
    assert after == [{}, {}]  # the relations' replica is dropped (after a flush) when train ends


def messages_per_epoch(
    ps: dynaps.PS, train: Callable[[Any, Any], object], config: Any
) -> dict[int, tuple[int, int]]:
    """An app's ``train``, and this training process's messages sent and received inside
    each epoch (from the barrier that starts it to the one that ends it)."""
    marks: dict[tuple[str, int], tuple[int, int]] = {}

    def mark(phase: str, epoch: int) -> None:
        stats = ps.stats()
        marks[(phase, epoch)] = (stats["messages_sent"], stats["messages_received"])

    reporting.EPOCH_HOOKS.append(mark)
    try:
        train(ps, config)
    finally:
        reporting.EPOCH_HOOKS.remove(mark)
    return {
        epoch: (
            marks[("end", epoch)][0] - marks[("start", epoch)][0],
            marks[("end", epoch)][1] - marks[("start", epoch)][1],
        )
        for epoch in range(1, config.epochs + 1)
    }


def test_a_kge_round_costs_each_worker_a_handful_of_messages() -> None:
    """The message budget of entity blocks' rounds, which bench/README.md's census ("A faster
    machine, and fewer messages per KGE round") cut: a worker's round is one localize (a block
    that lines up with one home; none in an epoch's first round, which keeps the last one's
    blocks), one flush and one refresh of the relations' replica to their owner (rank 0's
    node: none for rank 0) and its barrier; the answers come as notices (the localize) or one
    message each. With no timed sync (an interval longer than the run) the counts are the
    same in every run: a second refresh per round or a block split over two homes fails."""
    workers = 4
    config = replace(TINY_KGE, epochs=2, hot_sync_ms=60_000)
    rounds = 2 * workers - 1
    with dynaps.LocalCluster(servers=workers, workers=workers, tables=kge.tables(config)) as cluster:
        counted = cluster.run(messages_per_epoch, kge.train, config)
    for rank, epochs in enumerate(counted):
        sent, received = epochs[2]  # the first epoch also localizes the first round's blocks
        replica = 0 if rank == 0 else 2 * rounds  # the relations' flushes and refreshes, with answers
        # barrier requests go straight to the coordinator (not counted as sent); the
        # answers to a round's barriers and the epoch's closing one are counted
        assert sent <= (rounds - 1) + replica, (rank, epochs)
        assert received <= (rounds + 1) + replica, (rank, epochs)


def test_an_mf_sub_epoch_costs_each_worker_one_localize_and_a_barrier() -> None:
    """DSGD's message budget: a sub-epoch's column block is one localize (blocks line up with
    the homes), its barrier one answer; every training access is local."""
    workers = 4
    with dynaps.LocalCluster(servers=workers, workers=workers, tables=mf.tables(TINY_MF)) as cluster:
        counted = cluster.run(messages_per_epoch, mf.train, replace(TINY_MF, epochs=2))
    for rank, epochs in enumerate(counted):
        sent, received = epochs[2]
        assert sent <= workers, (rank, epochs)
        assert received <= workers + 1, (rank, epochs)  # the sub-epochs' barriers and the closing one


@pytest.mark.parametrize("hot_words", [None, 0.0], ids=["hot-words-replicated", "all-relocated"])
def test_w2v_two_workers_train_like_one(cluster: dynaps.LocalCluster, hot_words: float | None) -> None:
    # Two workers pushing from the same stale values act as one minibatch twice the size:
    # with word2vec's plain summed steps this diverged (loss 1e3 to 1e10 at the default
    # batch on this 300-word vocabulary); with the owners' AdaGrad steps it trains as one
    # process does (one epoch: P@10 0.79-0.83 against 0.84, loss 2.52-2.64 against 2.47; the
    # replicas' flushes sum a few minibatches into one step, so a little behind in epoch 1).
    config = replace(TINY_W2V, epochs=1, hot_words=hot_words)
    alone = w2v.train(InProcessPS(w2v.tables(config)), config)[-1]
    reports = cluster.run(w2v.train, config)  # negatives through the pool, words localized ahead
    two = reports[0][-1]
    assert alone["loss"] < 3.0  # untrained: (1 + neg) ln 2 = 4.16
    assert two["loss"] < 1.15 * alone["loss"]
    assert two["quality"]["topic P@10"] > alone["quality"]["topic P@10"] - 0.1  # chance: 0.05
    assert reports[1][-1]["quality"] == {}  # rank 0 evaluates
    # every one of the 300 words is in every minibatch: by default all are replicated, read
    # in the worker (relocated, the workers take them from each other: about half local)
    if hot_words is None:
        assert two["local_share"] > 0.85
    else:
        assert two["local_share"] < 0.75


def test_lr_with_server_side_adagrad(cluster: dynaps.LocalCluster) -> None:
    reports = cluster.run(lr.train, TINY_LR)[0]
    assert reports[-1]["quality"]["AUC"] > 0.6


def test_dense_asynchronous_sgd_learns(cluster: dynaps.LocalCluster) -> None:
    reports = cluster.run(dense.train, TINY_DENSE)  # the cluster runs consistency async
    for a, b in zip(reports[0], reports[1], strict=True):  # every worker reports the global figures
        assert (a["loss"], a["quality"]) == (b["loss"], b["quality"])
    assert reports[0][-1]["quality"]["test accuracy"] > 0.6  # chance: 0.1
    assert reports[0][-1]["local_share"] == 0.0  # the parameters stay on the servers


def test_dense_under_bsp_takes_the_baselines_steps_with_the_global_batch() -> None:
    config = replace(TINY_DENSE, epochs=2)
    with dynaps.LocalCluster(servers=2, workers=2, tables=dense.tables(config), consistency="bsp") as c:
        synchronous = c.run(dense.train, config)[0]
    alone = dense.train(InProcessPS(dense.tables(config)), replace(config, batch=2 * config.batch))
    for s, a in zip(synchronous, alone, strict=True):
        # the same examples and steps; only the order the servers add the two gradients in differs
        assert s["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert s["quality"]["test loss"] == pytest.approx(a["quality"]["test loss"], rel=1e-4)


def reduce_many(ps: dynaps.PS) -> list[list[float]]:
    reducer = reporting.Reducer(ps)
    return [reducer.sum([n * (ps.rank + 1), 1.0]).tolist() for n in range(8)]


def test_reductions_agree_on_every_worker(cluster: dynaps.LocalCluster) -> None:
    first, second = cluster.run(reduce_many)
    assert first == second == [[3.0 * n, 2.0] for n in range(8)]


def test_dynaps_run_a_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "mf.yaml"
    args = ["--rows", "300", "--cols", "300", "--rank", "4", "--entries", "20000", "--test-entries", "1000"]
    args += ["--epochs", "2", "--batch", "200"]
    tables = "\n".join(
        f"    - {{name: {name}, numKeys: {spec.num_keys}, dim: {spec.dim}, dtype: {spec.dtype}}}"
        for name, spec in mf.tables(TINY_MF).items()
    )
    manifest.write_text(
        "apiVersion: dynaps.io/v1alpha1\nkind: ParameterServerJob\nmetadata: {name: tiny-mf}\n"
        f"spec:\n  tables:\n{tables}\n  servers: {{replicas: 1}}\n  workers:\n    replicas: 2\n"
        f"    command: [python, -m, dynaps.apps.mf]\n    args: {args}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "dynaps", "run", str(manifest), "--allocation", "static"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # rank 0 prints the epochs; dynaps run prefixes its worker's lines with the worker's name
    lines = [line for line in done.stdout.splitlines() if line.startswith("[worker-0] [mf] epoch")]
    assert len(lines) == 2
    assert "local 0.0%" in lines[-1]
    assert "allocation static" in done.stderr
