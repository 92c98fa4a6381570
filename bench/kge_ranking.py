"""What KGE's filtered ranking after an epoch costs one worker: peak allocations and CPU.

    PYTHONPATH=runtime .venv/bin/python bench/kge_ranking.py --entities 200000,1000000

``dynaps.apps.kge._evaluate`` ranks a worker's test triples (125: 1,000 over 8 workers)
against every entity of a random ComplEx table (dim 64 as floats) held in this process, with
200,000 random triples as the filter: the same arithmetic as in a job, without the pulls'
messages. The peak is tracemalloc's (numpy reports its buffers to it), in a run of its own;
the CPU is measured without tracemalloc. Run it against another revision's runtime (``git
archive REV runtime | tar -x -C /tmp/rev``, then ``PYTHONPATH=/tmp/rev/runtime``) to compare.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any

import numpy as np

from dynaps.apps import kge
from dynaps.apps.kge_models import make_model
from dynaps.apps.metrics import KnownTriples

RELATIONS, FILTER_TRIPLES, TEST_TRIPLES, COMPLEX_DIM = 50, 200_000, 125, 32


class InMemoryTable:
    """What ``_evaluate`` asks of a table: ``pull`` (a copy of the rows, as a pull gives)."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def pull(self, keys: Any) -> Any:
        return self.rows[np.asarray(keys)]


def rank_once(entities: int, trace: bool) -> tuple[float, float, float]:
    """(peak MiB or 0, CPU s, the reciprocal ranks' sum) of one ranking."""
    rng = np.random.default_rng(0)
    model = make_model("complex", COMPLEX_DIM)
    table = InMemoryTable(rng.normal(size=(entities, model.entity_dim)).astype(np.float32))
    relations = InMemoryTable(rng.normal(size=(RELATIONS, model.relation_dim)).astype(np.float32))
    triples = np.column_stack(
        [
            rng.integers(0, entities, FILTER_TRIPLES),
            rng.integers(0, RELATIONS, FILTER_TRIPLES),
            rng.integers(0, entities, FILTER_TRIPLES),
        ]
    )
    test = triples[:TEST_TRIPLES]
    try:
        known = KnownTriples(triples, entities, RELATIONS, queries=test)
    except TypeError:  # a revision before the per-worker index
        known = KnownTriples(triples, entities, RELATIONS)
    if trace:
        tracemalloc.start()
    started = time.process_time()
    sums = kge._evaluate(table, relations, model, test, known, entities)
    cpu = time.process_time() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else 0.0
    tracemalloc.stop()
    return peak, cpu, float(sums[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", default="200000,1000000", help="comma-separated table sizes")
    args = parser.parse_args()
    for entities in (int(n) for n in args.entities.split(",")):
        peak, _, _ = rank_once(entities, trace=True)
        _, cpu, reciprocal = rank_once(entities, trace=False)
        print(
            f"{entities:>10,} entities: peak {peak:7.1f} MiB   CPU {cpu:6.3f} s   "
            f"sum of 1/rank {reciprocal:.4f}"
        )


if __name__ == "__main__":
    main()
