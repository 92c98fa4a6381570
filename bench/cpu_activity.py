"""Where a profiled job's CPU goes, by activity (spin, transport, auth, codec, data plane,
relocation, control, client requests, training): ``bench/cpu_scaling.py --profile``'s
attribution of cProfile snapshots, apart from its runs.

Every process of a job run with ``DYNAPS_PROFILE_DIR`` writes a profile snapshot on SIGUSR2
(dynaps.profiling); :func:`snapshot` asks for one and waits, :func:`own_times` takes the
difference of two, and :func:`by_activity` sums it by the module each function lives in,
the time of functions outside dynaps (numpy, the standard library) going to their callers.
"""

from __future__ import annotations

import collections
import os
import pstats
import signal
import time
from pathlib import Path
from typing import Any

# Where a function's own CPU time goes, by the module that defines it (first match wins).
# Functions outside dynaps (numpy, zmq, the standard library, builtins) take the activity
# of their callers, split by what each caller spent in them.
ACTIVITIES: list[tuple[str, str]] = [
    ("dynaps/wire/zmq_transport.py:spin_until_readable", "spin"),
    ("dynaps/wire/tcp_transport.py:_spin", "spin"),
    ("dynaps/wire/zmq_transport.py", "transport (send/recv)"),
    ("dynaps/wire/tcp_transport.py", "transport (send/recv)"),
    ("dynaps/wire/tcp_outbound.py", "transport (send/recv)"),
    ("dynaps/wire/tcp_inbound.py", "transport (send/recv)"),
    ("dynaps/wire/auth.py", "auth (MAC sign/verify)"),
    ("dynaps/wire/", "codec (encode/decode, bodies)"),
    ("dynaps/node/relocation.py", "relocation"),
    ("dynaps/node/migration.py", "migration, recovery, replication"),
    ("dynaps/node/recovery.py", "migration, recovery, replication"),
    ("dynaps/node/replication.py", "migration, recovery, replication"),
    ("dynaps/node/writeback.py", "migration, recovery, replication"),
    ("dynaps/node/server.py", "data plane (serve, forward)"),
    ("dynaps/node/serving.py", "data plane (serve, forward)"),
    ("dynaps/node/gate.py", "data plane (serve, forward)"),
    ("dynaps/node/applied.py", "exactly-once records (node/applied.py)"),
    ("dynaps/store/", "data plane (serve, forward)"),
    ("dynaps/node/", "control (heartbeats, membership, chores)"),
    ("dynaps/coordinator/", "control (heartbeats, membership, chores)"),
    ("dynaps/telemetry/", "control (heartbeats, membership, chores)"),
    ("dynaps/client/barriers.py", "client: barriers, membership"),
    ("dynaps/client/membership.py", "client: barriers, membership"),
    ("dynaps/client/", "client: requests (split, track, local access)"),
    ("dynaps/apps/", "training (model, data)"),
    ("dynaps/local/", "runner (pipe to the parent)"),
]
UNATTRIBUTED = "other"
PROFILER = "profiler"  # the snapshots' own cost: left out


def snapshot(directory: Path, pids: dict[str, int], tag: int, timeout: float = 60.0) -> dict[str, Path]:
    """Ask every process for a profile snapshot (SIGUSR2); wait until each one is written."""
    want = {name: directory / f"{name}.{pid}.{tag}.prof" for name, pid in pids.items()}
    for pid in pids.values():
        os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    sizes: dict[str, int] = {}
    while True:  # written once its size stops changing
        done = {n: p.stat().st_size for n, p in want.items() if p.exists() and p.stat().st_size > 0}
        if len(done) == len(want) and done == sizes:
            return want
        if time.monotonic() > deadline:
            raise TimeoutError(f"no profile snapshot {tag} from {sorted(set(want) - set(done))}")
        sizes = done
        time.sleep(0.2)


Func = tuple[str, int, str]


def own_times(before: Path, after: Path) -> tuple[dict[Func, float], dict[Func, dict[Func, float]]]:
    """Per function, its own CPU time between the snapshots, and that time split by caller."""
    old: dict[Func, Any] = pstats.Stats(str(before)).stats  # type: ignore[attr-defined]
    new: dict[Func, Any] = pstats.Stats(str(after)).stats  # type: ignore[attr-defined]
    own: dict[Func, float] = {}
    callers: dict[Func, dict[Func, float]] = {}
    for func, (_, _, tt, _, by_caller) in new.items():
        prior = old.get(func)
        own[func] = tt - (prior[2] if prior else 0.0)
        split = {}
        for caller, figures in by_caller.items():
            was = prior[4].get(caller) if prior else None
            split[caller] = figures[2] - (was[2] if was else 0.0)
        callers[func] = split
    return own, callers


def activity_of_file(func: Func) -> str | None:
    where = f"{func[0]}:{func[2]}"
    if where.endswith("cProfile.py:snapshot_stats") or "dynaps/profiling.py" in where:
        return PROFILER
    if "dynaps/" not in where:
        return None
    for prefix, activity in ACTIVITIES:
        if prefix in where:
            return activity
    return UNATTRIBUTED


def by_activity(
    own: dict[Func, float], callers: dict[Func, dict[Func, float]], unattributed: dict[str, float]
) -> dict[str, float]:
    """Own times summed by activity; time outside dynaps goes to its callers' activities.
    ``unattributed`` gains the functions whose time found no activity (to name them)."""
    shares: dict[Func, dict[str, float]] = {}  # a function's activity mix (fractions)

    def mix(func: Func, depth: int = 0) -> dict[str, float]:
        if func in shares:
            return shares[func]
        named = activity_of_file(func)
        if named is not None:
            shares[func] = {named: 1.0}
            return shares[func]
        split = {c: t for c, t in callers.get(func, {}).items() if t > 0}
        total = sum(split.values())
        if depth > 400 or total <= 0:
            return {UNATTRIBUTED: 1.0}
        shares[func] = {UNATTRIBUTED: 1.0}  # a cycle back here counts as unattributed
        out: collections.defaultdict[str, float] = collections.defaultdict(float)
        for caller, t in split.items():
            for activity, f in mix(caller, depth + 1).items():
                out[activity] += f * t / total
        shares[func] = dict(out)
        return shares[func]

    totals: collections.defaultdict[str, float] = collections.defaultdict(float)
    for func, t in own.items():
        if t > 0:
            for activity, f in mix(func).items():
                if activity == PROFILER:
                    continue
                totals[activity] += f * t
                if activity == UNATTRIBUTED:
                    where = f"{Path(func[0]).name}:{func[1]}:{func[2]}"
                    unattributed[where] = unattributed.get(where, 0.0) + f * t
    return dict(totals)
