"""Seeded synthetic data with the skew and structure of the real thing.

Nothing can be downloaded where dynaps is developed, and benchmarks need sizes on demand,
so each app has a generator whose data a model can actually learn (known structure plus
noise) and whose access pattern is realistic (Zipf-skewed popularity):

* :func:`matrix`: a low-rank matrix plus noise, rows and columns drawn by Zipf popularity;
* :func:`knowledge_graph`: triples scored by a hidden bilinear (RESCAL-like) model;
* :func:`corpus`: Zipfian words grouped into topics, with planted synonym pairs;
* :func:`sparse_classification`: sparse examples labelled by a hidden logistic model;
* :func:`dense_clusters`: dense examples whose classes are unions of scattered clusters.

The same arguments always give the same data, in every process of a job.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dynaps.apps.arguments import non_negative_int, positive_int
from dynaps.apps.data import (
    Corpus,
    Entries,
    Floats,
    Ints,
    SparseExamples,
    Triples,
    write_corpus,
    write_libsvm,
    write_matrix_market,
    write_triples,
)
from dynaps.errors import DynapsError, UsageError


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> Floats:
    """Popularity ``1 / rank**exponent``, with ranks assigned to ids at random."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    shuffled: Floats = weights[rng.permutation(n)] / weights.sum()
    return shuffled


def capped(weights: Floats, draws: int, cap: float) -> Floats:
    """Weights whose expected number of draws stays below ``cap`` each (mass moves to the tail).

    Items that can be drawn only a limited number of times (a row has only so many cells,
    a (head, relation) pair only so many tails) would otherwise force endless redraws.
    """
    w: Floats = weights / weights.sum()
    if cap * len(w) <= draws:  # no weighting can keep every item under the cap: spread evenly
        return np.full(len(w), 1.0 / len(w))
    for _ in range(20):
        over = w * draws > cap
        if not over.any():
            break
        w[over] = cap / draws
        free = ~over
        w[free] *= (1.0 - w[over].sum()) / w[free].sum()
    return w


