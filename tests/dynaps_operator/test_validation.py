"""Invalid manifests: the API server rejects what the CRD schema can say, with a message naming
the field; the operator reports what only it can check (Failed/InvalidSpec and a Warning Event)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import (
    REPO,
    condition,
    create_job,
    events_of,
    get_job,
    jobs_path,
    pods_of,
    quickstart_job,
    wait_phase,
    wait_succeeded,
)
from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import KubeClient
from tests.kube.polling import wait_for

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def apply(plane: ControlPlane, namespace: str, doc: dict[str, Any], tmp_path: Path) -> str:
    """`kubectl apply`; returns kubectl's error output ("" on success)."""
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    done = plane.kubectl("apply", "-n", namespace, "-f", str(manifest), check=False)
    return "" if done.returncode == 0 else done.stderr


def broken(change: str) -> dict[str, Any]:
    job = quickstart_job("broken")
    spec = job["spec"]
    if change == "zero workers":
        spec["workers"]["replicas"] = 0
    elif change == "unknown allocation":
        spec["allocation"] = "sideways"
    elif change == "duplicate table":
        spec["tables"].append({"name": "rows", "numKeys": 10, "dim": 2})
    elif change == "min above replicas":
        spec["servers"] = {"replicas": 1, "minReplicas": 2}
    elif change == "long name":
        job["metadata"]["name"] = "j" * 60
    elif change == "misspelt field":
        spec["wrokers"] = spec.pop("workers")
    elif change == "custom updater without name":
        spec["tables"][0]["updater"] = {"kind": "custom"}
    elif change == "gang larger than the job":
        spec["runPolicy"] = {"schedulingPolicy": {"scheduler": "coscheduling", "minAvailable": 5}}
    elif change == "volcano queue without volcano":
        spec["runPolicy"] = {"schedulingPolicy": {"scheduler": "coscheduling", "queue": "q"}}
    return job


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("zero workers", "spec.workers.replicas: Invalid value: 0"),
        ("unknown allocation", 'spec.allocation: Unsupported value: "sideways"'),
        ("duplicate table", 'spec.tables[2]: Duplicate value: {"name":"rows"}'),
        ("min above replicas", "spec.servers: Invalid value: replicas must be at least minReplicas"),
        ("long name", "metadata.name must be at most 51 characters"),
        ("misspelt field", 'unknown field "spec.wrokers"'),
        ("custom updater without name", "updater kind 'custom' needs 'name'"),
        ("gang larger than the job", "runPolicy.schedulingPolicy.minAvailable is more than the job's pods"),
        ("volcano queue without volcano", "queue is a Volcano queue: it needs scheduler: volcano"),
    ],
)
def test_the_api_server_rejects_invalid_manifests_naming_the_field(
    crd: str,
    kube_control_plane: ControlPlane,
    kube_namespace: str,
    tmp_path: Path,
    change: str,
    expected: str,
) -> None:
    error = apply(kube_control_plane, kube_namespace, broken(change), tmp_path)
    assert expected in error, error


@pytest.mark.e2e
def test_tables_cannot_change_after_creation(
    crd: str, kube_control_plane: ControlPlane, kube_namespace: str, tmp_path: Path
) -> None:
    job = quickstart_job("fixed", runPolicy={"suspend": True})  # no pods needed
    assert apply(kube_control_plane, kube_namespace, job, tmp_path) == ""
    job["spec"]["tables"][0]["dim"] = 16
    error = apply(kube_control_plane, kube_namespace, job, tmp_path)
    assert "spec.tables cannot change after the job is created" in error, error


@pytest.mark.e2e
def test_what_only_the_operator_can_check_fails_the_job_with_the_field_named(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    job = quickstart_job("nocmd")
    job["spec"]["workers"]["command"] = []
    create_job(kube_api, ns, job)
    failed_job = wait_phase(kube_api, ns, "nocmd", {"Failed"}, 30)
    failed = condition(failed_job, "Failed")
    assert failed is not None
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"].startswith("spec.workers.command: is empty"), failed
    assert failed_job["status"]["message"] == failed["message"]
    warnings = wait_for(
        lambda: [e for e in events_of(kube_api, ns, "nocmd") if e["reason"] == "InvalidSpec"],
        10,
        "a Warning Event naming the field",
    )
    assert warnings[0]["type"] == "Warning"
    assert "spec.workers.command" in warnings[0]["message"]
    assert pods_of(kube_api, ns, "nocmd") == []

    # Fixing the spec starts the job afresh.
    kube_api.patch(
        jobs_path(ns, "nocmd"),
        {"spec": {"workers": {"command": ["python", "-m", "dynaps.apps.quickstart"]}}},
    )
    wait_for(lambda: len(pods_of(kube_api, ns, "nocmd")) == 4, 15, "the fixed job's pods")
    # The operator creates the pods and then writes the status in the same pass: a read in between
    # sees the new pods beside the old Failed condition (a full run under load did), so wait for it.
    wait_for(
        lambda: condition(get_job(kube_api, ns, "nocmd"), "Failed") is None,
        15,
        "the Failed condition cleared once the spec is fixed",
    )
    wait_succeeded(kube_api, ns, "nocmd", 120)


@pytest.mark.e2e
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_and_apply_with_server_side_dry_run(
    crd: str, kube_control_plane: ControlPlane, kube_namespace: str, example: Path
) -> None:
    local = subprocess.run(
        [sys.executable, "-m", "dynaps", "validate", str(example)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert local.returncode == 0, local.stderr
    dry = kube_control_plane.kubectl(
        "apply", "--dry-run=server", "-n", kube_namespace, "-f", str(example), check=False
    )
    assert dry.returncode == 0, dry.stderr
    assert "(server dry run)" in dry.stdout
