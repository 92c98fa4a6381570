"""KGE's training passes: the minibatch step, and the two ways to run it over a worker's
triples (``--clustering relations``: an epoch with entities localized ahead; ``entities``:
one round of entity blocks, dynaps.apps.kge_blocks)."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import numpy as np

from dynaps.apps import kge_blocks
from dynaps.apps.kge_models import Model


class StepConfig(Protocol):
    """What the passes read of ``dynaps.apps.kge.Config``."""

    @property
    def batch(self) -> int: ...
    @property
    def neg(self) -> int: ...
    @property
    def reg(self) -> float: ...
    @property
    def ahead(self) -> int: ...


def localize_ahead_epoch(
    entities: Any, relations: Any, model: Model, triples: Any, config: StepConfig, moving: bool
) -> float:
    """One pass in minibatches, hiding latency three ways (identically for static and dynamic):

    * with dynamic allocation, entities are localized ``ahead`` minibatches before use,
      for ``ahead`` minibatches at once (one request per home, not one per minibatch);
    * the next minibatch's parameters are pulled asynchronously while this one computes
      (so it may miss this minibatch's updates to shared keys: staleness one);
    * pushes are asynchronous, ``ahead + 1`` minibatches in flight.
    """
    starts = list(range(0, len(triples), config.batch))
    batches = [triples[first : first + config.batch] for first in starts]
    ahead = max(1, config.ahead)
    negatives: deque[Any] = deque()
    pushes: deque[list[Any]] = deque()
    loss = 0.0
    upcoming = _pull_ahead(entities, relations, batches[0]) if batches else None
    for step, batch in enumerate(batches):
        if moving and step % ahead == 0:
            chunk = batches[step if step == 0 else step + ahead : step + 2 * ahead]
            if chunk:
                entities.localize(
                    np.concatenate([np.concatenate([b[:, 0], b[:, 2]]) for b in chunk]), wait=False
                )
        while len(negatives) <= ahead and step + len(negatives) < len(batches):
            negatives.append(entities.prepare_sample(2 * config.neg * len(batches[step + len(negatives)])))
        current = upcoming
        if step + 1 < len(batches):
            upcoming = _pull_ahead(entities, relations, batches[step + 1])
        sample, size = negatives.popleft(), 2 * config.neg * len(batch)
        neg_keys, neg_vals = entities.pull_sample(sample, size)
        entities.finish_sample(sample)
        assert current is not None  # pulled one step ahead
        ends, rels = current[0].result(), current[1].result()
        step_loss, handles = minibatch(
            entities, relations, model, batch, ends, rels, neg_keys, neg_vals, config
        )
        loss += step_loss
        pushes.append(handles)
        if len(pushes) > ahead + 1:
            for handle in pushes.popleft():
                handle.result()
    return loss


def _pull_ahead(entities: Any, relations: Any, batch: Any) -> tuple[Any, Any]:
    ends = entities.pull(np.concatenate([batch[:, 0], batch[:, 2]]), wait=False)
    return ends, relations.pull(batch[:, 1], wait=False)


def block_round(
    entities: Any,
    relations: Any,
    model: Model,
    blocks: kge_blocks.EntityBlocks,
    pair: tuple[int, int],
    triples: Any,
    config: StepConfig,
    rng: np.random.Generator,
) -> float:
    """One round of entity blocks: the bucket's triples in minibatches, negatives drawn from
    the round's two blocks.  The next minibatch's rows (ends and negatives in one pull) are
    pulled while this one computes; pushes are asynchronous, ``ahead + 1`` in flight, and all
    are complete when the round returns (the barrier after it hands the blocks on)."""
    batches = [triples[first : first + config.batch] for first in range(0, len(triples), config.batch)]
    pushes: deque[list[Any]] = deque()
    loss = 0.0

    def pull(batch: Any) -> tuple[Any, Any, Any]:
        neg_keys = kge_blocks.negatives(blocks, pair, 2 * config.neg * len(batch), rng)
        rows = entities.pull(np.concatenate([batch[:, 0], batch[:, 2], neg_keys]), wait=False)
        return neg_keys, rows, relations.pull(batch[:, 1], wait=False)

    if not batches:
        return loss
    upcoming = pull(batches[0])
    for step, batch in enumerate(batches):
        neg_keys, rows, rels = upcoming
        if step + 1 < len(batches):
            upcoming = pull(batches[step + 1])
        both = 2 * len(batch)
        values = rows.result()
        step_loss, handles = minibatch(
            entities, relations, model, batch, values[:both], rels.result(), neg_keys, values[both:], config
        )
        loss += step_loss
        pushes.append(handles)
        if len(pushes) > max(1, config.ahead) + 1:
            for handle in pushes.popleft():
                handle.result()
    for handles in pushes:
        for handle in handles:
            handle.result()
    return loss


def minibatch(
    entities: Any,
    relations: Any,
    model: Model,
    batch: Any,
    ends: Any,
    rels: Any,
    neg_keys: Any,
    neg_vals: Any,
    config: StepConfig,
) -> tuple[float, list[Any]]:
    """One minibatch from its pulled rows: ``ends`` (heads then tails), ``rels``, and the
    negatives (``n`` corrupted tails per positive, then ``n`` corrupted heads)."""
    h_keys, r_keys, t_keys = batch[:, 0], batch[:, 1], batch[:, 2]
    n, size = config.neg, len(batch)
    h, t = ends[:size], ends[size:]
    tneg = neg_vals[: n * size].reshape(size, n, -1)
    hneg = neg_vals[n * size :].reshape(size, n, -1)
    # the push's rows in the order of its keys: heads, tails, then the negatives
    grads = np.empty((len(ends) + len(neg_vals), ends.shape[1]), dtype=np.float32)
    g = model.gradients(h, rels, t, tneg, hneg, out=grads)
    reg = np.float32(config.reg)
    g.head += reg * h
    g.tail += reg * t
    keys = np.concatenate([h_keys, t_keys, neg_keys])
    handles = [
        entities.push(keys, grads, wait=False),
        relations.push(r_keys, (g.relation + reg * rels).astype(np.float32, copy=False), wait=False),
    ]
    return g.loss, handles
