"""What a push does to a key's value on its owner: add (default) or an optimiser step.

An updater's state (AdaGrad's accumulator, Adam's moments) is stored beside the value,
row for row, so it moves with the key on ``localize``.  Updaters are applied by whoever
owns the key: a server, another worker, or the pushing worker itself for a local key.

Custom updaters (``updater: {kind: custom, name: ...}``) are found in one of two ways:

* ``name: "package.module:factory"`` -- imported by path in every process that builds the
  table's store (servers too, which never import the training program); the module must be
  importable there (installed in the image, or on ``PYTHONPATH``);
* ``name: "momentum"`` -- looked up among updaters registered with :func:`register_updater`
  in this process; this module registers ``momentum`` itself, so it exists everywhere.

A factory takes the table's :class:`UpdaterSpec` (its ``lr``, ``beta1``, ... are the
updater's hyperparameters) and returns an object with ``num_states`` and ``apply``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dynaps.contract import UpdaterKind, UpdaterSpec
from dynaps.errors import ConfigError

Array = npt.NDArray[Any]
Keys = npt.NDArray[np.int64]


class Updater(Protocol):
    """Applies pushed updates to rows of a table in place."""

    num_states: int

    def apply(self, values: Array, states: tuple[Array, ...], keys: Keys, updates: Array) -> None: ...


def _add_at_rows(target: Array, index: npt.NDArray[np.intp], rows: Array) -> None:
    """``target[index] += rows`` where ``index`` may repeat.

    Row-wise ``np.add.at`` is about 20x slower than this: the flattened, one-dimensional
    form takes numpy's fast path.
    """
    dim = target.shape[1]
    flat = index if dim == 1 else (index[:, None] * dim + np.arange(dim)).ravel()
    np.add.at(target.reshape(-1), flat, rows.reshape(-1))


def _unique(keys: Keys, num_keys: int = 0) -> bool:
    """Whether ``keys`` has no repeats.

    For a table not much larger than the push, marking keys in a bitmap costs a fraction
    of sorting them (Zipf-skewed minibatches almost always repeat keys, so this check
    runs on every push).
    """
    if 0 < num_keys <= 32 * len(keys):
        seen = np.zeros(num_keys, dtype=np.bool_)
        seen[keys] = True
        return int(np.count_nonzero(seen)) == len(keys)
    ordered = np.sort(keys)
    return not bool((ordered[1:] == ordered[:-1]).any())


def scatter_add(values: Array, keys: Keys, rows: Array) -> None:
    """``values[keys] += rows``, summing the rows of repeated keys."""
    if len(keys) == 1:  # one entry per push: a view of the row, added to in place
        row = values[keys.item(0)]
        row += rows[0]
    elif _unique(keys, len(values)):
        values[keys] += rows  # gather, add, scatter: the fastest form, valid without repeats
    else:
        _add_at_rows(values, keys, rows)


def combine_duplicates(keys: Keys, updates: Array) -> tuple[Keys, Array]:
    """Sum the updates of repeated keys, so a stateful step is taken once per key
    (:func:`sum_repeats` without the positions)."""
    distinct, summed, _ = sum_repeats(keys, updates)
    return distinct, summed


def sum_repeats(keys: Keys, updates: Array) -> tuple[Keys, Array, Keys | None]:
    """The distinct keys (sorted), their updates summed, and where each one first occurs in
    ``keys``; ``keys``, ``updates`` and None when no key repeats.

    One sort finds the repeats; each key's first row is gathered and only the repeated
    rows are added onto it (in a skewed minibatch most keys occur once, so the add, the
    slow part, sees a fraction of the push: 2.2x faster for KGE's entity pushes than
    ``np.unique`` and summing every row into zeros).  Without repeats the push is returned
    as it came.
    """
    if len(keys) < 2:
        return keys, updates, None
    order = np.argsort(keys)
    ordered = keys[order]
    first = np.empty(len(keys), dtype=np.bool_)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    if len(starts) == len(keys):
        return keys, updates, None
    firsts = order[starts]
    if updates.shape[1] == 1:  # one value a key (sparse LR): numpy sums each key's run in 1-D
        return ordered[starts], np.add.reduceat(updates[order, 0], starts)[:, None], firsts
    summed = updates.take(firsts, axis=0)
    # keys that repeat (a first row followed by a repeat), the rows of _add_repeats' first
    # round: with few, its rounds cost more than they save (a Zipf-skewed push, one hot key)
    repeating = np.count_nonzero(first[:-1] > first[1:])
    if not _round_pays(int(repeating), updates.shape[1]):
        repeats = ~first
        _add_at_rows(summed, np.cumsum(first)[repeats] - 1, updates.take(order[repeats], axis=0))
    else:
        at = np.flatnonzero(~first)  # positions in ``ordered``
        group = np.cumsum(first, dtype=np.int64)[at]
        group -= 1  # the row of ``summed`` each repeat adds to
        _add_repeats(summed, group, at - starts[group], updates, order[at])
    return ordered[starts], summed, firsts


# A round of :func:`_add_repeats` costs a few numpy calls whatever its size; below this
# many values (rows x dim), np.add.at's share of them is cheaper.
ROUND_VALUES = 4096


def _round_pays(rows: int, dim: int) -> bool:
    """Whether ``rows`` repeats of ``dim`` values are worth a round of their own."""
    return rows * dim >= ROUND_VALUES


def _add_repeats(summed: Array, group: Keys, rank: Keys, updates: Array, rows: Keys) -> None:
    """``summed[group] += updates[rows]``, where a group repeats, ``rank`` (1 for its
    second row, 2 for its third...) telling its rows apart.

    The rows of one rank name each group once, so numpy's plain gather-add-scatter sums
    them exactly; rank by rank that is about 1.5x faster than one ``np.add.at`` over all
    repeats when keys repeat often (KGE's entity blocks draw a push's 2,560 keys from
    625-2,500 entities: bench/README.md, "AdaGrad in slices").  The few rows of high
    ranks, where a round would cost more than it sums, go to ``np.add.at``.
    """
    counts = np.bincount(rank)  # falls with the rank: a key with a k-th row has all before it
    k = 1
    while k < len(counts) and _round_pays(int(counts[k]), summed.shape[1]):
        at = np.flatnonzero(rank == k)
        summed[group[at]] += updates.take(rows[at], axis=0)
        k += 1
    if k < len(counts):
        at = np.flatnonzero(rank >= k)
        _add_at_rows(summed, group[at], updates.take(rows[at], axis=0))


# A slice's rows and the step's few temporaries of its size stay well inside a core's
# cache (2 MB of L2 on the development machine), not only the largest caches'.
STEP_BYTES = 128 << 10


def step_rows(grads: Array) -> int:
    """Rows of ``grads`` stepped at once: about :data:`STEP_BYTES` of them."""
    return max(1, STEP_BYTES // max(1, int(grads.shape[1]) * grads.itemsize))


SliceStep = Callable[[Array, tuple[Array, ...], Keys, Array], None]


def in_slices(step: SliceStep, values: Array, states: tuple[Array, ...], keys: Keys, grads: Array) -> None:
    """``step`` over slices of a push of distinct ``keys`` (:func:`step_rows` each), so its
    temporaries stay in a core's cache: a 2,560-row push of dim 64 stepped whole spills
    them (bench/README.md, "AdaGrad in slices")."""
    rows = step_rows(grads)
    for first in range(0, len(keys), rows):
        step(values, states, keys[first : first + rows], grads[first : first + rows])


class AddUpdater:
    """value += update (the classic parameter-server push)."""

    num_states = 0

    def apply(self, values: Array, states: tuple[Array, ...], keys: Keys, updates: Array) -> None:
        scatter_add(values, keys, updates)


@dataclass
class SgdUpdater:
    """value -= lr * gradient: workers push gradients, the owner steps."""

    lr: float
    num_states = 0

    def apply(self, values: Array, states: tuple[Array, ...], keys: Keys, updates: Array) -> None:
        scatter_add(values, keys, updates * -self.lr)


@dataclass
class AdagradUpdater:
    """AdaGrad: accumulator += g^2; value -= lr * g / sqrt(accumulator + eps)."""

    lr: float
    eps: float
    initial_accumulator: float
    num_states = 1

    def apply(self, values: Array, states: tuple[Array, ...], keys: Keys, updates: Array) -> None:
        keys, grads = combine_duplicates(keys, updates)
        in_slices(self._step, values, states, keys, grads)

    def _step(self, values: Array, states: tuple[Array, ...], keys: Keys, grads: Array) -> None:
        (accumulator,) = states
        acc = accumulator.take(keys, axis=0)
        acc += grads * grads
        accumulator[keys] = acc
        # the step is worked out in acc's buffer (stored already): no more temporaries.
        # The initial accumulator is added here so that untouched (zero) state needs no init.
        step = acc
        step += self.initial_accumulator + self.eps
        np.sqrt(step, out=step)
        np.divide(grads, step, out=step)
        step *= self.lr
        values[keys] -= step


@dataclass
class AdamUpdater:
    """Adam with per-row step counts, so bias correction follows each key's own history.

    State rows: first moment, second moment, and a row whose first column counts steps.
    """

    lr: float
    beta1: float
    beta2: float
    eps: float
    num_states = 3

    def apply(self, values: Array, states: tuple[Array, ...], keys: Keys, updates: Array) -> None:
        keys, grads = combine_duplicates(keys, updates)
        in_slices(self._step, values, states, keys, grads)

    def _step(self, values: Array, states: tuple[Array, ...], keys: Keys, grads: Array) -> None:
        first, second, steps = states
        step = steps[keys, 0] + 1
        steps[keys, 0] = step
        m = self.beta1 * first[keys] + (1 - self.beta1) * grads
        v = self.beta2 * second[keys] + (1 - self.beta2) * grads * grads
        first[keys] = m
        second[keys] = v
        m_hat = m / (1 - self.beta1 ** step[:, None])
        v_hat = v / (1 - self.beta2 ** step[:, None])
        values[keys] -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


@dataclass
class MomentumUpdater:
    """Heavy-ball SGD: velocity = beta1 * velocity + g; value -= lr * velocity.

    Shipped as the built-in *custom* updater ``momentum``: it shows (and tests) how a
    registered updater keeps state beside the value.
    """

    lr: float
    beta1: float
    num_states = 1

    def apply(self, values: Array, states: tuple[Array, ...], keys: Keys, updates: Array) -> None:
        keys, grads = combine_duplicates(keys, updates)
        (velocity,) = states
        step = self.beta1 * velocity[keys] + grads
        velocity[keys] = step
        values[keys] -= self.lr * step


def apply_one(updater: Updater, values: Array, states: tuple[Array, ...], key: int, update: Array) -> None:
    """``updater.apply`` for one key, given as a Python int, and its ``(dim,)`` row.

    The default updater adds through a view of the row (what ``scatter_add`` does for one
    key, without building a one-key array); any other gets a one-key array and a (1, dim)
    view of the row, so it takes exactly its usual steps.
    """
    if type(updater) is AddUpdater:
        row = values[key]
        row += update
    else:
        updater.apply(values, states, np.array([key], dtype=np.int64), update.reshape(1, -1))


CustomFactory = Callable[[UpdaterSpec], Updater]
_CUSTOM: dict[str, CustomFactory] = {}


def register_updater(name: str, factory: CustomFactory) -> None:
    """Make ``updater: {kind: custom, name: NAME}`` build ``factory(spec)`` in this process.

    Registration is per process: servers only know what this module registers and what
    they can import by path, so prefer ``name: "package.module:factory"`` for your own.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"updater name {name!r}: a non-empty name without ':' (reserved for module paths)")
    if not callable(factory):  # else it failed only when a table first used it, in some process
        raise ConfigError(f"updater {name!r}: the factory must be fn(spec) -> updater, not {factory!r}")
    _CUSTOM[name] = factory


