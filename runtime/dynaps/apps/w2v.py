"""Word vectors: skip-gram with negative sampling (word2vec), negatives through the sampling API.

Two tables: ``words`` (input vectors) and ``contexts`` (output vectors).  Each worker
trains on its contiguous share of the corpus: for every centre word, the words within
``--window`` of it (same sentence) are positives, and ``--neg`` words per pair drawn from
the unigram^0.75 distribution are negatives, pulled with ``contexts.pull_sample``.

Workers push gradients and the tables' owners take AdaGrad steps (``--lr`` is AdaGrad's).
word2vec's plain steps, one pair at a time, do not survive minibatches: a push sums every
occurrence's gradient of a frequent word, all computed from one value, so the step grows
with the minibatch and with the number of workers pushing from the same stale values, and
training diverged (two workers at 512 centres on a 300-word vocabulary; one worker at
1,024).  AdaGrad's per-coordinate step is bounded by ``lr`` whatever the push sums.

With ``--allocation dynamic`` the words of minibatch ``t + ahead`` are localized while
minibatch ``t`` trains (Lapse's localize-ahead), and negatives use ``--neg-strategy``
(default ``pool``: groups of draws localized ahead and reused); ``static`` samples naively.
With two or more workers the hot words, those expected in every other minibatch or more,
are replicated in every worker instead (NuPS; ``--hot-words``): relocated, they would
bounce between the workers at every minibatch.

Quality: on the synthetic corpus, how often a planted synonym is a word's nearest
neighbour (cosine), and the share of its 10 nearest neighbours from its own topic.

    python -m dynaps.apps.w2v --epochs 3
    python -m dynaps.apps.w2v --corpus text.txt --min-count 5 --dim 100
    dynaps run examples/w2v.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dynaps.apps import common, launching, reporting, synthetic
from dynaps.apps.arguments import count_or_fraction, non_negative_int, positive_int, sync_ms
from dynaps.apps.data import Corpus, read_corpus
from dynaps.client.sampling import Distribution
from dynaps.contract import TableSpec, UpdaterKind, UpdaterSpec


@dataclass(frozen=True)
class Config:
    allocation: str = "dynamic"
    dim: int = 32
    epochs: int = 3
    batch: int = 512  # centre words per minibatch
    window: int = 3
    neg: int = 5
    lr: float = 0.1  # AdaGrad's, on the tables' owners
    ahead: int = 2
    neg_strategy: str = "pool"
    # dynamic, 2+ workers: replicate the N (or this fraction of) most frequent words; None: those
    # expected in every other minibatch or more (hot_words_expected)
    hot_words: float | None = None
    # about a minibatch: the owners take one AdaGrad step per flush, and at 20 ms the first
    # epoch trained less (tests' corpus: loss 2.97 against 2.57 at 2 ms and 2.53 relocated)
    hot_sync_ms: float = 5.0
    pool_group: int = 2048
    pool_reuse: int = 4
    seed: int = 0
    corpus: str | None = None
    min_count: int = 1
    vocabulary: int = 5_000
    tokens: int = 300_000
    report: str | None = None
    quiet: bool = False


_DATA: dict[tuple[Any, ...], tuple[Corpus, synthetic.Planted | None]] = {}


def load(config: Config) -> tuple[Corpus, synthetic.Planted | None]:
    key = (config.corpus, config.min_count, config.vocabulary, config.tokens, config.seed)
    if key not in _DATA:
        if config.corpus:
            data: tuple[Corpus, synthetic.Planted | None] = (
                read_corpus(config.corpus, config.min_count),
                None,
            )
        else:
            data = synthetic.corpus(config.vocabulary, config.tokens, seed=config.seed)
        _DATA.clear()
        _DATA[key] = data
    return _DATA[key]


def tables(config: Config, vocabulary: int | None = None) -> dict[str, TableSpec]:
    if vocabulary is None:
        vocabulary = len(load(config)[0].words) if config.corpus else config.vocabulary
    adagrad = UpdaterSpec(kind=UpdaterKind.ADAGRAD, lr=config.lr)
    return {
        "words": TableSpec(num_keys=vocabulary, dim=config.dim, updater=adagrad),
        "contexts": TableSpec(num_keys=vocabulary, dim=config.dim, updater=adagrad),
        **reporting.metrics_table(),
    }


def train(ps: common.PSLike, config: Config) -> list[dict[str, Any]]:
    corpus, planted = load(config)
    vocabulary = len(corpus.words)
    words = common.check_table(ps, "words", vocabulary, config.dim, gradients=True, lr=config.lr)
    contexts = common.check_table(ps, "contexts", vocabulary, config.dim, gradients=True, lr=config.lr)
    progress = reporting.Progress(ps, "w2v", config.epochs, config.quiet)
    moving = common.dynamic(ps, config.allocation)
    me, workers = ps.rank, ps.num_workers
    share = slice(len(corpus.tokens) * me // workers, len(corpus.tokens) * (me + 1) // workers)
    tokens, sentence = corpus.tokens[share], corpus.sentence[share]
    progress.note(
        f"{len(corpus.tokens):,} tokens, {vocabulary:,} words, {workers} workers, "
        f"allocation {'dynamic' if moving else 'static'}"
    )

    strategy = config.neg_strategy if moving else "naive"
    options = {"group_size": config.pool_group, "reuse": config.pool_reuse} if strategy == "pool" else {}
    noise = Distribution.unigram(np.maximum(corpus.counts, 1))
    contexts.set_sampler(noise, strategy, seed=config.seed * 1000 + me, **options)
    if me == 0:  # word2vec's start: small random input vectors, zero output vectors
        init = np.random.default_rng([config.seed, 11])
        bound = 0.5 / config.dim
        common.set_in_chunks(
            words, np.arange(vocabulary), init.uniform(-bound, bound, (vocabulary, config.dim))
        )
    ps.barrier()
    hot = (
        _replicate_hot(ps, (words, contexts), corpus, config)
        if moving and workers > 1
        else np.empty(0, np.int64)
    )
    if len(hot):
        covered = corpus.counts[hot].sum() / max(1, corpus.counts.sum())
        progress.note(f"{len(hot):,} hot words replicated in every worker ({covered:.0%} of the tokens)")

    for epoch in range(1, config.epochs + 1):
        progress.start_epoch()
        loss, pairs = _epoch(words, contexts, tokens, sentence, config, moving)
        seconds, mean_loss = progress.end_epoch(loss, pairs)
        started = time.perf_counter()
        quality = _similarity(words, planted, vocabulary) if me == 0 else {}
        progress.report(epoch, seconds, mean_loss, quality, time.perf_counter() - started)
        ps.barrier()
    if len(hot):
        words.replicate([])  # flushed; the tables are as the job declared them for whatever runs next
        contexts.replicate([])
    progress.write(config.report, asdict(config))
    return [r.to_dict() for r in progress.reports]


def hot_words_expected(counts: Any, config: Config) -> common.Keys:
    """The words expected at least half a time in a minibatch: as a centre, a context, or a
    negative (drawn from unigram^0.75).  Every worker wants these all the time, so relocated
    they would bounce between the workers every minibatch or two.  On a large vocabulary
    that is the head of the Zipf curve (5,826 of 50,000 words for a million tokens);
    replicating more than the head costs more than it saves (its refreshes).  Where the
    head is most of the vocabulary, every word is taken: the few left would still be in
    nearly every minibatch, and a minibatch with any relocated word pays a round of
    messages (the example's 2,000 words: 1,999 replicated 1.50-1.53 CPU s per epoch, all
    1.42; the default 5,000: 4,963 replicated 4.9 s per epoch, all 3.5): bench/README.md,
    "w2v's hot words"."""
    share = counts / max(1.0, float(counts.sum()))
    noise = np.maximum(counts, 1) ** 0.75
    pairs = 2 * config.window  # contexts per centre, at most
    expected = config.batch * (share * (1 + pairs) + pairs * config.neg * noise / noise.sum())
    hot: common.Keys = np.flatnonzero(expected >= 0.5)
    if 2 * len(hot) > len(counts):
        return np.arange(len(counts), dtype=np.int64)
    return hot


def _replicate_hot(ps: common.PSLike, tables: tuple[Any, Any], corpus: Corpus, config: Config) -> common.Keys:
    """Replicate the most frequent words in every worker (NuPS): every worker's minibatches
    want them, so relocated they would bounce between the workers all the time."""
    if config.hot_words is None:
        hot = hot_words_expected(corpus.counts.astype(np.float64), config)
    else:
        hot = common.most_frequent(corpus.counts, config.hot_words)
    if len(hot):
        if ps.rank == 0:  # one owner: a flush or a refresh is one message, not one per home
            for table in tables:
                table.localize(hot)
        ps.barrier()
        for table in tables:
            table.replicate(hot, sync_ms=config.hot_sync_ms)
    return hot


def _pairs(tokens: Any, sentence: Any, first: int, count: int, window: int) -> tuple[Any, Any]:
    """(centre, context) pairs for centres ``first .. first + count``, within sentences."""
    centre = np.arange(first, min(first + count, len(tokens)))
    offsets = np.array([o for o in range(-window, window + 1) if o], dtype=np.int64)
    other = centre[:, None] + offsets[None, :]
    inside = (other >= 0) & (other < len(tokens))
    other = np.clip(other, 0, len(tokens) - 1)
    valid = inside & (sentence[other] == sentence[centre][:, None])
    c = np.broadcast_to(centre[:, None], other.shape)[valid]
    return tokens[c], tokens[other[valid]]


def _epoch(
    words: Any,
    contexts: Any,
    tokens: Any,
    sentence: Any,
    config: Config,
    moving: bool,
) -> tuple[float, float]:
    queue: deque[tuple[Any, Any, Any]] = deque()
    loss, count = 0.0, 0.0
    starts = range(0, len(tokens), config.batch)
    for step in range(len(starts) + config.ahead):
        if step < len(starts):
            centre, context = _pairs(tokens, sentence, starts[step], config.batch, config.window)
            handle = contexts.prepare_sample(len(centre) * config.neg)
            if moving:  # localize ahead: these keys are used `ahead` minibatches from now
                words.localize(centre, wait=False)
                contexts.localize(context, wait=False)
            queue.append((centre, context, handle))
        if step >= config.ahead:
            centre, context, handle = queue.popleft()
            loss += _sgns(words, contexts, centre, context, handle, config.neg)
            count += len(centre)
    return loss, count


def _sgns(words: Any, contexts: Any, centre: Any, context: Any, handle: Any, neg: int) -> float:
    """One skip-gram negative-sampling minibatch: pushes its gradients, returns the summed loss."""
    n = len(centre)
    if not n:
        contexts.finish_sample(handle)
        return 0.0
    v_in, v_out = words.pull(centre), contexts.pull(context)
    neg_keys, v_neg = contexts.pull_sample(handle, n * neg)
    contexts.finish_sample(handle)
    v_neg = v_neg.reshape(n, neg, -1)
    pos = np.einsum("nd,nd->n", v_in, v_out)
    negs = np.einsum("nd,nkd->nk", v_in, v_neg)
    loss = float(np.logaddexp(0, -pos).sum() + np.logaddexp(0, negs).sum())
    g_pos = 0.5 * (1 + np.tanh(0.5 * pos)) - 1  # d loss / d score
    g_neg = 0.5 * (1 + np.tanh(0.5 * negs))
    grad_in = g_pos[:, None] * v_out + np.einsum("nk,nkd->nd", g_neg, v_neg)
    words.push(centre, grad_in)
    out_keys = np.concatenate([context, neg_keys])
    out_grads = np.concatenate(
        [g_pos[:, None] * v_in, (g_neg[:, :, None] * v_in[:, None, :]).reshape(n * neg, -1)]
    )
    contexts.push(out_keys, out_grads)
    return loss


def _similarity(words: Any, planted: synthetic.Planted | None, vocabulary: int) -> dict[str, float]:
    """Nearest neighbours among the 2000 most frequent words: do they find the planted structure?"""
    if planted is None:
        return {}
    top = min(vocabulary, 2000)
    vectors = words.pull(np.arange(top)).astype(np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argsort(-sims, axis=1)[:, :10]
    pairs = planted.synonyms[(planted.synonyms < top).all(axis=1)]
    found = [neighbours[a, 0] == b or neighbours[b, 0] == a for a, b in pairs.tolist()]
    topical = planted.topic[:top] >= 0
    same = planted.topic[neighbours[topical]] == planted.topic[:top][topical][:, None]
    return {
        "synonym@1": float(np.mean(found)) if found else float("nan"),
        "topic P@10": float(same.mean()),
    }


def parse(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m dynaps.apps.w2v",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    launching.add_common_arguments(parser, epochs=3, batch=512, lr=0.1, adagrad=True)
    parser.add_argument("--dim", type=positive_int, default=32, help="vector size (default 32)")
    parser.add_argument(
        "--window", type=positive_int, default=3, help="context words on each side (default 3)"
    )
    parser.add_argument("--neg", type=positive_int, default=5, help="negatives per pair (default 5)")
    parser.add_argument(
        "--ahead", type=non_negative_int, default=2, help="localize words this many batches ahead"
    )
    parser.add_argument(
        "--neg-strategy",
        choices=["naive", "preloc", "pool", "onlylocal"],
        default="pool",
        help="sampling strategy for negatives under dynamic allocation (default pool)",
    )
    parser.add_argument(
        "--hot-words",
        type=_hot_words,
        default=None,
        metavar="N",
        help="dynamic: replicate the N most frequent words (a fraction of the vocabulary if N < 1; "
        "0: none) in every worker instead of relocating them (default auto: the words expected "
        "in every other minibatch or more, which bounce between workers when relocated)",
    )
    parser.add_argument(
        "--hot-sync-ms",
        type=sync_ms,
        default=5.0,
        help="hot words: milliseconds between a replica's flushes (default 5)",
    )
    parser.add_argument(
        "--pool-group", type=positive_int, default=2048, help="pool: draws per group (default 2048)"
    )
    parser.add_argument("--pool-reuse", type=positive_int, default=4, help="pool: uses per draw (default 4)")
    data = parser.add_argument_group("data", "a plain-text corpus, or a synthetic one (the default)")
    data.add_argument("--corpus", metavar="TXT", help="whitespace-separated tokens, a sentence per line")
    data.add_argument("--min-count", type=non_negative_int, default=1, help="drop rarer words (default 1)")
    data.add_argument(
        "--vocabulary", type=positive_int, default=5_000, help="synthetic: words (default 5000)"
    )
    data.add_argument(
        "--tokens", type=positive_int, default=300_000, help="synthetic: tokens (default 300000)"
    )
    launching.add_launch_arguments(parser)
    args = parser.parse_args(argv)
    fields = {f: getattr(args, f) for f in Config.__dataclass_fields__ if hasattr(args, f)}
    return Config(**fields), args


def _hot_words(text: str) -> float | None:
    return None if text == "auto" else count_or_fraction(text)


def main(argv: list[str] | None = None) -> int:
    config, args = parse(argv)
    return launching.launch("w2v", config, args)


if __name__ == "__main__":
    sys.exit(main())
