"""What AdaGrad's and Adam's ``apply`` cost per push (CPU microseconds), beside a textbook
numpy form of the same step measured in the same run.

    PYTHONPATH=runtime .venv/bin/python bench/updaters.py

The pushes are shaped like the apps' (a KGE entity push: 256 triples' ends and 8 negatives
each, 2,560 keys over 5,000 entities with repeats, and over an entity-block round's 2,500 or
625 entities; a Zipf-skewed push; sparse LR: 10,000 keys of one value over
100,000 features, Zipf-skewed; a push without repeats).  The reference sums repeated keys
with ``np.unique`` and a row-wise flat ``np.add.at`` into zeros, then steps with plain
expressions: the form dynaps.store.updaters had before 2026-12-07.  Run it against another
revision's runtime (``git archive REV runtime | tar -x -C /tmp/rev``, then
``PYTHONPATH=/tmp/rev/runtime``) to compare in the same sitting.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.contract import UpdaterKind, UpdaterSpec
from dynaps.store.updaters import make_updater

Array = npt.NDArray[Any]
Keys = npt.NDArray[np.int64]
LR, EPS = 0.1, 1e-8
BETA1, BETA2 = 0.9, 0.999


def reference_combine(keys: Keys, updates: Array) -> tuple[Keys, Array]:
    unique, inverse = np.unique(keys, return_inverse=True)
    if len(unique) == len(keys):
        return keys, updates
    dim = updates.shape[1]
    summed = np.zeros((len(unique), dim), dtype=updates.dtype)
    np.add.at(summed.reshape(-1), (inverse[:, None] * dim + np.arange(dim)).ravel(), updates.reshape(-1))
    return unique, summed


def reference_adagrad(values: Array, states: tuple[Array, ...], keys: Keys, updates: Array) -> None:
    keys, grads = reference_combine(keys, updates)
    (accumulator,) = states
    acc = accumulator[keys] + grads * grads
    accumulator[keys] = acc
    values[keys] -= LR * grads / np.sqrt(acc + EPS)


def reference_adam(values: Array, states: tuple[Array, ...], keys: Keys, updates: Array) -> None:
    keys, grads = reference_combine(keys, updates)
    first, second, steps = states
    step = steps[keys, 0] + 1
    steps[keys, 0] = step
    first[keys] = m = BETA1 * first[keys] + (1 - BETA1) * grads
    second[keys] = v = BETA2 * second[keys] + (1 - BETA2) * grads * grads
    m_hat, v_hat = m / (1 - BETA1 ** step[:, None]), v / (1 - BETA2 ** step[:, None])
    values[keys] -= LR * m_hat / (np.sqrt(v_hat) + EPS)


def pushes(rng: np.random.Generator) -> dict[str, tuple[int, list[tuple[Keys, Array]]]]:
    """Per workload: the table's size and 50 pushes of (keys, float32 rows)."""
    kge_weights = 1.0 / np.arange(1, 5_001) ** 0.6  # hub entities recur within a push
    kge_weights /= kge_weights.sum()
    lr_weights = 1.0 / np.arange(1, 100_001) ** 1.1
    lr_weights /= lr_weights.sum()
    zipf = 1.0 / np.arange(1, 20_001)  # one hot key recurs ~100 times in a push
    zipf /= zipf.sum()

    def draw(num_keys: int, count: int, dim: int, weights: Array | None) -> tuple[Keys, Array]:
        if weights is None:
            keys = rng.choice(num_keys, size=count, replace=False)
        else:
            keys = rng.choice(num_keys, size=count, p=weights)
        return keys.astype(np.int64), rng.normal(size=(count, dim)).astype(np.float32)

    def block_round(entities: int) -> tuple[Keys, Array]:
        """An entity-block round's push: 512 ends (skewed) and 2,048 negatives (uniform)
        from the round's two blocks of ``entities`` in all (2,500 at 2 workers, 625 at 8)."""
        weights = kge_weights[:entities] / kge_weights[:entities].sum()
        ends, ends_rows = draw(entities, 512, 64, weights)
        negatives = rng.integers(0, entities, 2_048).astype(np.int64)
        rows = rng.normal(size=(2_048, 64)).astype(np.float32)
        return np.concatenate([ends, negatives]), np.concatenate([ends_rows, rows])

    count = range(50)
    return {
        "kge entities (2,560 keys, dim 64)": (5_000, [draw(5_000, 2_560, 64, kge_weights) for _ in count]),
        "kge blocks, 2 workers (2,560 keys of 2,500)": (2_500, [block_round(2_500) for _ in count]),
        "kge blocks, 8 workers (2,560 keys of 625)": (625, [block_round(625) for _ in count]),
        "zipf 1.0 (1,000 keys of 20,000, dim 32)": (20_000, [draw(20_000, 1_000, 32, zipf) for _ in count]),
        "sparse lr (10,000 keys, dim 1)": (100_000, [draw(100_000, 10_000, 1, lr_weights) for _ in count]),
        "no repeats (2,000 keys, dim 64)": (5_000, [draw(5_000, 2_000, 64, None) for _ in count]),
    }


def per_push_us(
    apply: Callable[..., None], num_keys: int, batch: list[tuple[Keys, Array]], states: int
) -> float:
    dim = batch[0][1].shape[1]
    values = np.zeros((num_keys, dim), dtype=np.float32)
    state = tuple(np.zeros_like(values) for _ in range(states))
    best = float("inf")
    for _ in range(5):  # the best of five passes: the least disturbed by the machine
        start = time.process_time()
        for keys, rows in batch:
            apply(values, state, keys, rows)
        best = min(best, time.process_time() - start)
    return best / len(batch) * 1e6


def main() -> None:
    # no options: --help says what it measures instead of running it
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    adagrad = make_updater(UpdaterSpec(kind=UpdaterKind.ADAGRAD, lr=LR, eps=EPS))
    adam = make_updater(UpdaterSpec(kind=UpdaterKind.ADAM, lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS))
    for name, (num_keys, batch) in pushes(np.random.default_rng(0)).items():
        repeats = np.mean([1 - len(np.unique(keys)) / len(keys) for keys, _ in batch])
        for label, updater, reference_apply in (
            ("adagrad", adagrad, reference_adagrad),
            ("adam", adam, reference_adam),
        ):
            ours = per_push_us(updater.apply, num_keys, batch, updater.num_states)
            reference = per_push_us(reference_apply, num_keys, batch, updater.num_states)
            print(
                f"{label}, {name}: {repeats:4.0%} repeated keys; {ours:7.1f} us per push,"
                f" reference {reference:7.1f} us: {reference / ours:4.2f}x"
            )


if __name__ == "__main__":
    main()
