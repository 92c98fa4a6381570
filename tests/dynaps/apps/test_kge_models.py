"""Hand-written gradients of ComplEx and RESCAL agree with finite differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from dynaps.apps.kge_models import MODELS, _loss_and_slopes, make_model

FIELDS = ("head", "relation", "tail", "tail_negatives", "head_negatives")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_match_finite_differences(name: str) -> None:
    model = make_model(name, 3)
    rng = np.random.default_rng(4)
    batch, n = 2, 3
    args = [
        rng.normal(size=(batch, model.entity_dim)),
        rng.normal(size=(batch, model.relation_dim)),
        rng.normal(size=(batch, model.entity_dim)),
        rng.normal(size=(batch, n, model.entity_dim)),
        rng.normal(size=(batch, n, model.entity_dim)),
    ]
    grads = model.gradients(*args)
    eps = 1e-6
    for field, x in zip(FIELDS, args, strict=True):
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            old = x[index]
            x[index] = old + eps
            up = model.gradients(*args).loss
            x[index] = old - eps
            down = model.gradients(*args).loss
            x[index] = old
            numeric[index] = (up - down) / (2 * eps)
        np.testing.assert_allclose(getattr(grads, field), numeric, atol=1e-6, err_msg=field)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_queries_reproduce_the_score(name: str) -> None:
    model = make_model(name, 4)
    rng = np.random.default_rng(5)
    h, t = rng.normal(size=(6, model.entity_dim)), rng.normal(size=(6, model.entity_dim))
    r = rng.normal(size=(6, model.relation_dim))
    score = model.score(h, r, t)
    np.testing.assert_allclose((model.tail_query(h, r) * t).sum(axis=1), score)
    np.testing.assert_allclose((model.head_query(r, t) * h).sum(axis=1), score)


def test_complex_rows_are_interleaved_real_and_imaginary_parts() -> None:
    """ComplEx's score is Re(sum h * r * conj(t)) with each row read as (re, im) pairs."""
    model = make_model("complex", 5)
    rng = np.random.default_rng(6)
    h, r, t = (rng.normal(size=(4, model.entity_dim)).astype(np.float32) for _ in range(3))

    def pairs(x: np.ndarray) -> np.ndarray:
        return x[:, 0::2] + 1j * x[:, 1::2]

    expected = (pairs(h) * pairs(r) * np.conj(pairs(t))).real.sum(axis=1)
    np.testing.assert_allclose(model.score(h, r, t), expected, rtol=1e-5)
    # rows that are not contiguous (a column slice) give the same answers
    wide = np.concatenate([h, h], axis=1)[:, : model.entity_dim]
    np.testing.assert_allclose(model.tail_query(wide, r), model.tail_query(h, r))
    # so do rows of a float type with no complex view (computed in float64)
    half = model.tail_query(h.astype(np.float16), r.astype(np.float16))
    np.testing.assert_allclose(half, model.tail_query(h, r), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_entity_gradients_are_written_into_the_push_rows(name: str) -> None:
    """With ``out``, the head, tail and corrupted rows' gradients land in it in the push's
    key order (heads, tails, corrupted tails, corrupted heads), equal to those made without."""
    model = make_model(name, 3)
    rng = np.random.default_rng(8)
    batch, n = 4, 2
    h, t = rng.normal(size=(batch, model.entity_dim)), rng.normal(size=(batch, model.entity_dim))
    r = rng.normal(size=(batch, model.relation_dim))
    tneg, hneg = (rng.normal(size=(batch, n, model.entity_dim)) for _ in range(2))
    alone = model.gradients(h, r, t, tneg, hneg)
    out = np.full((2 * batch * (1 + n), model.entity_dim), np.nan, dtype=np.float32)
    into = model.gradients(h, r, t, tneg, hneg, out=out)
    expected = np.concatenate(
        [
            alone.head,
            alone.tail,
            alone.tail_negatives.reshape(-1, model.entity_dim),
            alone.head_negatives.reshape(-1, model.entity_dim),
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    for field in ("head", "tail", "tail_negatives", "head_negatives"):
        assert np.shares_memory(getattr(into, field), out), field


def _sigmoid(z: Any) -> Any:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_loss_and_its_slopes_hold_for_scores_far_from_zero(dtype: type) -> None:
    pos: Any = np.array([-200.0, -3.0, 0.0, 2.5, 90.0], dtype=dtype)
    tneg: Any = np.array([[-90.0, 0.5], [3.0, -1.0], [0.0, 40.0], [-7.0, 7.0], [1e-3, 150.0]], dtype=dtype)
    hneg = -tneg[:, ::-1]
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # whatever the score
        loss, g_pos, g_t, g_h = _loss_and_slopes(pos, tneg, hneg)
    exact = [np.logaddexp(0.0, np.asarray(z, dtype=np.float64)).sum() for z in (-pos, tneg, hneg)]
    assert loss == pytest.approx(sum(exact), rel=1e-6)
    np.testing.assert_allclose(g_pos, _sigmoid(pos) - 1.0, atol=1e-7)
    np.testing.assert_allclose(g_t, _sigmoid(tneg), atol=1e-7)
    np.testing.assert_allclose(g_h, _sigmoid(hneg), atol=1e-7)
    assert g_pos.dtype == g_t.dtype == g_h.dtype == dtype
