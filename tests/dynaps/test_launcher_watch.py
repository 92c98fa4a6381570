"""A LocalCluster's processes end with the program that built it, even when that program is
killed and never closes the cluster (dynaps.launcher_watch)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

BUILDER = """
import time
import dynaps

if __name__ == "__main__":
    tables = {"W": dynaps.TableSpec(num_keys=100, dim=2)}
    with dynaps.LocalCluster(servers=1, workers=1, tables=tables):
        print("up", flush=True)
        time.sleep(600)
"""


def _descendants(root: int) -> set[int]:
    """Every living process below ``root``, found through the parent links in /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_a_killed_builder_leaves_no_process_behind(tmp_path: Path) -> None:
    script = tmp_path / "builder.py"
    script.write_text(BUILDER)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'runtime'}"}
    builder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env, cwd=tmp_path)
    started: set[int] = set()
    try:
        assert builder.stdout is not None
        ready, _, _ = select.select([builder.stdout], [], [], 90)
        assert ready, "the cluster did not start within 90 s"
        assert builder.stdout.readline() == b"up\n"
        started = _descendants(builder.pid)
        # coordinator, server and worker nodes, the worker's runner (and multiprocessing's tracker)
        assert len(started) >= 4
        builder.send_signal(signal.SIGKILL)
        builder.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sorted(pid for pid in started if _alive(pid))
        assert not left, f"still running after their builder was killed: {left}"
    finally:
        builder.kill()
        builder.wait()
        if builder.stdout is not None:
            builder.stdout.close()
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
