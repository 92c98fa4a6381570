"""A first dynaps program: matrix factorisation of a small synthetic matrix.

Each worker owns a slice of the rows (it localizes their factors once, so reading and
updating them is local memory access) and pulls and pushes the column factors its
minibatch needs.  Rank 0 prints the training RMSE after every epoch.

    dynaps run examples/quickstart.yaml
    dynaps run --servers 1 --workers 2 --table rows:2000:8 --table cols:500:8 \\
        -- python -m dynaps.apps.quickstart --epochs 5
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import dynaps
from dynaps.apps.arguments import positive_float, positive_int


def synthetic(
    rows: int, cols: int, rank: int, entries: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries of a random rank-``rank`` matrix plus a little noise: (row, col, value)."""
    rng = np.random.default_rng(seed)
    left = rng.normal(0, 1 / np.sqrt(rank), (rows, rank))
    right = rng.normal(0, 1, (cols, rank))
    i = rng.integers(0, rows, entries)
    j = rng.integers(0, cols, entries)
    return i, j, (left[i] * right[j]).sum(axis=1) + rng.normal(0, 0.05, entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=positive_int, default=5, help="passes over the data (default 5)")
    parser.add_argument(
        "--entries", type=positive_int, default=100_000, help="observed entries (default 100000)"
    )
    parser.add_argument("--lr", type=positive_float, default=0.05, help="SGD step size (default 0.05)")
    parser.add_argument("--batch", type=positive_int, default=500, help="entries per minibatch (default 500)")
    args = parser.parse_args(argv)

    ps = dynaps.connect()
    rows, cols = ps.table("rows"), ps.table("cols")
    i, j, v = synthetic(rows.num_keys, cols.num_keys, rows.dim, args.entries, seed=42)
    mine = (i % ps.num_workers) == ps.rank  # this worker's data: the entries of its rows
    i, j, v = i[mine], j[mine], v[mine]
    my_rows = np.arange(ps.rank, rows.num_keys, ps.num_workers)
    rng = np.random.default_rng(ps.rank)
    rows.set(my_rows, rng.normal(0, 0.1, (len(my_rows), rows.dim)))
    rows.localize(my_rows)
    if ps.rank == 0:
        cols.set(np.arange(cols.num_keys), rng.normal(0, 0.1, (cols.num_keys, cols.dim)))
    ps.barrier()
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        order = rng.permutation(len(v))
        squared = 0.0
        for first in range(0, len(order), args.batch):
            batch = order[first : first + args.batch]
            r, c, y = i[batch], j[batch], v[batch]
            left, right = rows.pull(r), cols.pull(c)
            error = (left * right).sum(axis=1) - y
            squared += float((error**2).sum())
            rows.push(r, -args.lr * error[:, None] * right)  # local: rows were localized
            cols.push(c, -args.lr * error[:, None] * left)
        ps.barrier()
        # training RMSE of this worker; epoch of epochs is the progress `dynaps status` shows
        ps.report(rmse=float(np.sqrt(squared / len(v))), epoch=epoch, epochs=args.epochs)
        if ps.rank == 0:
            print(
                f"epoch {epoch}/{args.epochs}: train RMSE (this worker) {np.sqrt(squared / len(v)):.4f}, "
                f"{time.perf_counter() - started:.2f} s, local pulls {ps.stats()['keys_pulled_local']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
