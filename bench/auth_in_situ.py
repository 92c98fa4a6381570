"""What authentication costs inside a real remote pull, per process (issue 12).

``bench/auth_parts.py`` times ``Authenticator.sign`` and ``verify`` in a hot loop; in a job
each process comes back to them after a wake-up, with cold caches, and pays more.  This
runs a LocalCluster (1 server, 2 workers), has rank 0 pull ``--keys`` keys homed on the
server ``--count`` times, and reports per process: the thread CPU time of every ``sign``
and ``verify`` call (and of the AES-GCM call inside them), and the CPU seconds of the whole
process per pull (psutil, all threads; a 10 ms tick, so use a few thousand pulls).

The timing is added from outside the runtime: a ``sitecustomize`` module on the
processes' ``PYTHONPATH`` wraps the two methods when ``dynaps.wire.auth`` is imported and
writes its sums when the process exits.  Reading the thread clock costs about 0.7 us a
call here, which the figures include.

    python bench/auth_in_situ.py [--keys 100] [--count 5000] [--spin-micros 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WRAPPER = '''
import atexit, json, os, sys, time

_sums = {"sign": [0, 0], "verify": [0, 0], "aes-gcm": [0, 0]}


def _timed(name, fn):
    clock, entry = time.thread_time_ns, _sums[name]

    def wrapper(*args, **kwargs):
        started = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            entry[0] += clock() - started
            entry[1] += 1

    return wrapper


class _Wrapping:
    """Wraps the Authenticator's methods once dynaps.wire.auth has been imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "dynaps.wire.auth":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            cls = module.Authenticator
            cls.sign, cls.verify = _timed("sign", cls.sign), _timed("verify", cls.verify)
            real_init = cls.__init__

            def init(self, key):
                real_init(self, key)
                gcm = self._gcm

                class Timed:
                    encrypt = staticmethod(_timed("aes-gcm", gcm.encrypt))

                self._gcm = Timed()

            cls.__init__ = init

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Wrapping())


@atexit.register
def _write():
    out = os.environ.get("DYNAPS_AUTH_TIMES")
    if out and any(count for _, count in _sums.values()):
        args = open("/proc/self/cmdline", "rb").read().split(b"\\0")
        role = " ".join(a.decode() for a in args[2:4]) if b"-m" in args else "runner"
        with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
            json.dump({"role": role, "sums": _sums}, f)
'''


def pulls(ps: Any, keys: int, count: int) -> dict[str, float]:
    if ps.rank != 0:
        return {}
    table = ps.table("W")
    wanted = np.arange(10_000, 10_000 + keys, dtype=np.int64)  # homed on the server
    for _ in range(200):
        table.pull(wanted)
    started = time.perf_counter()
    for _ in range(count):
        table.pull(wanted)
    return {"wall_us": (time.perf_counter() - started) / count * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=100, help="keys per pull (default 100: a 40 KB reply)")
    parser.add_argument("--count", type=int, default=5000, help="timed pulls (default 5000)")
    parser.add_argument(
        "--spin-micros", type=int, help="DYNAPS_SPIN_MICROS for the cluster (default: as shipped)"
    )
    args = parser.parse_args()
    if not 1 <= args.keys <= 10_000 or args.count < 1:
        parser.error("--keys takes 1 to 10000 and --count at least 1")
    with tempfile.TemporaryDirectory(prefix="dynaps-auth-") as tmp:
        Path(tmp, "sitecustomize.py").write_text(WRAPPER)
        times = Path(tmp, "times")
        times.mkdir()
        os.environ["PYTHONPATH"] = os.pathsep.join([tmp, *filter(None, [os.environ.get("PYTHONPATH")])])
        os.environ["DYNAPS_AUTH_TIMES"] = str(times)
        if args.spin_micros is not None:
            os.environ["DYNAPS_SPIN_MICROS"] = str(args.spin_micros)
        import dynaps

        sys.path.insert(0, str(Path(__file__).parent))
        import micro
        from cpu_scaling import cpu_seconds

        tables = {"W": dynaps.TableSpec(num_keys=micro.NUM_KEYS, dim=micro.DIM)}
        with dynaps.LocalCluster(servers=1, workers=2, tables=tables) as cluster:
            cluster.run(micro.prepare)
            pids = cluster.pids()
            before = cpu_seconds(pids)
            wall = cluster.run(pulls, args.keys, args.count)[0]["wall_us"]
            after = cpu_seconds(pids)
        cpu = {name: (after[name] - before[name]) / args.count * 1e6 for name in pids}
        found = [json.loads(p.read_text()) for p in sorted(times.iterdir())]
    print(f"{args.keys}-key remote pull: {wall:.1f} us wall, {sum(cpu.values()):.1f} us CPU of all processes")
    print("CPU us per pull by process: " + ", ".join(f"{n} {v:.1f}" for n, v in cpu.items() if v >= 1))
    print(f"{'process':24} {'calls':>8} {'sign us':>8} {'verify us':>9} {'aes-gcm us (calls)':>19}")
    for entry in found:
        sums = entry["sums"]
        if sums["sign"][1] < args.count:  # not on the measured path
            continue
        each = {k: (ns / n / 1000 if n else 0.0) for k, (ns, n) in sums.items()}
        print(
            f"{entry['role']:24} {sums['sign'][1]:8d} {each['sign']:8.1f} {each['verify']:9.1f} "
            f"{each['aes-gcm']:10.1f} ({sums['aes-gcm'][1]:6d})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
