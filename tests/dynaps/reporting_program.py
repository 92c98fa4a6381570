"""A worker program for the status tests: it pushes to table W and rank 0 reports its steps
(a counter) and where it is in a 4-epoch plan, until DIR/stop exists.

    python reporting_program.py DIR SECONDS_BETWEEN_STEPS
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

import dynaps


def main() -> None:
    ps = dynaps.connect()
    table = ps.table("W")
    stop = pathlib.Path(sys.argv[1]) / "stop"
    pause = float(sys.argv[2])
    steps = 0
    while not stop.exists():
        table.push(np.arange(10), np.ones((10, 2)))
        steps += 1
        if ps.rank == 0:
            ps.report(steps=float(steps), epoch=1.0, epochs=4.0)
        time.sleep(pause)


if __name__ == "__main__":
    main()
