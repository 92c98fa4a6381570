"""The images we ship, run by a real kubelet: the chart installs the operator as a pod from its
image, and the examples, applied with kubectl, run to Succeeded as containers of the runtime
image (tests/kube/node.py has the node; docs/test-control-plane.md says what each suite tests)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.containers.conftest import OPERATOR_NAMESPACE, REPO, get, job_pods, wait_for_phase, wait_until
from tests.kube.node import RealNode

# the first test also waits for the node: its start, and another session's node (LOCK_WAIT)
pytestmark = [pytest.mark.e2e, pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_operator_runs_from_its_image_as_the_chart_says(real_node: RealNode, operator: None) -> None:
    pods = get(real_node, "-n", OPERATOR_NAMESPACE, "pods", "-l", "app.kubernetes.io/instance=dynaps")[
        "items"
    ]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["status"]["phase"] == "Running"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "dynaps/operator:0.1.0"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the process really runs as the image's non-root user: its status says so through the runtime
    uid = real_node.kubectl(
        "-n", OPERATOR_NAMESPACE, "exec", pod["metadata"]["name"], "--", "id", "-u"
    ).stdout
    assert uid.strip() == "10001"


@pytest.mark.parametrize("example", ["quickstart", "mf"])
def test_an_example_runs_to_succeeded_in_containers(
    real_node: RealNode, operator: None, namespace: str, example: str
) -> None:
    real_node.kubectl("-n", namespace, "apply", "-f", str(REPO / "examples" / f"{example}.yaml"))
    job = wait_for_phase(real_node, namespace, example, "Succeeded")
    quality = job["status"].get("finalQuality") or {}
    assert quality, f"no final quality in the status: {job['status']}"
    assert all(value == value for value in quality.values()), quality  # no NaN
    # cleanPodPolicy Running (the default) keeps the completed pods for their logs: the nodes
    # end on the coordinator's SHUTDOWN, so one may still be on its way out when the phase is
    # read; it must complete, not be deleted as still running (lifecycle.SETTLE_SECONDS)
    replicas = {role: job["spec"][role + "s"]["replicas"] for role in ("server", "worker")}
    expected = {f"{example}-coordinator"}
    expected |= {f"{example}-{role}-{i}" for role, count in replicas.items() for i in range(count)}
    pods = wait_until(
        "every pod of the succeeded job to end Succeeded, none deleted",
        25,
        lambda: _succeeded_pods(real_node, namespace, example, expected),
    )
    for pod in pods:
        spec = pod["spec"]
        assert spec["containers"][0]["image"] == "dynaps/runtime:0.1.0"
        assert spec.get("automountServiceAccountToken") is False
        context = spec["containers"][0]["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
    policies = get(real_node, "-n", namespace, "networkpolicies")["items"]
    assert [p["metadata"]["name"] for p in policies], "the job got no NetworkPolicy"
    check_dynaps_logs(real_node, namespace, example, {pod["metadata"]["name"] for pod in pods})


def check_dynaps_logs(real_node: RealNode, namespace: str, job: str, pods: set[str]) -> None:
    """`dynaps logs` reads every pod's log through the real kubelet, each line prefixed by its
    pod's role; rank 0 prints the app's epoch lines (the completed pods keep their logs)."""
    command = real_node.wrap([sys.executable, "-m", "dynaps", "logs", job, "-n", namespace])
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=real_node.env(), check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    prefixes = {line.partition("] ")[0] + "]" for line in lines}
    # every line comes from a pod of the job; worker-0's epoch lines are among them
    assert prefixes <= {f"[{name.removeprefix(job + '-')}]" for name in pods}, prefixes
    assert any(
        line.startswith(f"[worker-0] [{job}] epoch") or line.startswith("[worker-0] epoch") for line in lines
    ), done.stdout[-3000:]


def _succeeded_pods(
    real_node: RealNode, namespace: str, job: str, expected: set[str]
) -> list[dict[str, Any]] | None:
    """The job's pods once each has ended Succeeded (all ``expected`` there), else None."""
    pods = job_pods(real_node, namespace, job)
    names = {pod["metadata"]["name"] for pod in pods}
    assert expected <= names, f"pods deleted after the job succeeded: {sorted(expected - names)}"
    done = pods and all(pod["status"].get("phase") == "Succeeded" for pod in pods)
    return pods if done else None
