"""What one KGE minibatch's gradient costs (CPU microseconds), the model's numpy alone.

    PYTHONPATH=runtime .venv/bin/python bench/kge_gradient.py [--model complex] [--dim 32]

A minibatch as the app's default: 256 positives, 4 corrupted tails and 4 corrupted heads
each, float32 rows, written into the push's rows (``out=``). Best of 7 rounds of 1,000
calls. Run it against another revision's runtime (``git archive REV runtime | tar -x -C
/tmp/rev``, then ``PYTHONPATH=/tmp/rev/runtime``) to compare in the same sitting.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dynaps.apps.kge_models import MODELS, make_model

BATCH, NEGATIVES, CALLS, ROUNDS = 256, 4, 1_000, 7


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="complex")
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args()
    model = make_model(args.model, args.dim)
    rng = np.random.default_rng(0)
    de, dr = model.entity_dim, model.relation_dim

    def rows(*shape: int) -> np.ndarray:
        return (rng.normal(size=shape) * 0.3).astype(np.float32)

    h, r, t = rows(BATCH, de), rows(BATCH, dr), rows(BATCH, de)
    tneg, hneg = rows(BATCH, NEGATIVES, de), rows(BATCH, NEGATIVES, de)
    out = np.empty((2 * BATCH * (1 + NEGATIVES), de), dtype=np.float32)
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(CALLS):
            model.gradients(h, r, t, tneg, hneg, out=out)
        best = min(best, (time.process_time() - started) / CALLS)
    print(f"{args.model} dim {args.dim}: gradients of one minibatch {best * 1e6:.0f} us (best of {ROUNDS})")


if __name__ == "__main__":
    main()
