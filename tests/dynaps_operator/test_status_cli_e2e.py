"""`dynaps status` and `kubectl dynaps status` against a real job on the test control plane.

The command runs as the user runs it: a process that finds kubectl on PATH and reads the job,
its pods and events from the API server. (`dynaps logs` needs a kubelet that serves logs, which
the process kubelet does not: tests/containers tests it on the real node.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import GROUP, create_job, events_of, get_job, python_name, wait_phase
from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import KubeClient
from tests.kube.polling import wait_for

pytestmark = pytest.mark.e2e

PROGRAM = Path(__file__).parents[1] / "dynaps" / "reporting_program.py"
PODS = ["st-coordinator", "st-server-0", "st-server-1", "st-worker-0", "st-worker-1"]


def run(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=120, env=env, check=False)


def dynaps(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run(env, sys.executable, "-m", "dynaps", *args)


def conditions_of(lines: list[str]) -> dict[str, list[str]]:
    """type -> [status, reason] from the text's Conditions table."""
    return {line.split()[0]: line.split()[1:3] for line in lines if line.startswith("  ") and " ago " in line}


def test_status_of_a_running_then_finished_job(
    operator: OperatorThread,
    kube_control_plane: ControlPlane,
    kube_api: KubeClient,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    ns = kube_namespace
    job: dict[str, Any] = {
        "apiVersion": GROUP,
        "kind": "ParameterServerJob",
        "metadata": {"name": "st"},
        "spec": {
            "tables": [{"name": "W", "numKeys": 100, "dim": 2}],
            "servers": {"replicas": 2},
            "workers": {"replicas": 2, "command": [python_name(), str(PROGRAM), str(tmp_path), "0.05"]},
        },
    }
    create_job(kube_api, ns, job)
    env = kube_control_plane.env()  # KUBECONFIG, and the test cluster's kubectl first on PATH
    try:
        wait_for(
            lambda: "steps" in (get_job(kube_api, ns, "st").get("status") or {}).get("metrics", {}),
            120,
            "the job to run and report its steps",
        )
        done = dynaps(env, "status", "st", "-n", ns, "-o", "json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert (doc["kind"], doc["metadata"]["name"], doc["status"]["phase"]) == (
            "ParameterServerJob",
            "st",
            "Running",
        )

        done = dynaps(env, "status", "st", "-n", ns)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith(f"Job st (namespace {ns})  phase Running  running for ")
        conditions = conditions_of(lines)
        assert conditions["Running"] == ["True", "JobRunning"]
        assert conditions["Created"] == ["True", "JobCreated"]
        members = {line.split()[0]: line.split(None, 2)[1:] for line in lines if line.startswith("    st-")}
        assert sorted(members) == PODS
        assert members["st-coordinator"] == ["coordinator", "Running, ready"]
        assert members["st-worker-1"] == ["worker", "Running, ready"]
        shards = [int(members[s][1].split(", ")[2].split()[0]) for s in ("st-server-0", "st-server-1")]
        assert sum(shards) == 1024
        assert any(line.startswith("Shards: 1024 on 2 servers") for line in lines)
        assert "  servers: 2/2 ready" in lines
        assert "  workers: 2/2 ready" in lines
        assert f"Progress: epoch 1 of 4 [{'#' * 8}{'.' * 22}] 25 %" in lines
        assert any(line.startswith("Metrics: ") and "steps=" in line for line in lines)
        assert "Data loss: none" in lines
        # the latest events, at most five. Warnings of a slow start may come between
        # CreatedPods and JobRunning (a NodesNotRegistered per new list of nodes still
        # registering pushed CreatedPods out once, with the suite at -n 4 on 2 cores, before
        # nodes had a grace to register), so every line shown is checked against the job's
        # events in the API server
        shown = [re.sub(r" \(x\d+\)$", "", line) for line in lines[lines.index("Events (latest):") + 1 :]]
        assert 1 <= len(shown) <= 5, lines
        events = events_of(kube_api, ns, "st")
        assert "CreatedPods" in {e.get("reason") for e in events}
        posted = {
            f"  {e.get('type') or 'Normal'} {e.get('reason') or '?'}: {e.get('message') or ''}"
            for e in events
        }
        assert set(shown) <= posted, (shown, posted)

        # the kubectl plugin: kubectl finds kubectl-dynaps on PATH and hands it the rest
        plugins = tmp_path / "plugins"
        plugins.mkdir()
        plugin = plugins / "kubectl-dynaps"
        plugin.write_text(
            f"#!{sys.executable}\nimport sys\nfrom dynaps.cli import kubectl_main\nsys.exit(kubectl_main())\n"
        )
        plugin.chmod(0o755)
        with_plugin = {**env, "PATH": f"{env['PATH']}:{plugins}"}
        done = run(with_plugin, "kubectl", "dynaps", "status", "st", "-n", ns)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"Job st (namespace {ns})  phase Running")
        done = run(with_plugin, "kubectl", "dynaps", "status", "nosuch", "-n", ns)
        assert done.returncode == 2
        assert done.stderr == f"kubectl dynaps: error: no ParameterServerJob 'nosuch' in namespace {ns}\n"
    finally:
        (tmp_path / "stop").touch()
    wait_phase(kube_api, ns, "st", {"Succeeded", "Failed"}, 90)
    # --watch ends by itself once the job has ended
    done = dynaps(env, "status", "st", "-n", ns, "--watch", "--interval", "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Job st (namespace {ns})  phase Succeeded  ran ")
    assert conditions_of(done.stdout.splitlines())["Succeeded"] == ["True", "JobSucceeded"]