def unique_draws(sample: Callable[[int], Ints], total: int) -> Ints:
    """``total`` distinct values from repeated calls of ``sample(n)``, in first-drawn order."""
    taken: list[Ints] = []
    seen = np.zeros(0, dtype=np.int64)  # sorted
    have, rounds = 0, 0
    while have < total:
        need = total - have
        # at least an eighth of the total per round: the last, rarest values would otherwise
        # be collected a handful per round
        fresh = sample(max(need + need // 4 + 16, total // 8))
        values, first = np.unique(fresh, return_index=True)
        pos = np.minimum(np.searchsorted(seen, values), max(len(seen) - 1, 0))
        new = first[~(seen[pos] == values)] if len(seen) else first
        picked = fresh[np.sort(new)][:need]
        taken.append(picked)
        seen = np.sort(np.concatenate([seen, picked]))
        have += len(picked)
        rounds += 1
        if rounds > 200:  # the generator cannot produce that many distinct values
            raise UsageError(f"could only draw {have} distinct items of {total}: ask for less data")
    return np.concatenate(taken)


def draw(weights: Floats, n: int, rng: np.random.Generator) -> Ints:
    cdf = np.cumsum(weights)
    index = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    keys: Ints = np.minimum(index, len(weights) - 1).astype(np.int64)
    return keys


# --------------------------------------------------------------------------- matrix


def matrix(
    rows: int,
    cols: int,
    rank: int,
    entries: int,
    *,
    test_entries: int = 0,
    noise: float = 0.1,
    zipf: float = 1.0,
    seed: int = 0,
) -> tuple[Entries, Entries]:
    """``entries`` training and ``test_entries`` held-out cells of ``L @ R.T + noise``.

    Each cell is observed at most once (duplicates are redrawn), and no row or column
    is expected to fill more than a quarter of its cells (the Zipf head is capped there);
    values have about unit variance.
    """
    rng = np.random.default_rng([seed, 1])
    total = entries + test_entries
    if total > rows * cols // 2:
        raise UsageError(
            f"{entries} + {test_entries} test entries is more than half of a {rows} x {cols} matrix: "
            "ask for fewer entries (--entries, --test-entries) or a larger matrix"
        )
    # about a quarter of a row (column) at most: the head of the Zipf curve is capped there
    row_w = capped(zipf_weights(rows, zipf, rng), total, cols / 4)
    col_w = capped(zipf_weights(cols, zipf, rng), total, rows / 4)
    cells = unique_draws(lambda n: draw(row_w, n, rng) * cols + draw(col_w, n, rng), total)
    cells = cells[rng.permutation(total)]
    scale = rank**-0.25
    left = rng.normal(0.0, scale, (rows, rank))
    right = rng.normal(0.0, scale, (cols, rank))
    i, j = cells // cols, cells % cols
    values = rng.normal(0.0, noise, total)
    for first in range(0, total, 65_536):  # gathers of (chunk x rank), not (total x rank)
        part = slice(first, first + 65_536)
        values[part] += np.einsum("nk,nk->n", left[i[part]], right[j[part]])
    every = Entries(rows, cols, i, j, values)
    return every.subset(slice(0, entries)), every.subset(slice(entries, total))


# --------------------------------------------------------------------------- knowledge graph


def knowledge_graph(
    entities: int,
    relations: int,
    triples: int,
    *,
    clusters: int = 20,
    test_fraction: float = 0.05,
    zipf: float = 1.0,
    seed: int = 0,
) -> Triples:
    """Triples with a hidden block structure: entities fall into ``clusters``; relation ``r``
    maps cluster ``c`` to cluster ``pi_r(c) = c + shift_r``, and the tail is drawn from that cluster by
    Zipf popularity (hub entities).  Heads and relations are Zipf-popular too.

    A model that learns the structure ranks true tails (and heads) near the top of their
    cluster, so filtered MRR measures what it learned; valid and test are disjoint from
    train.  The hidden mapping is a low-rank pattern that ComplEx and RESCAL can express.
    """
    rng = np.random.default_rng([seed, 2])
    clusters = max(1, min(clusters, entities // 4))
    possible = entities * relations * -(-entities // clusters)  # (head, relation, tail in its cluster)
    if triples > possible // 2:
        raise UsageError(
            f"{triples} triples is too many for {entities} entities and {relations} relations "
            f"(at most {possible // 2}): ask for fewer triples or more entities or relations"
        )
    cluster = rng.permutation(np.arange(entities) % clusters)  # none empty
    # pi_r(c) = c + shift_r (mod clusters): cyclic shifts commute, so ComplEx's diagonal
    # relations can express them as well as RESCAL's full matrices
    shift = rng.integers(1, clusters, relations) if clusters > 1 else np.zeros(relations, np.int64)
    target = (np.arange(clusters)[None, :] + shift[:, None]) % clusters
    popularity = zipf_weights(entities, zipf, rng)
    # entities laid out cluster by cluster, so a cluster is one range of one cumulative sum
    by_cluster = np.argsort(cluster, kind="stable")
    cdf = np.cumsum(popularity[by_cluster])
    bounds = np.searchsorted(cluster[by_cluster], np.arange(clusters + 1))
    low = np.concatenate([[0.0], cdf])[bounds[:-1]]
    high = cdf[bounds[1:] - 1]
    head_w = capped(zipf_weights(entities, zipf, rng), triples, entities / clusters / 4 * relations)
    rel_w = zipf_weights(relations, zipf * 0.5, rng)

    def sample(n: int) -> Ints:
        heads, rels = draw(head_w, n, rng), draw(rel_w, n, rng)
        c = target[rels, cluster[heads]]
        position = np.searchsorted(cdf, low[c] + rng.random(n) * (high[c] - low[c]), side="right")
        tails = by_cluster[np.clip(position, bounds[c], bounds[c + 1] - 1)]
        codes: Ints = (heads * relations + rels) * entities + tails
        return codes

    codes = unique_draws(sample, triples)
    pairs, tails = codes // entities, codes % entities
    ids = np.column_stack([pairs // relations, pairs % relations, tails])
    ids = ids[rng.permutation(len(ids))]
    held = int(len(ids) * test_fraction)
    return Triples(
        [f"e{i}" for i in range(entities)],
        [f"r{i}" for i in range(relations)],
        ids[2 * held :],
        ids[:held],
        ids[held : 2 * held],
        cluster,
    )


# --------------------------------------------------------------------------- corpus


@dataclass
class Planted:
    """What the corpus generator hid: each word's topic and the synonym pairs."""

    topic: Ints  # per word id; -1 for function words (in every topic)
    synonyms: Ints  # (pairs, 2) word ids used interchangeably


def corpus(
    vocabulary: int,
    tokens: int,
    *,
    topics: int = 20,
    function_words: int = 20,
    synonym_pairs: int = 50,
    sentence_length: int = 20,
    zipf: float = 1.0,
    seed: int = 0,
) -> tuple[Corpus, Planted]:
    """Sentences about one topic each, words Zipf-distributed within topics; a fifth of the
    tokens are function words shared by all topics; synonym pairs are swapped at random
    and followed by a companion word of their own (so only they share that context)."""
    smallest = function_words + 80  # the synonyms are drawn from ranks 70 on
    if vocabulary < smallest:
        raise UsageError(
            f"the synthetic corpus needs a vocabulary of {smallest} words or more, got {vocabulary}"
        )
    rng = np.random.default_rng([seed, 3])
    weights = 1.0 / np.arange(1, vocabulary + 1, dtype=np.float64) ** zipf  # word id = frequency rank
    topic = np.full(vocabulary, -1, dtype=np.int64)
    topic[function_words:] = rng.integers(0, topics, vocabulary - function_words)
    # synonyms: two mid-frequency words of one topic; the generator only ever draws the
    # first, and writes the second half of the time, so both share all their contexts
    candidates = rng.permutation(np.arange(function_words + 50, min(vocabulary, function_words + 50 + 4000)))
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for word in candidates.tolist():
        if len(pairs) >= synonym_pairs:
            break
        if word in used:
            continue
        mates = [
            m for m in candidates[topic[candidates] == topic[word]].tolist() if m != word and m not in used
        ]
        if mates:
            pairs.append((word, mates[0]))
            used.update((word, mates[0]))
    synonyms = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    base = weights.copy()
    base[synonyms[:, 1]] = 0.0
    sentences = -(-tokens // sentence_length)
    sentence_topic = rng.integers(0, topics, sentences)
    out = np.empty((sentences, sentence_length), dtype=np.int64)
    function = rng.random((sentences, sentence_length)) < 0.2
    fw = base[:function_words]
    out[function] = draw(fw / fw.sum(), int(function.sum()), rng)
    for t in range(topics):
        members = np.flatnonzero(topic == t)
        if not len(members):  # a small vocabulary left the topic no word: any content word
            members = np.flatnonzero(topic >= 0)
        slots = (~function) & (sentence_topic[:, None] == t)
        w = base[members]
        out[slots] = members[draw(w / w.sum(), int(slots.sum()), rng)]
    swap = np.zeros(vocabulary, dtype=np.int64) - 1
    swap[synonyms[:, 0]] = synonyms[:, 1]
    mate = swap[out]
    flip = (mate >= 0) & (rng.random(out.shape) < 0.5)
    out[flip] = mate[flip]
    # Each pair also has a companion word that follows either synonym: a context the two
    # share and no other word of their topic has, so they are each other's neighbours.
    companion = np.zeros(vocabulary, dtype=np.int64) - 1
    if len(synonyms):
        partners = rng.choice(np.setdiff1d(np.arange(function_words, vocabulary), synonyms), len(synonyms))
        companion[synonyms[:, 0]] = companion[synonyms[:, 1]] = partners
    follows = companion[out[:, :-1]]
    has = follows >= 0
    out[:, 1:][has] = follows[has]
    flat = out.reshape(-1)[:tokens]
    sentence = np.repeat(np.arange(sentences), sentence_length)[:tokens]
    counts = np.bincount(flat, minlength=vocabulary).astype(np.int64)
    return Corpus(flat, sentence, [f"w{i}" for i in range(vocabulary)], counts), Planted(topic, synonyms)


# --------------------------------------------------------------------------- classification


def sparse_classification(
    examples: int,
    features: int,
    *,
    nonzeros: int = 20,
    zipf: float = 1.0,
    seed: int = 0,
) -> SparseExamples:
    """Binary features drawn with Zipf popularity; labels from a hidden logistic model."""
    rng = np.random.default_rng([seed, 4])
    popularity = zipf_weights(features, zipf, rng)
    lengths = rng.integers(max(1, nonzeros // 2), nonzeros * 3 // 2 + 1, examples)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = draw(popularity, int(indptr[-1]), rng)
    truth = rng.normal(0.0, 1.0, features) * (rng.random(features) < 0.5)
    values = np.ones(len(indices))
    row = np.repeat(np.arange(examples), lengths)
    margin = np.bincount(row, weights=truth[indices], minlength=examples) / np.sqrt(lengths / 4)
    labels = (rng.random(examples) < 1.0 / (1.0 + np.exp(-margin))).astype(np.float64)
    return SparseExamples(indptr, indices, values, labels, features)


def dense_clusters(
    examples: int,
    features: int,
    classes: int,
    *,
    clusters_per_class: int = 4,
    latent: int = 4,
    spread: float = 0.3,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[npt.NDArray[np.float32], Ints]:
    """Dense examples and their classes, which a hidden layer separates and a linear model cannot.

    Each class owns ``clusters_per_class`` Gaussian clusters whose centres lie scattered in
    a ``latent``-dimensional space, among the other classes' clusters; the latent points
    are embedded in ``features`` dimensions by a random orthogonal map, plus noise.  With
    few latent dimensions and many clusters no hyperplane separates a class from the rest
    (softmax regression stays near 35 % on the defaults with 10 classes), while an MLP
    with one hidden layer of 128 reaches about 80 %.
    """
    if latent > features:
        raise UsageError(f"latent dimensions ({latent}) must not exceed features ({features})")
    rng = np.random.default_rng([seed, 5])
    centres = rng.normal(0.0, 1.0, (classes * clusters_per_class, latent))
    basis = np.linalg.qr(rng.normal(0.0, 1.0, (features, features)))[0][:, :latent]
    embed = basis * np.sqrt(features / latent)  # latent structure as strong as the noise dims
    cluster = rng.integers(0, len(centres), examples)
    points = centres[cluster] + spread * rng.normal(0.0, 1.0, (examples, latent))
    x = points @ embed.T + noise * rng.normal(0.0, 1.0, (examples, features))
    labels: Ints = (cluster % classes).astype(np.int64)
    return x.astype(np.float32), labels


# --------------------------------------------------------------------------- files


def main(argv: list[str] | None = None) -> int:
    """``python -m dynaps.apps.synthetic KIND DIR``: write a data set in the apps' file formats."""
    parser = argparse.ArgumentParser(prog="python -m dynaps.apps.synthetic", description=main.__doc__)
    parser.add_argument("kind", choices=["mf", "kge", "w2v", "lr"])
    parser.add_argument("out", type=Path, help="directory to write into")
    parser.add_argument(
        "--size", type=positive_int, default=10_000, help="entries / triples / tokens / examples"
    )
    parser.add_argument(
        "--keys", type=positive_int, default=1_000, help="rows=cols / entities / words / features"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args(argv)
    try:
        _write(args.kind, args.out, args.size, args.keys, args.seed)
    except (DynapsError, OSError) as exc:  # a folder it cannot write, too few words: one line
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.kind} data to {args.out}", file=sys.stderr)
    return 0


def _write(kind: str, out: Path, size: int, keys: int, seed: int) -> None:
    """Data set ``kind`` into folder ``out``, in the files the apps read."""
    out.mkdir(parents=True, exist_ok=True)
    if kind == "mf":
        train, test = matrix(keys, keys, 8, size, test_entries=size // 10, seed=seed)
        write_matrix_market(out / "train.mtx", train)
        write_matrix_market(out / "test.mtx", test)
    elif kind == "kge":
        kg = knowledge_graph(keys, max(2, keys // 100), size, seed=seed)
        for name, part in (("train", kg.train), ("valid", kg.valid), ("test", kg.test)):
            write_triples(out / f"{name}.tsv", part, kg.entities, kg.relations)
    elif kind == "w2v":
        text, _ = corpus(keys, size, seed=seed)
        words = np.array(text.words)
        bounds = np.flatnonzero(np.diff(text.sentence)) + 1
        write_corpus(out / "corpus.txt", (words[s].tolist() for s in np.split(text.tokens, bounds)))
    else:
        data = sparse_classification(size, keys, seed=seed)
        cut = len(data) * 9 // 10
        write_libsvm(out / "train.libsvm", data.rows(np.arange(cut)))
        write_libsvm(out / "test.libsvm", data.rows(np.arange(cut, len(data))))


if __name__ == "__main__":
    sys.exit(main())
