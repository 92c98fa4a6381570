"""ClusterTools' readiness answers: a tool that fails or hangs is "not ready", never an error."""

from __future__ import annotations

import time
from pathlib import Path

from tests.kube.tools import ClusterTools


def tools_with(tmp_path: Path, script: str) -> ClusterTools:
    """ClusterTools whose kubectl is ``script`` (a shell script)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f"#!/bin/sh\n{script}\n")
    kubectl.chmod(0o755)
    tools = ClusterTools()
    tools.bin_dir, tools.root, tools.kubeconfig = bin_dir, tmp_path, tmp_path / "kubeconfig"
    return tools


def test_an_answer_is_what_the_tool_prints(tmp_path: Path) -> None:
    assert tools_with(tmp_path, "echo ok").answer("kubectl", "get", "--raw", "/readyz", timeout=10) == "ok\n"


def test_a_failing_tool_gives_no_answer(tmp_path: Path) -> None:
    assert tools_with(tmp_path, "echo ok; exit 1").answer("kubectl", "get", timeout=10) is None


def test_a_tool_that_hangs_gives_no_answer_after_the_timeout(tmp_path: Path) -> None:
    """On a loaded machine a probe of a starting API server took over 10 s and its
    TimeoutExpired failed the real node's set-up instead of counting as "not ready yet"."""
    tools = tools_with(tmp_path, "exec sleep 30")
    began = time.monotonic()
    assert tools.answer("kubectl", "get", timeout=0.5) is None
    assert time.monotonic() - began < 10
