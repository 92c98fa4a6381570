"""Updaters agree with a textbook numpy reference (repeated keys included); state moves with keys."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dynaps
from dynaps.contract import UpdaterKind, UpdaterSpec
from dynaps.errors import ConfigError
from dynaps.store import updaters
from dynaps.store.updaters import combine_duplicates, make_updater, scatter_add

key_lists = st.lists(st.integers(0, 9), min_size=1, max_size=40)


@given(key_lists)
def test_scatter_add_matches_add_at(keys: list[int]) -> None:
    rng = np.random.default_rng(len(keys))
    rows = rng.random((len(keys), 3)).astype(np.float32)
    got = np.zeros((10, 3), dtype=np.float32)
    expected = np.zeros((10, 3), dtype=np.float32)
    scatter_add(got, np.asarray(keys, dtype=np.int64), rows)
    np.add.at(expected, keys, rows)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("dim", [1, 2])  # one value per key takes its own index path
@given(keys=key_lists)
def test_combine_duplicates_sums_per_key(dim: int, keys: list[int]) -> None:
    rows = np.arange(len(keys) * dim, dtype=np.float64).reshape(-1, dim)
    unique, summed = combine_duplicates(np.asarray(keys, dtype=np.int64), rows)
    assert len(set(unique.tolist())) == len(unique)
    for key, row in zip(unique, summed, strict=True):
        np.testing.assert_allclose(row, rows[np.asarray(keys) == key].sum(axis=0))


@given(keys=st.lists(st.integers(0, 9), min_size=2, max_size=60), round_values=st.integers(1, 12))
def test_combine_duplicates_sums_rank_by_rank(keys: list[int], round_values: int) -> None:
    """Repeats summed a rank at a time (each rank naming a key once), then the rest with
    np.add.at: the same sums wherever the switch falls."""
    rows = np.arange(len(keys) * 3, dtype=np.float64).reshape(-1, 3)
    with mock.patch.object(updaters, "ROUND_VALUES", round_values):
        unique, summed = combine_duplicates(np.asarray(keys, dtype=np.int64), rows)
    np.testing.assert_array_equal(np.sort(unique), np.unique(keys))  # as given when none repeats
    for key, row in zip(unique, summed, strict=True):
        np.testing.assert_allclose(row, rows[np.asarray(keys) == key].sum(axis=0))


def test_combine_duplicates_of_an_entity_block_push() -> None:
    """KGE's shape, where whole ranks are summed with plain indexing: 2,560 keys of 625."""
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 625, 2_560)
    rows = rng.normal(size=(2_560, 64)).astype(np.float32)
    unique, summed = combine_duplicates(keys, rows)
    expected = np.zeros((625, 64), dtype=np.float64)
    np.add.at(expected, keys, rows.astype(np.float64))
    np.testing.assert_array_equal(unique, np.unique(keys))
    np.testing.assert_allclose(summed, expected[unique], rtol=1e-5, atol=1e-5)


def test_adagrad_step_once_per_key_per_push() -> None:
    updater = make_updater(UpdaterSpec(kind=UpdaterKind.ADAGRAD, lr=0.5))
    values = np.zeros((3, 2))
    accumulator = np.zeros((3, 2))
    updater.apply(values, (accumulator,), np.array([1, 1]), np.array([[1.0, 2.0], [1.0, 2.0]]))
    np.testing.assert_allclose(accumulator[1], [4.0, 16.0])
    np.testing.assert_allclose(values[1], [-0.5 * 2 / 2, -0.5 * 4 / 4], rtol=1e-6)


# ----------------------------------------------------------------------------- references


def reference_step(
    kind: str, value: np.ndarray, state: list[np.ndarray], g: np.ndarray, s: UpdaterSpec
) -> None:
    """One optimiser step for one key, written the textbook way."""
    if kind == "add":
        value += g
    elif kind == "sgd":
        value -= s.lr * g
    elif kind == "adagrad":
        state[0] += g * g
        value -= s.lr * g / np.sqrt(state[0] + s.initial_accumulator + s.eps)
    elif kind == "adam":
        state[2][0] += 1
        t = state[2][0]
        state[0][:] = s.beta1 * state[0] + (1 - s.beta1) * g
        state[1][:] = s.beta2 * state[1] + (1 - s.beta2) * g * g
        m_hat = state[0] / (1 - s.beta1**t)
        v_hat = state[1] / (1 - s.beta2**t)
        value -= s.lr * m_hat / (np.sqrt(v_hat) + s.eps)
    elif kind == "momentum":
        state[0][:] = s.beta1 * state[0] + g
        value -= s.lr * state[0]


SPECS = {
    "add": UpdaterSpec(),
    "sgd": UpdaterSpec(kind=UpdaterKind.SGD, lr=0.3),
    "adagrad": UpdaterSpec(kind=UpdaterKind.ADAGRAD, lr=0.2, initial_accumulator=0.1),
    "adam": UpdaterSpec(kind=UpdaterKind.ADAM, lr=0.05, beta1=0.8, beta2=0.95),
    "momentum": UpdaterSpec(kind=UpdaterKind.CUSTOM, name="momentum", lr=0.1, beta1=0.7),
}


