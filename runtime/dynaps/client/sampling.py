"""Sampling access: pull keys drawn from a distribution, with Lapse's four strategies.

Negative sampling (word vectors, knowledge-graph embeddings) reads keys drawn at random,
so the data cannot say ahead of time which keys a worker will need, and a classic
parameter server serves most of them remotely.  The application supplies the
distribution; the parameter server decides *how* to serve draws from it::

    W.set_sampler(Distribution.unigram(counts, power=0.75), strategy="pool", group_size=512)
    h = W.prepare_sample(n)          # announce n draws (strategies may localize them now)
    keys, values = W.pull_sample(h, k)   # the next k draws and their values
    W.finish_sample(h)               # done with h (unused draws go back to the pool)

Strategies (Lapse's names and meaning):

``naive``      draw n keys at prepare, pull them at pull: exact distribution, accesses are
               as remote as the keys happen to be.
``preloc``     draw n keys at prepare and ``localize`` them (asynchronously): exact
               distribution; pulls are local when the localize finished in the meantime.
``pool``       keep a pool of groups of ``group_size`` drawn keys, each localized when drawn,
               ``groups_ahead`` groups ahead of use; every key is used ``reuse`` times (in a
               fresh order each pass) before its group is dropped.  With ``postpone``, a pull
               takes the handle's draws that are local now first and postpones the others;
               ``finish_sample`` returns unused draws to the front of the pool, so postponing
               reorders draws but never drops them: the frequencies follow the distribution.
               ``reuse > 1`` keeps each draw's marginal distribution but correlates draws.
``onlylocal``  draw only among keys this node owns now (rejection sampling): no remote
               access, but **biased** -- the result follows the distribution *conditioned on
               being local*, which changes as keys move.  Use it when that bias is acceptable.

With ``allocation: static`` keys never move: ``preloc`` and ``pool`` then behave like
``naive`` and ``onlylocal`` finds no local key on a worker.

The strategies need only a small table interface (:class:`SampledTable`), so the same
code serves :class:`dynaps.Table` and the in-process tables of the apps' numpy baselines.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from dynaps.errors import UsageError

Keys = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
DrawFn = Callable[[np.random.Generator, int], Any]

# onlylocal: stop looking after this many draws without a single local key
MAX_REJECTED_DRAWS = 1 << 22
POOL_OPTIONS = {"group_size", "reuse", "postpone", "groups_ahead"}


class Strategy(enum.StrEnum):
    NAIVE = "naive"
    PRELOC = "preloc"
    POOL = "pool"
    ONLYLOCAL = "onlylocal"


class SampledTable(Protocol):
    """What a strategy needs of a table (``dynaps.Table`` has it)."""

    name: str
    num_keys: int

    @property
    def static_allocation(self) -> bool:
        """Keys never move to workers: onlylocal has nothing to draw from."""

    def pull(self, keys: Any) -> Any: ...

    def localize(self, keys: Any, *, wait: Literal[False]) -> Any: ...

    def local_mask(self, keys: Any) -> Mask: ...


# --------------------------------------------------------------------------- distributions


# Draws from one distribution before it builds its alias table: a Python pass over the
# keys (23 ms for 50,000), paid back by every later draw (14,000 draws over 50,000 keys:
# 0.17 ms against 1.4 ms searching the cumulative weights); the restricted distributions
# of ``onlylocal`` are drawn from once.
ALIAS_AFTER = 2


def alias_table(weights: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], Keys]:
    """Walker's alias method (Vose's construction): draw a column uniformly, keep it with
    probability ``accept[column]``, else take ``alias[column]``; exactly ``weights``' law."""
    n = len(weights)
    scaled = (weights * (n / weights.sum())).tolist()
    accept = np.ones(n)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i, p in enumerate(scaled) if p < 1.0]
    large = [i for i, p in enumerate(scaled) if p >= 1.0]
    while small and large:
        low, high = small.pop(), large[-1]
        accept[low], alias[low] = scaled[low], high
        scaled[high] += scaled[low] - 1.0  # the high column gave low's column its rest
        if scaled[high] < 1.0:
            small.append(large.pop())
    return accept, alias  # columns left in either list keep themselves (rounding)


