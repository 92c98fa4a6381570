"""The control-plane scale harness (bench/scale.py) runs at N = 10 and reports every figure.

It runs as a user runs it, a separate process, so that what it starts (the coordinator and
the simulation helpers) is checked to be gone when it returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.slow
def test_scale_harness_at_ten_nodes_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--nodes", "10", "--steady-seconds", "2", "--warmup", "0.5", "--phase-timeout", "60"]
    args += ["--out", str(out), "--no-plot"]
    harness = subprocess.Popen(
        [sys.executable, str(HARNESS), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _out, err = harness.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        harness.terminate()  # the harness stops what it started on SIGTERM
        _out, err = harness.communicate(timeout=30)
        pytest.fail(f"the harness did not finish in 240 s:\n{err[-3000:]}")
    assert harness.returncode == 0, err[-3000:]
    (result,) = json.loads(out.read_text())["results"]
    assert result["errors"] == []
    assert result["helper_errors"] == []
    assert result["coordinator_exit_code"] == 0  # it ended on our /shutdown, not a crash
    assert result["endpoints"] == 15  # 5 servers, 5 workers and their 5 training processes
    assert 0 < result["registration"]["all_welcomed_s"] <= result["registration"]["all_running_s"]
    # measured in clock ticks (/proc, 10 ms): ten nodes' heartbeats over a 2 s window cost the
    # coordinator a few ms, which may read as 0 (it did once in a full run)
    assert result["steady"]["coordinator_cpu_per_s"] >= 0
    assert result["steady"]["lost_by_then"] == []
    for event in ("join", "leave", "loss"):
        figures = result[event]
        assert figures["reach_s"] > 0, event
        assert figures["bytes_to_nodes"] > 0, event
        assert figures["endpoints"] >= 14, event
    assert result["join"]["migrations"] > 0  # the new server received shards
    assert result["leave"]["migrations"] > 0  # the drained server handed its shards over
    assert result["loss"]["recovered_s"] > 0
    # targeted recovery: every worker that said it may hold keys of the lost shards was asked,
    # no other worker was (bench/scale_sim.py reports who was asked)
    loss = result["loss"]
    assert loss["holdings_noted"] == 5
    assert loss["holders_missed"] == 0
    assert loss["asked_holding_none"] == 0
    assert loss["workers_asked"] == loss["holders_of_those_shards"]
    assert result["scale_out"]["added"] == 1
    assert result["scale_out"]["migrations"] > 0
    assert result["node_side"]["membership_bytes"] > 0
    assert not [pid for pid in result["pids"] if _alive(pid)]
