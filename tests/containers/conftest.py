"""Fixtures and helpers of the container tests: the chart's operator on the real node, a fresh
namespace per test, volumes the test can read from the host, and waiting for a job's phase."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynaps_operator.references import USABLE_LABEL
from tests.containers import proof
from tests.kube.node import RealNode

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "dynaps-system"
JOB_TIMEOUT = 240.0  # seconds for a job to reach Succeeded on 2 busy cores


# Each container test's worst outcome over its setup, call and teardown (proof.py says why).
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and report.outcome == "passed":
        return  # a setup or teardown that passed decides nothing
    if _outcomes.get(report.nodeid, "passed") == "passed":  # the first problem stays
        _outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: its controller decides
        return
    if exitstatus == 0 and _outcomes and all(outcome == "passed" for outcome in _outcomes.values()):
        proof.record(list(_outcomes))


# Why the operator could not be installed: pytest sets up a failed session fixture again for
# every test, and each try waits minutes for a pod that will not come.
_operator_failed: list[str] = []


@pytest.fixture(scope="package")
def operator(real_node: RealNode) -> None:
    """The operator, installed by its chart from the operator image. Not uninstalled: the node
    goes next (real_node), which stops every container on it and checks that nothing is left;
    waiting for helm to delete it first proved nothing and took seconds of the serial phase."""
    if _operator_failed:
        pytest.fail(f"the operator could not be installed: {_operator_failed[0]}", pytrace=False)
    try:
        _install_operator(real_node)
    except AssertionError as exc:
        pods = real_node.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
        events = real_node.kubectl("-n", OPERATOR_NAMESPACE, "get", "events", check=False).stdout
        _operator_failed.append(f"{exc}\n{pods}\n{events}")
        raise


def _install_operator(real_node: RealNode) -> None:
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


@pytest.fixture
def namespace(real_node: RealNode) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    real_node.kubectl("create", "namespace", name)
    yield name
    real_node.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def volumes(real_node: RealNode, namespace: str) -> Iterator[Any]:
    """``volumes(name)``: a PersistentVolumeClaim ``name`` in the test's namespace, bound to a
    folder on this machine that the test reads (a hostPath PersistentVolume: the pods' own spec
    has no hostPath, which the operator refuses)."""
    made: list[str] = []

    def make(name: str) -> Path:
        folder = real_node.root / "volumes" / f"{namespace}-{name}"
        folder.mkdir(parents=True)
        folder.chmod(0o777)  # the pods run as uid 10001
        volume = f"{namespace}-{name}"
        objects = [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": volume},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": str(folder), "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": name},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                # marked for the namespace's jobs: the operator creates no pod that names an
                # unmarked claim (dynaps_operator.references)
                "metadata": {"name": name, "namespace": namespace, "labels": {USABLE_LABEL: "true"}},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": volume,
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        ]
        real_node.kubectl(
            "apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        )
        made.append(volume)
        return folder

    yield make
    for volume in made:
        real_node.kubectl("delete", "persistentvolume", volume, "--wait=false", check=False)


def get(real_node: RealNode, *args: str) -> Any:
    return json.loads(real_node.kubectl("get", *args, "-o", "json").stdout)


def job_pods(real_node: RealNode, namespace: str, job: str) -> list[dict[str, Any]]:
    return get(real_node, "-n", namespace, "pods", "-l", f"dynaps.io/job={job}")["items"]  # type: ignore[no-any-return]


def wait_until(what: str, timeout: float, check: Any, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"not in {timeout:.0f} s: {what}")


def wait_for_phase(
    real_node: RealNode, namespace: str, job: str, phase: str, timeout: float = JOB_TIMEOUT
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
    shown = json.dumps(status, indent=1)
    raise AssertionError(f"{job} not {phase} in {timeout:.0f} s: {shown}\n{pods}\n{events}")