class Distribution:
    """A discrete distribution over a table's keys, drawn from with numpy (vectorised).

    Build one with :meth:`uniform`, :meth:`from_weights` or :meth:`unigram`.
    """

    def __init__(self, keys: Keys | None, weights: npt.NDArray[np.float64] | None, low: int, high: int):
        self._keys = keys
        self._cdf = None if weights is None else np.cumsum(weights)
        self._weights = weights
        self.low, self.high = low, high
        self._draws = 0
        self._alias: tuple[npt.NDArray[np.float64], Keys] | None = None

    @classmethod
    def uniform(cls, low: int, high: int) -> Distribution:
        """Every key in ``[low, high)`` equally likely."""
        if not 0 <= low < high:
            raise UsageError(f"uniform distribution needs 0 <= low < high, got [{low}, {high})")
        return cls(None, None, low, high)

    @classmethod
    def from_weights(cls, weights: Any, keys: Any = None) -> Distribution:
        """Key ``keys[i]`` (default ``i``) with probability proportional to ``weights[i]``."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or not len(w):
            raise UsageError(f"weights must be a non-empty 1-d array, got shape {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise UsageError("weights must be finite, non-negative and not all zero")
        k = None if keys is None else np.asarray(keys, dtype=np.int64)
        if k is not None and k.shape != w.shape:
            raise UsageError(f"keys {k.shape} and weights {w.shape} differ in shape")
        low = 0 if k is None else int(k.min())
        high = len(w) if k is None else int(k.max()) + 1
        return cls(k, w, low, high)

    @classmethod
    def unigram(cls, counts: Any, power: float = 0.75, keys: Any = None) -> Distribution:
        """word2vec's noise distribution: probability proportional to ``count ** power``."""
        return cls.from_weights(np.asarray(counts, dtype=np.float64) ** power, keys)

    def draw(self, rng: np.random.Generator, n: int) -> Keys:
        """``n`` independent draws."""
        if self._cdf is None:
            return rng.integers(self.low, self.high, n, dtype=np.int64)
        if self._alias is None and self._weights is not None:
            self._draws += 1
            if self._draws > ALIAS_AFTER:
                self._alias = alias_table(self._weights)
        if self._alias is not None:
            accept, alias = self._alias
            column = rng.integers(0, len(accept), n)
            index = np.where(rng.random(n) < accept[column], column, alias[column])
        else:
            index = np.searchsorted(self._cdf, rng.random(n) * self._cdf[-1], side="right")
            index = np.minimum(index, len(self._cdf) - 1)  # guards the (measure-zero) top edge
        keys: Keys = index.astype(np.int64) if self._keys is None else self._keys[index]
        return keys

    def probabilities(self) -> tuple[Keys, npt.NDArray[np.float64]]:
        """The support and each key's probability (for tests and diagnostics)."""
        if self._weights is None:
            size = self.high - self.low
            return np.arange(self.low, self.high, dtype=np.int64), np.full(size, 1.0 / size)
        keys = np.arange(len(self._weights), dtype=np.int64) if self._keys is None else self._keys
        return keys, self._weights / self._weights.sum()

    def restricted(self, allowed: Callable[[Keys], Mask]) -> Distribution | None:
        """The distribution conditioned on ``allowed(key)``; None if no allowed key has mass."""
        keys, p = self.probabilities()
        keep = allowed(keys) & (p > 0)
        if not keep.any():
            return None
        return Distribution.from_weights(p[keep], keys[keep])

    def __repr__(self) -> str:
        if self._weights is None:
            return f"<Distribution uniform [{self.low}, {self.high})>"
        return f"<Distribution over {len(self._weights)} keys in [{self.low}, {self.high})>"


class _Function:
    """An application's own draw function ``fn(rng, n) -> keys`` as a sampler."""

    def __init__(self, fn: DrawFn) -> None:
        self.fn = fn

    def draw(self, rng: np.random.Generator, n: int) -> Keys:
        return np.asarray(self.fn(rng, n), dtype=np.int64).reshape(-1)


Sampler = Distribution | _Function


# --------------------------------------------------------------------------- handles


@dataclass
class SampleHandle:
    """``prepare_sample``'s result: ``size`` draws, ``used`` of them pulled so far."""

    id: int
    size: int
    keys: Keys | None = None  # the draws (None for onlylocal, which draws at pull time)
    used: int = 0
    finished: bool = False

    @property
    def remaining(self) -> int:
        return self.size - self.used


# --------------------------------------------------------------------------- strategies


