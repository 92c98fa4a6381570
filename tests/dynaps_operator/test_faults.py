"""Pods lost mid-training: recreated under the same name; preemptions do not count against
backoffLimit, failures do."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import (
    condition,
    create_job,
    events_of,
    get_job,
    pod_logs,
    pods_of,
    quickstart_job,
    until_stopped_job,
    wait_phase,
    wait_pushing,
)
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet
from tests.kube.polling import wait_for

LONG_EPOCHS = 200  # long enough (~10 s) to lose a pod in the middle of training


def pod(kube_api: KubeClient, namespace: str, name: str) -> dict[str, Any] | None:
    found = [p for p in pods_of(kube_api, namespace, name.rsplit("-", 2)[0]) if p["metadata"]["name"] == name]
    return found[0] if found else None


def replaced(kube_api: KubeClient, namespace: str, name: str, old_uid: str) -> dict[str, Any] | None:
    current = pod(kube_api, namespace, name)
    if current is None or current["metadata"]["uid"] == old_uid:
        return None
    return current


@pytest.mark.e2e
def test_a_deleted_worker_pod_is_recreated_and_the_job_still_succeeds(
    operator: OperatorThread,
    kube_api: KubeClient,
    kube_namespace: str,
    process_kubelet: ProcessKubelet,
    tmp_path: Path,
) -> None:
    """Needs the runtime to let a re-registering worker replace its lost predecessor."""
    ns = kube_namespace
    create_job(kube_api, ns, until_stopped_job("ft", tmp_path))
    wait_phase(kube_api, ns, "ft", {"Running"}, 60)
    victim = pod(kube_api, ns, "ft-worker-1")
    assert victim is not None
    kube_api.delete(namespaced("pods", ns, "ft-worker-1"))
    wait_for(
        lambda: replaced(kube_api, ns, "ft-worker-1", victim["metadata"]["uid"]), 60, "a new ft-worker-1"
    )
    status = get_job(kube_api, ns, "ft")["status"]
    assert (status["preemptions"], status["restarts"]) == (1, 0), status
    assert any(e["reason"] == "PodLost" for e in events_of(kube_api, ns, "ft"))
    try:
        # the predecessor is gone (its pod object goes once its process did): the new worker
        # pushes on from its count
        wait_pushing(tmp_path, worker=1)
        (tmp_path / "stop").touch()
        done = wait_phase(kube_api, ns, "ft", {"Succeeded", "Failed"}, 60)
    finally:
        print(pod_logs(process_kubelet, ns, ["ft-coordinator", "ft-worker-0", "ft-worker-1"]))
    assert done["status"]["phase"] == "Succeeded", done["status"]


@pytest.mark.e2e
def test_a_sigkilled_server_is_a_preemption_and_the_job_still_succeeds(
    operator: OperatorThread,
    kube_api: KubeClient,
    kube_namespace: str,
    process_kubelet: ProcessKubelet,
    tmp_path: Path,
) -> None:
    """Exit 137 is a preemption: replaced even with backoffLimit 0. Needs the runtime to let a
    re-registering server take over its shards."""
    ns = kube_namespace
    create_job(kube_api, ns, until_stopped_job("kill", tmp_path, runPolicy={"backoffLimit": 0}))
    wait_phase(kube_api, ns, "kill", {"Running"}, 60)
    victim = pod(kube_api, ns, "kill-server-0")
    assert victim is not None
    process_kubelet.signal_pod(ns, "kill-server-0", signal.SIGKILL)
    wait_for(
        lambda: replaced(kube_api, ns, "kill-server-0", victim["metadata"]["uid"]), 60, "a new kill-server-0"
    )
    status = get_job(kube_api, ns, "kill")["status"]
    assert (status["preemptions"], status["restarts"]) == (1, 0), status
    preempted = [e for e in events_of(kube_api, ns, "kill") if e["reason"] == "PodPreempted"]
    assert preempted
    assert "exited with code 137" in preempted[0]["message"]
    try:
        # every key is on the one server: the workers push on only once its replacement serves
        wait_pushing(tmp_path)
        (tmp_path / "stop").touch()
        done = wait_phase(kube_api, ns, "kill", {"Succeeded", "Failed"}, 60)
    finally:
        print(pod_logs(process_kubelet, ns, ["kill-coordinator", "kill-server-0", "kill-worker-0"]))
    assert done["status"]["phase"] == "Succeeded", done["status"]


@pytest.mark.e2e
def test_a_crashing_node_counts_against_backoff_limit(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str, process_kubelet: ProcessKubelet
) -> None:
    ns = kube_namespace
    create_job(kube_api, ns, quickstart_job("crash", epochs=LONG_EPOCHS, runPolicy={"backoffLimit": 0}))
    wait_phase(kube_api, ns, "crash", {"Running"}, 60)
    process_kubelet.signal_pod(ns, "crash-server-0", signal.SIGABRT)  # exit 134: a crash, not a preemption
    done = wait_phase(kube_api, ns, "crash", {"Failed", "Succeeded"}, 60)
    failed = condition(done, "Failed")
    assert failed is not None, done["status"]
    assert failed["reason"] == "BackoffLimitExceeded", done["status"]
    assert "crash-server-0 exited with code 134" in failed["message"]
    assert (done["status"]["restarts"], done["status"]["preemptions"]) == (1, 0)
    # cleanPodPolicy Running: the pods still running are deleted when the job fails.
    wait_for(
        lambda: all(
            p["metadata"].get("deletionTimestamp") or p["status"]["phase"] in ("Succeeded", "Failed")
            for p in pods_of(kube_api, ns, "crash")
        ),
        30,
        "the failed job's running pods to be deleted",
    )
