"""The images we ship, run by a real kubelet: the chart installs the operator as a pod from its
image, and the examples, applied with kubectl, run to Succeeded as containers of the runtime
image (tests/kube/node.py has the node; docs/test-control-plane.md says what each suite tests)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube.node import RealNode

pytestmark = [pytest.mark.e2e, pytest.mark.containers, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "dynaps-system"
JOB_TIMEOUT = 240.0  # seconds for an example to reach Succeeded on 2 busy cores


@pytest.fixture(scope="module")
def operator(real_node: RealNode) -> Iterator[None]:
    """The operator, installed by its chart from the operator image."""
    real_node.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    real_node.helm(
        "install",
        "dynaps",
        str(REPO / "charts" / "dynaps-operator"),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set",
        "image.tag=0.1.0",
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "180s",
        timeout=240,
    )
    yield
    real_node.helm("uninstall", "dynaps", "--namespace", OPERATOR_NAMESPACE, "--wait", check=False)


@pytest.fixture
def namespace(real_node: RealNode) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    real_node.kubectl("create", "namespace", name)
    yield name
    real_node.kubectl("delete", "namespace", name, "--wait=false", check=False)


def get(real_node: RealNode, *args: str) -> Any:
    return json.loads(real_node.kubectl("get", *args, "-o", "json").stdout)


def wait_for_phase(
    real_node: RealNode, namespace: str, job: str, phase: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = get(real_node, "-n", namespace, "parameterserverjob", job)
        status = found.get("status") or {}
        if status.get("phase") == phase:
            return found  # type: ignore[no-any-return]
        assert status.get("phase") != "Failed", f"the job failed: {json.dumps(status, indent=1)}"
        time.sleep(1.0)
    pods = real_node.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
    events = real_node.kubectl("-n", namespace, "get", "events", check=False).stdout
    raise AssertionError(
        f"{job} not {phase} in {timeout:.0f} s: {json.dumps(status, indent=1)}\n{pods}\n{events}"
    )


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


def test_quickstart_runs_to_succeeded_in_containers(
    real_node: RealNode, operator: None, namespace: str
) -> None:
    real_node.kubectl("-n", namespace, "apply", "-f", str(REPO / "examples" / "quickstart.yaml"))
    job = wait_for_phase(real_node, namespace, "quickstart", "Succeeded", JOB_TIMEOUT)
    quality = job["status"].get("finalQuality") or {}
    assert quality, f"no final quality in the status: {job['status']}"
    assert all(value == value for value in quality.values()), quality  # no NaN
    pods = get(real_node, "-n", namespace, "pods", "-l", "dynaps.io/job=quickstart")["items"]
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
