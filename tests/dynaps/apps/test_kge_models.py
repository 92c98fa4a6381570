"""Hand-written gradients of ComplEx and RESCAL agree with finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from dynaps.apps.kge_models import MODELS, make_model

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
