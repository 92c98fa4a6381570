"""What bench/kge_schedules.py and bench/replica_adagrad.py share: the graph and training
arguments, the app's configuration from them, and running a list of variants, each printed
with its MRR after every epoch and all recorded in one JSON file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynaps.apps import kge


def add_arguments(parser: argparse.ArgumentParser, epochs: int, out: Path) -> None:
    """``--workers --epochs --entities --triples --eval-triples --lr --out``."""
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--triples", type=int, default=1_000_000)
    parser.add_argument("--eval-triples", type=int, default=2_000)
    parser.add_argument("--lr", type=float, default=kge.Config.lr, help="AdaGrad's step (default the app's)")
    parser.add_argument("--out", type=Path, default=out)


def config(parser: argparse.ArgumentParser, args: argparse.Namespace, **overrides: Any) -> kge.Config:
    """The app's configuration for these arguments (a usage error if they make no run)."""
    if args.workers < 1 or args.epochs < 1:
        parser.error("--workers and --epochs must be at least 1")
    return kge.Config(
        epochs=args.epochs,
        entities=args.entities,
        triples=args.triples,
        eval_triples=args.eval_triples,
        lr=args.lr,
        quiet=True,
        **overrides,
    )


def run_all(labels: Sequence[str], run: Callable[[int], list[float]], args: argparse.Namespace) -> int:
    """``run(i)`` (the MRR after each epoch) for every variant ``labels[i]``, printed as it
    ends, then all written to ``args.out``."""
    width = max((len(label) for label in labels), default=0) + 2
    rows = []
    for i, label in enumerate(labels):
        started = time.perf_counter()
        mrr = run(i)
        seconds = time.perf_counter() - started
        print(f"{label:{width}} MRR {' '.join(f'{m:.3f}' for m in mrr)}  ({seconds:.0f} s)", flush=True)
        rows.append({"variant": label, "mrr": mrr, "seconds": seconds})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "workers": args.workers,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": rows,
    }
    args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
