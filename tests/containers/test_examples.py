"""The images we ship, run by a real kubelet: the chart installs the operator as a pod from its
image, and the examples, applied with kubectl, run to Succeeded as containers of the runtime
image (tests/kube/node.py has the node; docs/test-control-plane.md says what each suite tests)."""

from __future__ import annotations

import pytest

from tests.containers.conftest import OPERATOR_NAMESPACE, REPO, get, job_pods, wait_for_phase
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
    pods = job_pods(real_node, namespace, example)
    assert pods, "the job's pods are gone"
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