# 48 bytes: AdaGrad steps a push two rows (of 3 float64) at a time
@pytest.mark.parametrize("step_bytes", [updaters.STEP_BYTES, 48])
@pytest.mark.parametrize("kind", sorted(SPECS))
def test_updater_matches_numpy_reference_over_many_pushes(
    kind: str, step_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(updaters, "STEP_BYTES", step_bytes)
    spec = SPECS[kind]
    updater = make_updater(spec)
    rng = np.random.default_rng(11)
    values = rng.normal(size=(8, 3))
    states = tuple(np.zeros((8, 3)) for _ in range(updater.num_states))
    expected = values.copy()
    ref_states = [[np.zeros(3) for _ in range(updater.num_states)] for _ in range(8)]
    for _ in range(25):
        keys = rng.integers(0, 8, size=int(rng.integers(1, 12)))
        grads = rng.normal(size=(len(keys), 3))
        updater.apply(values, states, keys, grads)
        for key in np.unique(keys):  # a push is one step per key, with its summed gradient
            reference_step(kind, expected[key], ref_states[key], grads[keys == key].sum(axis=0), spec)
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)


def clipped_sgd(spec: UpdaterSpec) -> ClippedSgd:
    """A user's updater, named in manifests as 'tests.dynaps.test_updaters:clipped_sgd'."""
    return ClippedSgd(spec.lr)


class ClippedSgd:
    """value -= lr * clip(g, -1, 1); the state counts each key's steps."""

    num_states = 1

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def apply(
        self, values: np.ndarray, states: tuple[np.ndarray, ...], keys: np.ndarray, updates: np.ndarray
    ) -> None:
        keys, grads = combine_duplicates(keys, updates)
        values[keys] -= self.lr * np.clip(grads, -1.0, 1.0)
        states[0][keys] += 1


CLIPPED = UpdaterSpec(kind=UpdaterKind.CUSTOM, name=f"{__name__}:clipped_sgd", lr=0.5)


def test_custom_updater_is_imported_by_path() -> None:
    updater = make_updater(CLIPPED)
    assert isinstance(updater, ClippedSgd)
    values, count = np.zeros((2, 2)), np.zeros((2, 2))
    updater.apply(values, (count,), np.array([1]), np.array([[3.0, -0.5]]))
    np.testing.assert_allclose(values[1], [-0.5, 0.25])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_updater", "not registered"),
        ("no.such.module:make", "cannot import"),
        ("dynaps.store.updaters:nothing_here", "has no attribute"),
        ("dynaps.store.updaters:", "expected 'package.module:factory'"),
        ("dynaps.store.updaters:Array", "the factory failed"),
        ("builtins:str", "must return an object"),
    ],
)
def test_unknown_custom_updaters_say_why(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_updater(UpdaterSpec(kind=UpdaterKind.CUSTOM, name=name))


@pytest.mark.parametrize(
    ("name", "factory", "message"),
    [
        ("clipped", 5, "the factory must be fn\\(spec\\) -> updater, not 5"),  # it failed at first use
        ("a:b", lambda spec: None, "a non-empty name without ':'"),
        ("", lambda spec: None, "a non-empty name"),
    ],
)
def test_registering_an_updater_checks_it_at_once(name: str, factory: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dynaps.register_updater(name, factory)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- real processes


def steps_across_owners(ps: dynaps.PS, table: str) -> list[float] | None:
    """Rank 0 pushes to key 7 on its server, localizes it, pushes; then rank 1 takes it over."""
    W = ps.table(table)
    key = np.array([7])
    g = np.array([[1.0, 2.0]], dtype=np.float32)
    if ps.rank == 0:
        W.push(key, g)  # applied on the server: the server's state changes
        W.localize(key)  # value *and* state move here
        W.push(key, g)  # applied here, with the state that came along
    ps.barrier()
    if ps.rank == 1:
        W.localize(key)
        W.push(key, g)
    ps.barrier()
    return W.pull(key)[0].tolist() if ps.rank == 0 else None


@pytest.mark.integration
def test_state_moves_with_localize_and_custom_updaters_run_on_servers() -> None:
    tables = {
        "ada": dynaps.TableSpec(num_keys=20, dim=2, updater=SPECS["adagrad"]),
        "clip": dynaps.TableSpec(num_keys=20, dim=2, updater=CLIPPED),
    }
    with dynaps.LocalCluster(servers=1, workers=2, tables=tables) as c:
        ada = c.run(steps_across_owners, "ada")[0]
        clip = c.run(steps_across_owners, "clip")[0]
    spec = SPECS["adagrad"]
    value, state = np.zeros(2), [np.zeros(2)]
    for _ in range(3):  # one accumulator through server, worker 0 and worker 1
        reference_step("adagrad", value, state, np.array([1.0, 2.0]), spec)
    np.testing.assert_allclose(ada, value, rtol=1e-5)
    fresh = np.zeros(2)
    for _ in range(3):  # what three steps with a fresh accumulator each would give
        reference_step("adagrad", fresh, [np.zeros(2)], np.array([1.0, 2.0]), spec)
    assert not np.allclose(ada, fresh, rtol=1e-3), "the accumulator did not move with the key"
    np.testing.assert_allclose(clip, [-1.5, -1.5])  # the server imported the updater by path