register_updater("momentum", lambda spec: MomentumUpdater(spec.lr, spec.beta1))


def num_states(spec: UpdaterSpec) -> int:
    """How many state arrays the updater stores beside each value."""
    return make_updater(spec).num_states


def make_updater(spec: UpdaterSpec) -> Updater:
    kind = UpdaterKind(spec.kind)
    if kind is UpdaterKind.ADD:
        return AddUpdater()
    if kind is UpdaterKind.SGD:
        return SgdUpdater(spec.lr)
    if kind is UpdaterKind.ADAGRAD:
        return AdagradUpdater(spec.lr, spec.eps, spec.initial_accumulator)
    if kind is UpdaterKind.ADAM:
        return AdamUpdater(spec.lr, spec.beta1, spec.beta2, spec.eps)
    assert spec.name is not None
    factory = _import_factory(spec.name) if ":" in spec.name else _CUSTOM.get(spec.name)
    if factory is None:
        known = ", ".join(sorted(_CUSTOM))
        raise ConfigError(
            f"custom updater {spec.name!r} is not registered in this process (registered: {known}); "
            "name it by path instead, 'package.module:factory', so every process can import it"
        )
    try:
        updater = factory(spec)
    except Exception as exc:  # a user's factory: report it as the manifest's problem
        raise ConfigError(f"custom updater {spec.name!r}: the factory failed: {exc!r}") from exc
    states = getattr(updater, "num_states", None)
    if not isinstance(states, int) or states < 0 or not callable(getattr(updater, "apply", None)):
        raise ConfigError(
            f"custom updater {spec.name!r}: the factory must return an object with an int "
            f"'num_states' >= 0 and an 'apply(values, states, keys, updates)' method, got {updater!r}"
        )
    return updater


def _import_factory(path: str) -> CustomFactory:
    """``package.module:attribute`` -> the attribute, with errors that name the manifest field."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"custom updater {path!r}: expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"custom updater {path!r}: cannot import {module_name!r} in this process ({exc}); "
            "it must be importable in every process of the job (installed in the image or on PYTHONPATH)"
        ) from exc
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"custom updater {path!r}: {module_name!r} has no attribute {attribute!r}")
    if not callable(factory):
        raise ConfigError(f"custom updater {path!r}: {attribute!r} is not callable")
    result: CustomFactory = factory
    return result
