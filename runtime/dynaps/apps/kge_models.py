"""Scores and gradients of knowledge-graph embedding models, vectorised over a minibatch.

Both models score a triple (h, r, t) and are trained with binary cross-entropy: the
true triple against ``n`` corrupted tails and ``n`` corrupted heads per positive.  The
gradients are written out by hand (numpy has no autodiff) and checked against finite
differences in the tests.

* ComplEx (Trouillon et al. 2016): entities and relations are complex vectors stored as
  interleaved ``(real, imaginary)`` pairs; score = Re(<h, r, conj(t)>).
* RESCAL (Nickel et al. 2011): real entity vectors, a full ``d x d`` matrix per relation
  stored row-major; score = h^T M_r t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


@dataclass
class Gradients:
    """d(loss)/d(parameters) for one minibatch (rows aligned with the inputs)."""

    loss: float
    head: Array  # (B, de)
    relation: Array  # (B, dr)
    tail: Array  # (B, de)
    tail_negatives: Array  # (B, n, de)
    head_negatives: Array  # (B, n, de)


def _loss_and_slopes(pos: Array, tneg: Array, hneg: Array) -> tuple[float, Array, Array, Array]:
    """BCE of the positives' and the corruptions' scores, and its derivatives by each score.

    With z = -pos for a positive and z = the score for a corruption, the loss is
    sum(softplus(z)) and d/dz is sigmoid(z): both from one e = exp(-|z|) over one array
    (softplus(z) = max(z, 0) + log1p(e); sigmoid(z) = 1 / (1 + e) for z >= 0, else
    e / (1 + e)), which never overflows; three numpy calls per term were 3x slower.
    """
    size = len(pos)
    z = np.concatenate([-pos, tneg.reshape(-1), hneg.reshape(-1)])
    e = np.exp(-np.abs(z))
    loss = float(np.maximum(z, 0).sum() + np.log1p(e).sum())
    slope = np.where(z >= 0, 1.0, e)
    slope /= 1.0 + e
    # d/dpos = -sigmoid(-pos): the positive's slope is the negated sigmoid of its z
    return (
        loss,
        -slope[:size],
        slope[size : size + tneg.size].reshape(tneg.shape),
        slope[size + tneg.size :].reshape(hneg.shape),
    )


class Model:
    """Base: the loss is shared, the bilinear algebra is the subclass's."""

    name = ""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @property
    def entity_dim(self) -> int:
        raise NotImplementedError

    @property
    def relation_dim(self) -> int:
        raise NotImplementedError

    def gradients(
        self, h: Array, r: Array, t: Array, tneg: Array, hneg: Array, out: Array | None = None
    ) -> Gradients:
        """BCE gradients: positives (B,) against tail corruptions and head corruptions (B, n).

        The entities' gradients are written into ``out`` (made if not given): ``2B + 2nB``
        rows, the heads', the tails', the corrupted tails', the corrupted heads'; the
        fields are views of it, so a push sends it as it is (one copy of the push less
        per minibatch than concatenating the fields)."""
        size, n = len(h), tneg.shape[1]
        if out is None:
            out = np.empty((2 * size * (1 + n), h.shape[-1]), dtype=np.result_type(h, r, t, tneg, hneg))
        query_t, query_h = self.tail_query(h, r), self.head_query(r, t)
        pos = np.einsum("bd,bd->b", query_t, t)
        s_tneg = np.einsum("bd,bnd->bn", query_t, tneg)
        s_hneg = np.einsum("bnd,bd->bn", hneg, query_h)
        loss, g_pos, g_t, g_h = _loss_and_slopes(pos, s_tneg, s_hneg)
        # Every score is linear in each argument, so a row's terms fold into one weighted
        # sum per side: d/dh = head_query(r, sum_j w_j t_j) over the positive tail and the
        # corrupted ones, and so on.  Fewer, larger array operations than term by term.
        tails = np.einsum("bn,bnd->bd", g_t, tneg)
        tails += g_pos[:, None] * t
        heads = np.einsum("bn,bnd->bd", g_h, hneg)  # the corrupted heads only: see relation
        head, tail = out[:size], out[size : 2 * size]
        head[...] = self.head_grad(r, tails)
        relation = self.relation_grad(h, tails) + self.relation_grad(heads, t)
        heads += g_pos[:, None] * h
        tail[...] = self.tail_grad(heads, r)
        corrupted = out[2 * size :].reshape(2, size, n, -1)
        np.multiply(g_t[:, :, None], query_t[:, None, :], out=corrupted[0])
        np.multiply(g_h[:, :, None], query_h[:, None, :], out=corrupted[1])
        return Gradients(loss, head, relation, tail, corrupted[0], corrupted[1])

    # score(h, r, t) = tail_query(h, r) . t = h . head_query(r, t)
    def tail_query(self, h: Array, r: Array) -> Array:
        raise NotImplementedError

    def head_query(self, r: Array, t: Array) -> Array:
        raise NotImplementedError

    def head_grad(self, r: Array, weighted_tails: Array) -> Array:
        """d/dh of sum_j w_j score(h, r, t_j), given sum_j w_j t_j."""
        raise NotImplementedError

    def tail_grad(self, weighted_heads: Array, r: Array) -> Array:
        """d/dt of sum_j w_j score(h_j, r, t), given sum_j w_j h_j."""
        return self.tail_query(weighted_heads, r)

    def relation_grad(self, h: Array, t: Array) -> Array:
        """d/dr of score(h, r, t), row by row (linear in h and in t, so weights fold in)."""
        raise NotImplementedError

    def score(self, h: Array, r: Array, t: Array) -> Array:
        return np.asarray((self.tail_query(h, r) * t).sum(axis=-1))