class SamplingStrategy:
    """Base: naive sampling (the others override how draws are chosen and placed)."""

    def __init__(self, table: SampledTable, sampler: Sampler, rng: np.random.Generator) -> None:
        self.table = table
        self.sampler = sampler
        self.rng = rng
        self._ids = itertools.count(1)
        self.stats: dict[str, int] = {"prepared": 0, "pulled": 0, "postponed": 0, "not_local": 0}

    def prepare(self, n: int) -> SampleHandle:
        n = _count(n, "prepare_sample(n)")
        self.stats["prepared"] += n
        return SampleHandle(next(self._ids), n, self._checked(self.sampler.draw(self.rng, n), n))

    def pull(self, handle: SampleHandle, k: int) -> tuple[Keys, Any]:
        k = self._check_pull(handle, k)
        keys = self._next_keys(handle, k)
        handle.used += k
        self.stats["pulled"] += k
        return keys, self.table.pull(keys)

    def finish(self, handle: SampleHandle) -> None:
        handle.finished = True

    def _next_keys(self, handle: SampleHandle, k: int) -> Keys:
        assert handle.keys is not None
        return handle.keys[handle.used : handle.used + k]

    def _check_pull(self, handle: SampleHandle, k: int) -> int:
        if not isinstance(handle, SampleHandle):
            raise UsageError(f"pull_sample needs a handle from prepare_sample, got {handle!r}")
        if handle.finished:
            raise UsageError(f"sample {handle.id} was finished; prepare a new one")
        k = _count(k, "pull_sample(handle, k)")
        if k > handle.remaining:
            raise UsageError(
                f"pull_sample asked for {k} keys, but sample {handle.id} has {handle.remaining} "
                f"of its {handle.size} prepared draws left"
            )
        return k

    def _checked(self, keys: Keys, n: int) -> Keys:
        if len(keys) != n:
            raise UsageError(f"the sampler returned {len(keys)} keys for {n} draws")
        if n and (int(keys.min()) < 0 or int(keys.max()) >= self.table.num_keys):
            raise UsageError(f"the sampler drew keys outside table {self.table.name!r}'s keys")
        return keys


class PrelocStrategy(SamplingStrategy):
    """Draw at prepare and localize the draws right away, so later pulls are local."""

    def prepare(self, n: int) -> SampleHandle:
        handle = super().prepare(n)
        if n:
            self.table.localize(handle.keys, wait=False)
        return handle


class PoolStrategy(SamplingStrategy):
    """A pool of localized draws, each used ``reuse`` times; see the module docstring."""

    def __init__(
        self,
        table: SampledTable,
        sampler: Sampler,
        rng: np.random.Generator,
        group_size: int = 256,
        reuse: int = 1,
        postpone: bool = True,
        groups_ahead: int = 2,
    ) -> None:
        super().__init__(table, sampler, rng)
        self.group_size = _count(group_size, "group_size", minimum=1)
        self.reuse = _count(reuse, "reuse", minimum=1)
        self.groups_ahead = _count(groups_ahead, "groups_ahead")
        self.postpone = bool(postpone)
        self._queue: Keys = np.empty(0, dtype=np.int64)  # draws not yet handed out, in order
        self._head = 0
        self.stats["groups"] = 0

    def prepare(self, n: int) -> SampleHandle:
        n = _count(n, "prepare_sample(n)")
        self.stats["prepared"] += n
        # Keep groups_ahead groups beyond this request in the pool, so their localizes
        # have time to finish before the draws are handed out.
        target = n + self.groups_ahead * self.group_size * self.reuse
        if len(self._queue) - self._head < target:
            self._refill(target)
        keys = self._queue[self._head : self._head + n].copy()
        self._head += n
        return SampleHandle(next(self._ids), n, keys)

    def _refill(self, target: int) -> None:
        groups: list[Keys] = []
        have = len(self._queue) - self._head
        while have < target:
            drawn = self._checked(self.sampler.draw(self.rng, self.group_size), self.group_size)
            self.table.localize(drawn, wait=False)
            # every pass over the group in a fresh order, so a key's reuses are spread out
            groups.extend(drawn[self.rng.permutation(len(drawn))] for _ in range(self.reuse))
            have += len(drawn) * self.reuse
            self.stats["groups"] += 1
        self._queue = np.concatenate([self._queue[self._head :], *groups])
        self._head = 0

    def _next_keys(self, handle: SampleHandle, k: int) -> Keys:
        assert handle.keys is not None
        if self.postpone:
            rest = handle.keys[handle.used :]
            local = self.table.local_mask(rest)
            if not local[:k].all():  # reorder: local draws first, the others later (stable)
                order = np.concatenate([np.flatnonzero(local), np.flatnonzero(~local)])
                handle.keys[handle.used :] = rest[order]
                self.stats["postponed"] += int((~local[:k]).sum())
        return handle.keys[handle.used : handle.used + k]

    def finish(self, handle: SampleHandle) -> None:
        if not handle.finished and handle.keys is not None and handle.remaining:
            # unused (possibly postponed) draws are used next: dropping them would bias
            # the sample towards keys that were local
            self._queue = np.concatenate([handle.keys[handle.used :], self._queue[self._head :]])
            self._head = 0
        super().finish(handle)


