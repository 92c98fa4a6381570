"""Reading and writing the apps' data formats (splitting work between workers:
:mod:`dynaps.apps.partition`).

Formats (the usual ones for each task, so real data sets drop in):

* MatrixMarket coordinate files (``.mtx``): ``i j value`` per line, 1-based;
* knowledge graphs as tab-separated triples ``head<TAB>relation<TAB>tail`` (names);
* plain-text corpora: whitespace-separated tokens, one sentence per line;
* libsvm: ``label index:value index:value ...`` per example.

Every worker reads the whole input and keeps its part: simple and deterministic, and
for the sizes that fit one machine's memory it costs a second or two per worker.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from dynaps.errors import UsageError

Array = npt.NDArray[Any]
Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- MatrixMarket


@dataclass
class Entries:
    """Observed entries of a matrix: ``value[n]`` at (``row[n]``, ``col[n]``), 0-based."""

    rows: int
    cols: int
    row: Ints
    col: Ints
    value: Floats

    def __len__(self) -> int:
        return len(self.value)

    def subset(self, index: Any) -> Entries:
        return Entries(self.rows, self.cols, self.row[index], self.col[index], self.value[index])

    def renumbered(self, row_order: Ints, col_order: Ints) -> Entries:
        """The same entries in the same order, with row ``row_order[k]`` renamed ``k`` (and
        the columns alike): ``row_order`` and ``col_order`` are permutations of the ids."""
        return Entries(
            self.rows, self.cols, _inverse(row_order)[self.row], _inverse(col_order)[self.col], self.value
        )


def _inverse(order: Ints) -> Ints:
    """The permutation that undoes ``order``: ``_inverse(order)[order[k]] == k``."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return inverse


def write_matrix_market(path: str | Path, entries: Entries) -> None:
    with open(path, "w", encoding="ascii") as out:
        out.write("%%MatrixMarket matrix coordinate real general\n")
        out.write(f"{entries.rows} {entries.cols} {len(entries)}\n")
        table = np.column_stack([entries.row + 1, entries.col + 1, entries.value])
        np.savetxt(out, table, fmt=["%d", "%d", "%.7g"])


@contextlib.contextmanager
def _reading(path: str | Path, encoding: str) -> Iterator[IO[str]]:
    """A data file opened for reading; a file that is missing, unreadable or not text in
    ``encoding`` is the user's mistake (UsageError naming it), not a traceback."""
    try:
        with open(path, encoding=encoding) as src:
            yield src
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not {encoding} text ({exc.reason} at byte {exc.start})") from None


def matrix_market_shape(path: str | Path) -> tuple[int, int]:
    """(rows, cols) from a MatrixMarket file's size line, without reading the entries."""
    with _reading(path, "ascii") as src:
        line = src.readline()
        while line.startswith("%"):
            line = src.readline()
    try:
        rows, cols, _ = (int(x) for x in line.split())
    except ValueError:
        raise UsageError(f"{path}: bad size line {line.strip()!r}") from None
    return rows, cols


def read_matrix_market(path: str | Path) -> Entries:
    """A coordinate MatrixMarket file (real or integer, general)."""
    with _reading(path, "ascii") as src:
        header = src.readline()
        if not header.startswith("%%MatrixMarket matrix coordinate"):
            raise UsageError(f"{path}: not a MatrixMarket coordinate file (header {header.strip()!r})")
        if "complex" in header or "pattern" in header:
            raise UsageError(f"{path}: only real or integer entries are supported")
        line = src.readline()
        while line.startswith("%"):
            line = src.readline()
        try:
            rows, cols, count = (int(x) for x in line.split())
        except ValueError as exc:
            raise UsageError(f"{path}: bad size line {line.strip()!r}") from exc
        table = np.loadtxt(src, comments="%", dtype=np.float64, ndmin=2) if count else np.zeros((0, 3))
    if table.shape != (count, 3):
        raise UsageError(f"{path}: expected {count} entries of 3 fields, got shape {table.shape}")
    row, col = table[:, 0].astype(np.int64) - 1, table[:, 1].astype(np.int64) - 1
    if count and (row.min() < 0 or col.min() < 0 or row.max() >= rows or col.max() >= cols):
        raise UsageError(f"{path}: an entry lies outside the {rows} x {cols} matrix")
    return Entries(rows, cols, row, col, table[:, 2].copy())


# --------------------------------------------------------------------------- triples


@dataclass
class Triples:
    """A knowledge graph: (head, relation, tail) id triples and the names behind the ids."""

    entities: list[str]
    relations: list[str]
    train: Ints  # (n, 3)
    valid: Ints
    test: Ints
    cluster: Ints | None = None  # synthetic graphs: each entity's hidden cluster