class ComplEx(Model):
    """Rows are complex vectors stored as interleaved ``(real, imaginary)`` pairs, so a row
    *is* a complex64 (complex128) vector viewed as floats: each product below is one numpy
    complex operation.  (Stored as ``[real | imaginary]`` halves before 2026-12-07, each took
    six operations on half-rows, whose short strided loops made the gradient 1.4x slower:
    bench/README.md, "ComplEx as complex numbers".)"""

    name = "complex"

    @property
    def entity_dim(self) -> int:
        return 2 * self.dim

    @property
    def relation_dim(self) -> int:
        return 2 * self.dim

    def tail_query(self, h: Array, r: Array) -> Array:
        return _floats(_complex(h) * _complex(r))

    def head_query(self, r: Array, t: Array) -> Array:
        return _floats(np.conj(_complex(r)) * _complex(t))

    def head_grad(self, r: Array, weighted_tails: Array) -> Array:
        return self.head_query(r, weighted_tails)

    def relation_grad(self, h: Array, t: Array) -> Array:
        return _floats(np.conj(_complex(h)) * _complex(t))


_COMPLEX: dict[np.dtype[Any], np.dtype[Any]] = {
    np.dtype(np.float32): np.dtype(np.complex64),
    np.dtype(np.float64): np.dtype(np.complex128),
}
_FLOAT: dict[np.dtype[Any], np.dtype[Any]] = {c: f for f, c in _COMPLEX.items()}


def _complex(x: Array) -> Array:
    """Rows of interleaved (real, imaginary) floats as complex numbers: a view when it can be."""
    kind = _COMPLEX.get(x.dtype)
    if kind is None:
        x, kind = x.astype(np.float64), _COMPLEX[np.dtype(np.float64)]
    if x.strides[-1] != x.itemsize:
        x = np.ascontiguousarray(x)
    return x.view(kind)


def _floats(c: Array) -> Array:
    """Complex numbers as rows of interleaved (real, imaginary) floats (a view)."""
    return c.view(_FLOAT[c.dtype])


class Rescal(Model):
    name = "rescal"

    @property
    def entity_dim(self) -> int:
        return self.dim

    @property
    def relation_dim(self) -> int:
        return self.dim * self.dim

    def _matrix(self, r: Array) -> Array:
        return r.reshape(*r.shape[:-1], self.dim, self.dim)

    def tail_query(self, h: Array, r: Array) -> Array:
        return np.asarray(np.einsum("bi,bij->bj", h, self._matrix(r)))

    def head_query(self, r: Array, t: Array) -> Array:
        return np.asarray(np.einsum("bij,bj->bi", self._matrix(r), t))

    def head_grad(self, r: Array, weighted_tails: Array) -> Array:
        return self.head_query(r, weighted_tails)

    def relation_grad(self, h: Array, t: Array) -> Array:
        return np.asarray(np.einsum("bi,bj->bij", h, t)).reshape(len(h), -1)


MODELS: dict[str, type[Model]] = {"complex": ComplEx, "rescal": Rescal}


def make_model(name: str, dim: int) -> Model:
    return MODELS[name](dim)
