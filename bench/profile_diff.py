"""Two profiled runs of a job side by side: where the second spends CPU the first does not.

Run a job twice with ``DYNAPS_PROFILE_DIR`` set to two directories (every coordinator,
node and LocalCluster runner then writes ``<role>-<n>.<pid>.exit.prof`` when it ends;
dynaps/profiling.py), then compare them: the profiled seconds of each role (coordinator,
server, worker, runner) summed over its processes, the functions whose own time grew
most (with their calls), and, for the functions named with ``--callees``, what they spent
their time in (cumulative time by callee, both runs).

    DYNAPS_PROFILE_DIR=/tmp/p/static python -m dynaps.apps.w2v --allocation static ...
    DYNAPS_PROFILE_DIR=/tmp/p/dynamic python -m dynaps.apps.w2v ...
    python -P bench/profile_diff.py /tmp/p/static /tmp/p/dynamic --callees relocation.py:on_handoff

Functions are named ``file.py:function`` (numpy's builtins as ``~:<method ...>``).  A
profile's seconds are the main thread's CPU under cProfile: larger than unprofiled ones,
comparable between the two runs.  ``--tag 2`` reads the second SIGUSR2 snapshots instead
of the exit profiles.
"""

from __future__ import annotations

import argparse
import collections
import pstats
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROFILE_NAME = re.compile(r"^(?P<role>[a-z]+)(-\d+)?\.(?P<pid>\d+)\.(?P<tag>[^.]+)\.prof$")


def function_name(func: tuple[str, int, str]) -> str:
    return f"{Path(func[0]).name}:{func[2]}"


@dataclass
class Run:
    """One directory's profiles, summed over its processes."""

    processes: int = 0
    by_role: collections.Counter[str] = field(default_factory=collections.Counter)
    own: collections.Counter[str] = field(default_factory=collections.Counter)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    callees: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )


def read_run(directory: Path, tag: str = "exit") -> Run:
    run = Run()
    for path in sorted(directory.glob(f"*.{tag}.prof")):
        match = PROFILE_NAME.match(path.name)
        if match is None:
            continue
        run.processes += 1
        stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
        for func, (_, calls, own, _, callers) in stats.items():
            name = function_name(func)
            run.by_role[match["role"]] += own
            run.own[name] += own
            run.calls[name] += calls
            for caller, figures in callers.items():
                run.callees[function_name(caller)][name] += figures[3]  # cumulative, via caller
    if not run.processes:
        raise FileNotFoundError(f"no *.{tag}.prof profiles in {directory}")
    return run


def report(first: Run, second: Run, top: int, callees: list[str]) -> list[str]:
    lines = [f"processes: {first.processes} and {second.processes}", "", "profiled CPU s by role:"]
    for role in sorted(set(first.by_role) | set(second.by_role)):
        lines.append(f"  {role:12} {first.by_role[role]:8.2f} -> {second.by_role[role]:8.2f}")
    total_a, total_b = sum(first.by_role.values()), sum(second.by_role.values())
    lines.append(f"  {'all':12} {total_a:8.2f} -> {total_b:8.2f}")
    lines += ["", f"own time that grew most (s, calls), top {top}:"]
    growth = {name: second.own[name] - first.own[name] for name in set(first.own) | set(second.own)}
    for name, grown in sorted(growth.items(), key=lambda item: -item[1])[:top]:
        lines.append(
            f"  {grown:+7.2f}  {first.own[name]:7.2f} -> {second.own[name]:7.2f}"
            f"  calls {first.calls[name]:>9,} -> {second.calls[name]:>9,}  {name}"
        )
    for name in callees:
        lines += ["", f"{name}: cumulative s by callee"]
        nothing: collections.Counter[str] = collections.Counter()
        spent_a, spent_b = first.callees.get(name, nothing), second.callees.get(name, nothing)
        if not spent_a and not spent_b:
            lines.append("  (not called in either run: names are file.py:function)")
            continue
        order = sorted(set(spent_a) | set(spent_b), key=lambda c: -max(spent_a.get(c, 0), spent_b.get(c, 0)))
        for callee in order[:top]:
            lines.append(f"  {spent_a.get(callee, 0.0):7.2f} -> {spent_b.get(callee, 0.0):7.2f}  {callee}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("first", type=Path, help="the baseline run's DYNAPS_PROFILE_DIR")
    parser.add_argument("second", type=Path, help="the compared run's DYNAPS_PROFILE_DIR")
    parser.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    parser.add_argument(
        "--callees", nargs="*", default=[], metavar="FILE:FUNCTION", help="where these spent their time"
    )
    parser.add_argument("--tag", default="exit", help="profiles read: exit (default) or a snapshot number")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error("--top must be at least 1")
    try:
        first, second = read_run(args.first, args.tag), read_run(args.second, args.tag)
    except (FileNotFoundError, OSError) as exc:
        parser.error(str(exc))
    print("\n".join(report(first, second, args.top, args.callees)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