class OnlyLocalStrategy(SamplingStrategy):
    """Draw among local keys only (rejection sampling): no remote access, biased."""

    def prepare(self, n: int) -> SampleHandle:
        n = _count(n, "prepare_sample(n)")
        self.stats["prepared"] += n
        return SampleHandle(next(self._ids), n, None)

    def _next_keys(self, handle: SampleHandle, k: int) -> Keys:
        found: list[Keys] = []
        need, drawn, batch = k, 0, max(4 * k, 64)
        while need > 0:
            if drawn >= MAX_REJECTED_DRAWS:
                # local keys are rare, or left since the last draw: stop rejecting
                found.append(self._exact(need))
                break
            cand = self.sampler.draw(self.rng, batch)
            local = cand[self.table.local_mask(cand)]
            drawn += batch
            found.append(local[:need])
            need -= len(found[-1])
            batch = min(batch * 2, MAX_REJECTED_DRAWS)
        return np.concatenate(found)

    def _exact(self, k: int) -> Keys:
        """Rejection took too long: draw from the restricted distribution, if it exists."""
        if isinstance(self.sampler, Distribution):
            restricted = self.sampler.restricted(self.table.local_mask)
            if restricted is not None:
                return restricted.draw(self.rng, k)
        if self.table.static_allocation:
            raise UsageError(
                f"onlylocal sampling on table {self.table.name!r}: workers own no keys with "
                "allocation static; use naive, preloc or pool"
            )
        # This node owns none of the keys the sampler draws right now (other workers took
        # them): draw as naive does rather than stall; counted, so the bias is visible.
        self.stats["not_local"] += k
        return self._checked(self.sampler.draw(self.rng, k), k)


def make_strategy(
    table: SampledTable,
    sampler: Any = None,
    strategy: Strategy | str = Strategy.NAIVE,
    *,
    seed: int | None = None,
    **options: Any,
) -> SamplingStrategy:
    """The strategy object behind ``Table.set_sampler`` (see the module docstring)."""
    try:
        kind = Strategy(strategy)
    except ValueError:
        names = ", ".join(s.value for s in Strategy)
        raise UsageError(f"unknown sampling strategy {strategy!r}; choose one of {names}") from None
    chosen: Sampler
    if sampler is None:
        chosen = Distribution.uniform(0, table.num_keys)
    elif isinstance(sampler, Distribution):
        chosen = sampler
    elif callable(sampler):
        chosen = _Function(sampler)
    else:
        raise UsageError(f"sampler must be a dynaps.Distribution or fn(rng, n), got {sampler!r}")
    if isinstance(chosen, Distribution) and chosen.high > table.num_keys:
        raise UsageError(
            f"the sampler's keys reach {chosen.high - 1}, outside table {table.name!r} "
            f"(num_keys={table.num_keys})"
        )
    rng = np.random.default_rng(seed)
    if kind is Strategy.POOL:
        unknown = set(options) - POOL_OPTIONS
        if unknown:
            raise UsageError(f"unknown pool options {sorted(unknown)}; known: {sorted(POOL_OPTIONS)}")
        return PoolStrategy(table, chosen, rng, **options)
    if options:
        raise UsageError(f"options {sorted(options)} apply to the pool strategy only, not {kind.value}")
    if kind is Strategy.PRELOC:
        return PrelocStrategy(table, chosen, rng)
    if kind is Strategy.ONLYLOCAL:
        return OnlyLocalStrategy(table, chosen, rng)
    return SamplingStrategy(table, chosen, rng)


def _count(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise UsageError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)
