"""An opt-in CPU profile of a dynaps process, for benchmarks that ask where CPU time goes.

With ``DYNAPS_PROFILE_DIR`` set, a coordinator, a node or a LocalCluster runner runs under
:mod:`cProfile` with the main thread's CPU clock (``time.thread_time``: time a process
waits, blocked or descheduled on a busy machine, counts nothing), and writes
``<dir>/<name>.<pid>.<tag>.prof`` (``pstats`` format):

* ``tag`` 1, 2, ...: a snapshot on each SIGUSR2, cumulative since the start, so the
  difference of two snapshots is the work between them (``bench/cpu_scaling.py`` sends
  one before and one after training);
* ``tag`` ``exit``: when the process ends normally.

Off by default; nothing of it runs unless the variable is set.  Only the main thread is
profiled (the loops of every role run there); the CPU of other threads (ZeroMQ's I/O
thread) is the difference between the process's CPU time and the profile's.
"""

from __future__ import annotations

import cProfile
import itertools
import marshal
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

PROFILE_DIR_ENV = "DYNAPS_PROFILE_DIR"

T = TypeVar("T")


def profiled(name: str, fn: Callable[[], T]) -> T:
    """``fn()``, under a profile if ``DYNAPS_PROFILE_DIR`` names a directory."""
    directory = os.environ.get(PROFILE_DIR_ENV)
    if not directory:
        return fn()
    Path(directory).mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile(time.thread_time)
    snapshots = itertools.count(1)

    def dump(tag: str) -> None:
        # snapshot_stats, not dump_stats: the latter disables the profiler, and a profiler
        # enabled again no longer sees the callers of the frames then on the stack
        profiler.snapshot_stats()
        with open(os.path.join(directory, f"{name}.{os.getpid()}.{tag}.prof"), "wb") as out:
            marshal.dump(profiler.stats, out)  # pstats' format

    def on_snapshot(signum: int, frame: object) -> None:
        dump(str(next(snapshots)))

    previous = signal.signal(signal.SIGUSR2, on_snapshot)
    profiler.enable()
    try:
        return fn()
    finally:
        profiler.disable()
        signal.signal(signal.SIGUSR2, previous)
        dump("exit")
