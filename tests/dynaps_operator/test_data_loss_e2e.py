"""A server lost without a replica: the job shows the loss (DataLoss condition, status.dataLoss,
a Warning Event), and with ``onDataLoss: Fail`` ends Failed/DataLoss (the real control plane)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator import conftest
from tests.dynaps_operator.conftest import (
    JsonDict,
    condition,
    condition_of,
    create_job,
    events_of,
    get_job,
    pod_logs,
    wait_for_warnings,
    wait_phase,
)
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet
from tests.kube.polling import wait_for

NUM_KEYS = conftest.COUNTER_KEYS


def counter_job(name: str, folder: Path, **fault_tolerance: Any) -> JsonDict:
    return conftest.counter_job(name, folder, faultTolerance={"replication": 0, **fault_tolerance})


def lose_a_server(kube_api: KubeClient, ns: str, name: str, folder: Path) -> None:
    """Once the worker pushes, remove server 1 at once (its process killed, its keys gone)."""
    wait_phase(kube_api, ns, name, {"Running"}, 60)
    wait_for((folder / "progress-0").exists, 30, "the worker to push")
    kube_api.delete(namespaced("pods", ns, f"{name}-server-1"), {"gracePeriodSeconds": 0})


def with_condition(kube_api: KubeClient, ns: str, name: str, kind: str) -> JsonDict | None:
    job = get_job(kube_api, ns, name)
    return job if condition(job, kind) is not None else None


def logs(kubelet: ProcessKubelet, ns: str, name: str) -> str:
    return pod_logs(kubelet, ns, [f"{name}-coordinator", f"{name}-server-0", f"{name}-worker-0"])


@pytest.mark.e2e
def test_a_server_lost_without_replica_shows_as_data_loss(
    operator: OperatorThread,
    kube_api: KubeClient,
    kube_namespace: str,
    process_kubelet: ProcessKubelet,
    tmp_path: Path,
) -> None:
    ns, name = kube_namespace, "lossy"
    create_job(kube_api, ns, counter_job(name, tmp_path))
    try:
        lose_a_server(kube_api, ns, name, tmp_path)
        lossy = wait_for(lambda: with_condition(kube_api, ns, name, "DataLoss"), 60, "the DataLoss condition")
        lost = condition_of(lossy, "DataLoss")
        assert (lost["status"], lost["reason"]) == ("True", "InitialValuesRestored"), lossy["status"]
        summary = lossy["status"]["dataLoss"]
        assert summary["entries"] >= 1
        assert 0 < summary["keys"] <= NUM_KEYS
        assert {e["cause"] for e in summary["recent"]} == {"initial"}
        assert {e["server"] for e in summary["recent"]} == {f"{name}-server-1"}
        warnings = [e for e in events_of(kube_api, ns, name) if e["reason"] == "DataLoss"]
        assert [e["type"] for e in warnings] == ["Warning"] * summary["entries"], warnings
        assert all(f"lost server {name}-server-1" in e["message"] for e in warnings)
        # onDataLoss: Continue (the default): the job goes on, and its status keeps the loss.
        (tmp_path / "stop").touch()
        done = wait_phase(kube_api, ns, name, {"Succeeded", "Failed"}, 90)
    finally:
        print(logs(process_kubelet, ns, name))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert condition_of(done, "DataLoss")["status"] == "True"
    assert done["status"]["dataLoss"]["entries"] == summary["entries"]
    again = [e for e in events_of(kube_api, ns, name) if e["reason"] == "DataLoss"]
    assert len(again) == summary["entries"], "each loss is posted once, not on every poll"


@pytest.mark.e2e
def test_on_data_loss_fail_ends_the_job_failed_with_reason_data_loss(
    operator: OperatorThread,
    kube_api: KubeClient,
    kube_namespace: str,
    process_kubelet: ProcessKubelet,
    tmp_path: Path,
) -> None:
    ns, name = kube_namespace, "strict"
    create_job(kube_api, ns, counter_job(name, tmp_path, onDataLoss="Fail"))
    try:
        lose_a_server(kube_api, ns, name, tmp_path)
        done = wait_phase(kube_api, ns, name, {"Succeeded", "Failed"}, 60)
    finally:
        (tmp_path / "stop").touch()
        print(logs(process_kubelet, ns, name))
    failed = condition_of(done, "Failed")
    assert failed["reason"] == "DataLoss", done["status"]
    assert "data loss (faultTolerance.onDataLoss: Fail)" in failed["message"]
    # The coordinator lingers until its final /status was read: the loss is in the job's status too.
    assert condition_of(done, "DataLoss")["reason"] == "InitialValuesRestored"
    assert done["status"]["dataLoss"]["entries"] >= 1
    expected = 1 + done["status"]["dataLoss"]["entries"]  # one per entry, and the failure's
    warnings = wait_for_warnings(kube_api, ns, name, "DataLoss", expected)
    assert warnings.count("DataLoss") == expected, warnings
