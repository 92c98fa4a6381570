"""Sampling strategies draw what the sampler says (chi-square, fixed seeds) and place keys as promised.

Unit tests run the strategies against an in-memory table whose ``localize`` takes effect
a few calls later, like a real asynchronous relocation; one integration test runs them on
a LocalCluster.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import dynaps
from dynaps.client.sampling import ALIAS_AFTER, Distribution, alias_table, make_strategy
from dynaps.errors import UsageError

NUM_KEYS = 50


def chi2_limit(df: int, z: float = 3.72) -> float:
    """Upper quantile of chi-square(df) (Wilson-Hilferty); z=3.72 is p = 1e-4."""
    return float(df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3)


def chi2(keys: npt.NDArray[np.int64], support: npt.NDArray[np.int64], p: npt.NDArray[np.float64]) -> float:
    counts = np.bincount(keys, minlength=NUM_KEYS)[support]
    assert counts.sum() == len(keys), "drew keys outside the support"
    expected = p * len(keys)
    return float(((counts - expected) ** 2 / expected).sum())


class FakeTable:
    """A table on 'this node': localize takes effect ``delay`` calls later."""

    name = "T"
    num_keys = NUM_KEYS
    static_allocation = False

    def __init__(
        self, local: npt.NDArray[np.bool_] | None = None, delay: int = 2, pinned: Any = None
    ) -> None:
        self.values = np.arange(NUM_KEYS, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
        self.local = np.zeros(NUM_KEYS, bool) if local is None else local.copy()
        self.delay = delay
        self.pinned = np.zeros(NUM_KEYS, bool) if pinned is None else pinned  # never become local
        self.in_flight: list[tuple[int, npt.NDArray[np.int64]]] = []
        self.calls = 0
        self.pulled_local = 0
        self.pulled_remote = 0

    def _tick(self) -> None:
        self.calls += 1
        arrived = [keys for due, keys in self.in_flight if due <= self.calls]
        self.in_flight = [(due, keys) for due, keys in self.in_flight if due > self.calls]
        for keys in arrived:
            self.local[keys[~self.pinned[keys]]] = True

    def pull(self, keys: Any, *, wait: bool = True) -> Any:
        self._tick()
        mine = self.local[keys]
        self.pulled_local += int(mine.sum())
        self.pulled_remote += int((~mine).sum())
        return self.values[keys]

    def localize(self, keys: Any, *, wait: bool = True) -> Any:
        self.in_flight.append((self.calls + self.delay, np.asarray(keys)))
        return None

    def local_mask(self, keys: Any) -> npt.NDArray[np.bool_]:
        mask: npt.NDArray[np.bool_] = self.local[np.asarray(keys)]
        return mask


ZIPF = Distribution.unigram(1.0 / np.arange(1, NUM_KEYS + 1), power=0.75)


def run(table: FakeTable, strategy: str, rounds: int, n: int, pulls: tuple[int, ...], **opts: Any) -> Any:
    s = make_strategy(table, ZIPF, strategy, seed=3, **opts)
    drawn = []
    for _ in range(rounds):
        h = s.prepare(n)
        for k in pulls:
            keys, values = s.pull(h, k)
            np.testing.assert_array_equal(values[:, 0], keys)  # values belong to the keys
            drawn.append(keys)
        s.finish(h)
    return np.concatenate(drawn), s


@pytest.mark.parametrize(
    ("strategy", "opts", "reuse"),
    [
        ("naive", {}, 1),
        ("preloc", {}, 1),
        ("pool", {"group_size": 64, "postpone": False}, 1),
        ("pool", {"group_size": 64, "postpone": True}, 1),
        ("pool", {"group_size": 32, "reuse": 4, "postpone": True}, 4),
    ],
)
def test_strategies_follow_the_sampler(strategy: str, opts: dict[str, Any], reuse: int) -> None:
    # Pulls of 6 + 6 out of 16 prepared: finish() sees leftovers, which pool must not drop.
    # A third of the keys never become local (another node keeps them), so postponing
    # that dropped leftovers would under-sample exactly those keys.
    table = FakeTable(pinned=np.arange(NUM_KEYS) % 3 == 0)
    keys, _ = run(table, strategy, rounds=2500, n=16, pulls=(6, 6), **opts)
    support, p = ZIPF.probabilities()
    # reuse r repeats every draw r times: the counts' variance grows r-fold (design effect)
    assert chi2(keys, support, p) / reuse < chi2_limit(NUM_KEYS - 1)


@pytest.mark.parametrize(
    "weights", [[5.0, 0.0, 1.0, 2.0], list(np.arange(1, 2_001) ** -0.75), [1.0], [3.0, 3.0]]
)
def test_the_alias_table_draws_each_key_with_its_weight_exactly(weights: list[float]) -> None:
    w = np.asarray(weights)
    accept, alias = alias_table(w)
    n = len(w)
    # key i: its own column's kept share, plus the rest of every column that aliases to it
    implied = accept.copy()
    np.add.at(implied, alias, 1.0 - accept)
    np.testing.assert_allclose(implied / n, w / w.sum(), rtol=1e-9, atol=1e-12)
    assert accept[w == 0].tolist() == [0.0] * int((w == 0).sum())  # never kept, never an alias
    assert not np.isin(np.flatnonzero(w == 0), alias[accept < 1]).any()


def test_draws_switch_to_the_alias_table_and_keep_the_law() -> None:
    sampler = Distribution.from_weights(np.arange(1, NUM_KEYS + 1) ** -1.0)
    rng = np.random.default_rng(3)
    keys = np.concatenate([sampler.draw(rng, 4_000) for _ in range(ALIAS_AFTER + 3)])
    assert sampler._alias is not None  # the switch is what is tested
    support, p = sampler.probabilities()
    assert chi2(keys, support, p) < chi2_limit(NUM_KEYS - 1)


def test_chi2_check_detects_a_wrong_distribution() -> None:
    """The check above has power: uniform draws fail it against the Zipf sampler."""
    keys, _ = run(FakeTable(), "naive", rounds=2500, n=16, pulls=(12,))
    support, p = Distribution.uniform(0, NUM_KEYS).probabilities()
    assert chi2(keys, support, p) > 10 * chi2_limit(NUM_KEYS - 1)


def test_preloc_and_pool_make_pulls_local() -> None:
    naive, preloc, pool = FakeTable(), FakeTable(), FakeTable()
    run(naive, "naive", rounds=300, n=16, pulls=(16,))
    run(preloc, "preloc", rounds=300, n=16, pulls=(16,))
    run(pool, "pool", rounds=300, n=16, pulls=(16,), group_size=64)
    assert naive.pulled_local == 0
    # keys land 2 calls after localize: preloc's next pull comes first, later ones hit
    assert preloc.pulled_local > 0.7 * (preloc.pulled_local + preloc.pulled_remote)
    assert pool.pulled_remote < 0.02 * (pool.pulled_local + pool.pulled_remote)


def test_postpone_takes_local_draws_first_and_keeps_the_rest() -> None:
    table = FakeTable(delay=10_000)  # localize never lands: locality is what we set here
    table.local[: NUM_KEYS // 2] = True
    s = make_strategy(table, ZIPF, "pool", seed=1, group_size=40, postpone=True)
    h = s.prepare(40)
    assert h.keys is not None
    prepared = sorted(h.keys.tolist())
    first, _ = s.pull(h, 10)
    local_count = int(table.local[h.keys].sum())
    assert 0 < local_count < 40
    assert table.local[first].sum() == min(10, local_count)
    rest, _ = s.pull(h, 30)
    assert sorted([*first.tolist(), *rest.tolist()]) == prepared  # reordered, none dropped
    assert s.stats["postponed"] > 0


def test_finish_returns_unused_pool_draws_to_the_front() -> None:
    s = make_strategy(FakeTable(), ZIPF, "pool", seed=2, group_size=8, postpone=False)
    h = s.prepare(8)
    assert h.keys is not None
    s.pull(h, 3)
    left = h.keys[3:].copy()
    s.finish(h)
    again = s.prepare(5)
    assert again.keys is not None
    np.testing.assert_array_equal(again.keys, left)


def test_onlylocal_draws_local_keys_from_the_conditioned_distribution() -> None:
    """onlylocal is biased by design: it follows the sampler restricted to local keys."""
    local = np.zeros(NUM_KEYS, bool)
    local[1::3] = True
    table = FakeTable(local=local, delay=10_000)
    keys, _ = run(table, "onlylocal", rounds=1500, n=20, pulls=(10, 10))
    assert table.pulled_remote == 0
    restricted = ZIPF.restricted(lambda k: local[k])
    assert restricted is not None
    support, p = restricted.probabilities()
    assert chi2(keys, support, p) < chi2_limit(len(support) - 1)
    assert not np.isin(keys, np.flatnonzero(~local)).any()


def test_onlylocal_with_static_allocation_says_what_to_do() -> None:
    table = FakeTable()
    table.static_allocation = True
    s = make_strategy(table, Distribution.uniform(0, NUM_KEYS), "onlylocal", seed=0)
    with pytest.raises(UsageError, match="allocation static"):
        s.pull(s.prepare(4), 4)


@pytest.mark.parametrize(
    "sampler", [Distribution.uniform(0, NUM_KEYS), lambda rng, n: rng.integers(0, 50, n)]
)
def test_onlylocal_when_local_keys_left_draws_remote_keys_and_counts_them(sampler: Any) -> None:
    """Keys that moved away must not stall sampling (it once looped for ever)."""
    local = np.zeros(NUM_KEYS, bool)
    local[7] = True
    table = FakeTable(local=local)
    s = make_strategy(table, sampler, "onlylocal", seed=0)
    first, _ = s.pull(s.prepare(4), 4)
    assert (first == 7).all()
    table.local[:] = False  # another worker localized the last local key
    keys, values = s.pull(s.prepare(6), 6)
    assert len(keys) == 6
    assert values.shape == (6, 2)
    assert s.stats["not_local"] == 6


def test_custom_draw_function_and_uniform_default() -> None:
    table = FakeTable()
    s = make_strategy(table, lambda rng, n: rng.integers(10, 20, n), "naive", seed=0)
    keys, _ = s.pull(s.prepare(100), 100)
    assert keys.min() >= 10
    assert keys.max() < 20
    keys, _ = make_strategy(table, None, seed=0).pull(make_strategy(table).prepare(1), 1)
    assert 0 <= keys[0] < NUM_KEYS


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: make_strategy(t, None, "fancy"), "unknown sampling strategy"),
        (lambda t: make_strategy(t, None, "pool", group_sise=4), "unknown pool options"),
        (lambda t: make_strategy(t, None, "naive", reuse=2), "pool strategy only"),
        (lambda t: make_strategy(t, Distribution.uniform(0, 99)), "outside table"),
        (lambda t: make_strategy(t, None, "pool", reuse=0), "reuse must be"),
        (lambda t: make_strategy(t, "zipf"), "sampler must be"),
        (lambda t: Distribution.from_weights([0, 0]), "not all zero"),
    ],
)
def test_mistakes_raise_usage_errors(call: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call(FakeTable())


def test_pulling_more_than_prepared_or_after_finish_fails() -> None:
    s = make_strategy(FakeTable(), None, "naive", seed=0)
    h = s.prepare(4)
    s.pull(h, 3)
    with pytest.raises(UsageError, match="1 of its 4"):
        s.pull(h, 2)
    s.finish(h)
    with pytest.raises(UsageError, match="finished"):
        s.pull(h, 1)


# ----------------------------------------------------------------------------- real cluster


def sample_on_cluster(ps: dynaps.PS, strategy: str) -> dict[str, Any]:
    W = ps.table("W")
    if ps.rank == 0:
        W.set(np.arange(W.num_keys), np.repeat(np.arange(W.num_keys)[:, None], W.dim, axis=1))
    ps.barrier()
    counts = np.arange(1, W.num_keys + 1)[::-1].astype(float)
    options = {"group_size": 64} if strategy == "pool" else {}
    W.set_sampler(Distribution.unigram(counts), strategy, seed=ps.rank, **options)
    before = ps.stats()
    drawn = []
    for _ in range(60):
        h = W.prepare_sample(32)
        keys, values = W.pull_sample(h, 32)
        assert (values == keys[:, None]).all()
        drawn.append(keys)
        W.finish_sample(h)
    after = ps.stats()
    ps.barrier()
    return {
        "local": after["keys_pulled_local"] - before["keys_pulled_local"],
        "remote": after["keys_pulled_remote"] - before["keys_pulled_remote"],
        "owned_now": bool(W.local_mask(np.concatenate(drawn)).any()),
    }


@pytest.mark.integration
def test_strategies_on_a_local_cluster() -> None:
    tables = {"W": dynaps.TableSpec(num_keys=400, dim=2)}
    with dynaps.LocalCluster(servers=1, workers=2, tables=tables) as c:
        naive = c.run(sample_on_cluster, "naive")
        pool = c.run(sample_on_cluster, "pool")
        onlylocal = c.run(sample_on_cluster, "onlylocal")
    assert all(r["local"] == 0 for r in naive), "nothing was localized yet: naive is all remote"
    for r in pool:  # draws were localized a group ahead: most pulls are local
        assert r["local"] > 0.5 * (r["local"] + r["remote"])
    for r in onlylocal:
        assert r["remote"] == 0
        assert r["owned_now"]