def write_triples(path: str | Path, triples: Ints, entities: Sequence[str], relations: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for h, r, t in triples.tolist():
            out.write(f"{entities[h]}\t{relations[r]}\t{entities[t]}\n")


def read_triples(train: str | Path, valid: str | Path | None, test: str | Path) -> Triples:
    """Tab-separated triple files; ids are shared across the three files."""
    parts = [_read_tsv(p) for p in (train, valid, test) if p is not None]
    names = np.concatenate([p for p in parts if len(p)]) if any(len(p) for p in parts) else np.zeros((0, 3))
    entities, entity_ids = np.unique(np.concatenate([names[:, 0], names[:, 2]]), return_inverse=True)
    relations, relation_ids = np.unique(names[:, 1], return_inverse=True)
    n = len(names)
    ids = np.column_stack([entity_ids[:n], relation_ids, entity_ids[n:]]).astype(np.int64)
    bounds = np.cumsum([0, *(len(p) for p in parts)])
    split = [ids[bounds[i] : bounds[i + 1]] for i in range(len(parts))]
    if valid is None:
        split.insert(1, np.zeros((0, 3), dtype=np.int64))
    return Triples(entities.tolist(), relations.tolist(), split[0], split[1], split[2])


def _read_tsv(path: str | Path) -> Array:
    rows = []
    with _reading(path, "utf-8") as src:
        for number, line in enumerate(src, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise UsageError(
                    f"{path}:{number}: expected head<TAB>relation<TAB>tail, got {line.strip()!r}"
                )
            rows.append(fields)
    return np.array(rows, dtype=str).reshape(-1, 3)


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """Token ids (most frequent word = 0), the sentence of each token, the vocabulary."""

    tokens: Ints
    sentence: Ints
    words: list[str]
    counts: Ints


def write_corpus(path: str | Path, sentences: Iterable[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for sentence in sentences:
            out.write(" ".join(sentence) + "\n")


def read_corpus(path: str | Path, min_count: int = 1) -> Corpus:
    """Whitespace-separated tokens, one sentence per line; rare words are dropped."""
    with _reading(path, "utf-8") as src:
        lines = src.read().splitlines()
    counts = Counter(word for line in lines for word in line.split())
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if not kept:
        raise UsageError(f"{path}: no word occurs {min_count} times or more")
    index = {w: i for i, w in enumerate(kept)}
    tokens, sentence = [], []
    for number, line in enumerate(lines):
        ids = [index[w] for w in line.split() if w in index]
        tokens.extend(ids)
        sentence.extend([number] * len(ids))
    return Corpus(
        np.array(tokens, dtype=np.int64),
        np.array(sentence, dtype=np.int64),
        kept,
        np.array([counts[w] for w in kept], dtype=np.int64),
    )


# --------------------------------------------------------------------------- libsvm


@dataclass
class SparseExamples:
    """Rows of a sparse matrix in CSR form with a 0/1 label each."""

    indptr: Ints
    indices: Ints
    values: Floats
    labels: Floats
    num_features: int

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, index: Ints) -> SparseExamples:
        """The examples ``index`` as a new CSR block."""
        starts, ends = self.indptr[index], self.indptr[index + 1]
        take = ranges(starts, ends)
        indptr = np.concatenate([[0], np.cumsum(ends - starts)])
        return SparseExamples(
            indptr, self.indices[take], self.values[take], self.labels[index], self.num_features
        )


def write_libsvm(path: str | Path, data: SparseExamples) -> None:
    with open(path, "w", encoding="ascii") as out:
        for i in range(len(data)):
            lo, hi = data.indptr[i], data.indptr[i + 1]
            feats = " ".join(
                f"{j}:{v:.6g}" for j, v in zip(data.indices[lo:hi], data.values[lo:hi], strict=True)
            )
            out.write(f"{'+1' if data.labels[i] > 0 else '-1'} {feats}\n")


def read_libsvm(path: str | Path, num_features: int | None = None) -> SparseExamples:
    """Labels ``+1``/``1`` are positive, anything else negative; feature ids are kept as keys."""
    labels: list[float] = []
    indices: list[int] = []
    values: list[float] = []
    lengths: list[int] = []
    with _reading(path, "ascii") as src:
        for number, line in enumerate(src, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            try:
                labels.append(1.0 if float(fields[0]) > 0 else 0.0)
                pairs = [f.split(":", 1) for f in fields[1:]]
                indices.extend(int(j) for j, _ in pairs)
                values.extend(float(v) for _, v in pairs)
            except ValueError as exc:
                raise UsageError(f"{path}:{number}: not libsvm ({exc})") from None
            lengths.append(len(fields) - 1)
    idx = np.array(indices, dtype=np.int64)
    if len(idx) and idx.min() < 0:
        raise UsageError(f"{path}: negative feature index")
    needed = int(idx.max()) + 1 if len(idx) else 1
    if num_features is not None and needed > num_features:
        raise UsageError(f"{path}: feature {needed - 1} exceeds --features {num_features}")
    return SparseExamples(
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        idx,
        np.array(values, dtype=np.float64),
        np.array(labels, dtype=np.float64),
        num_features or needed,
    )


# --------------------------------------------------------------------------- helpers


def ranges(starts: Ints, ends: Ints) -> Ints:
    """The concatenation of ``arange(s, e)`` for every pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    out: Ints = np.arange(total, dtype=np.int64) + offsets
    return out
