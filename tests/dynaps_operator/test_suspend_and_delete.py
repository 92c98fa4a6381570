"""runPolicy: suspend and resume, deletion of the job, cleanPodPolicy, TTL and the deadline."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from dynaps.contract import RuntimeConfig
from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import (
    condition,
    condition_of,
    create_job,
    events_of,
    get_job,
    jobs_path,
    pods_of,
    quickstart_job,
    until_stopped_job,
    wait_phase,
    wait_pushing,
    wait_succeeded,
)
from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import ApiError, KubeClient, namespaced
from tests.kube.polling import wait_for

LONG_EPOCHS = 200


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def suspend(kube_api: KubeClient, namespace: str, name: str, value: bool) -> None:
    kube_api.patch(jobs_path(namespace, name), {"spec": {"runPolicy": {"suspend": value}}})


def gone(kube_api: KubeClient, path: str) -> bool:
    try:
        kube_api.get(path)
    except ApiError as exc:
        return exc.status == 404
    return False


@pytest.mark.e2e
def test_suspend_removes_the_pods_and_resume_runs_to_success(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str, tmp_path: Path
) -> None:
    ns = kube_namespace
    create_job(kube_api, ns, until_stopped_job("sus", tmp_path))
    wait_phase(kube_api, ns, "sus", {"Running"}, 60)
    wait_for(
        lambda: "JobRunning" in {e["reason"] for e in events_of(kube_api, ns, "sus")},
        10,
        "a JobRunning Event",
    )
    suspend(kube_api, ns, "sus", True)
    wait_for(lambda: not pods_of(kube_api, ns, "sus"), 60, "the suspended job's pods to go")
    job = wait_phase(kube_api, ns, "sus", {"Suspended"}, 10)
    suspended = condition(job, "Suspended")
    assert suspended is not None
    assert suspended["status"] == "True"
    wait_for(
        lambda: condition_of(get_job(kube_api, ns, "sus"), "Suspended")["reason"] == "JobSuspended",
        10,
        "reason JobSuspended once no pod is left",
    )
    assert condition_of(job, "Running")["status"] == "False"
    assert "JobSuspending" in {e["reason"] for e in events_of(kube_api, ns, "sus")}

    suspend(kube_api, ns, "sus", False)
    wait_for(lambda: len(pods_of(kube_api, ns, "sus")) == 4, 15, "the resumed job's pods")
    wait_pushing(tmp_path)  # the resumed job runs; then its workers finish
    (tmp_path / "stop").touch()
    done = wait_phase(kube_api, ns, "sus", {"Succeeded", "Failed"}, 60)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    resumed = condition(done, "Suspended")
    assert resumed is not None
    assert (resumed["status"], resumed["reason"]) == ("False", "JobResumed")
    assert done["status"]["preemptions"] == 0  # pods the operator removed on purpose are no loss


@pytest.mark.e2e
def test_resume_restores_the_checkpoint_taken_when_suspended(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str, tmp_path: Path
) -> None:
    """Needs the runtime's POST /checkpoint, /status lastCheckpoint and checkpoint.restoreFrom."""
    ns = kube_namespace
    create_job(kube_api, ns, until_stopped_job("ckpt", tmp_path))
    wait_phase(kube_api, ns, "ckpt", {"Running"}, 60)
    suspend(kube_api, ns, "ckpt", True)
    wait_for(lambda: not pods_of(kube_api, ns, "ckpt"), 90, "the suspended job's pods to go")
    status = get_job(kube_api, ns, "ckpt")["status"]
    unsupported = [
        e["message"] for e in events_of(kube_api, ns, "ckpt") if e["reason"] == "RuntimeUnsupported"
    ]
    assert not unsupported, unsupported
    checkpoint = status.get("lastCheckpoint")
    assert checkpoint is not None, status
    suspended_at = condition_of(get_job(kube_api, ns, "ckpt"), "Suspended")["lastTransitionTime"]
    assert parse_time(checkpoint["time"]) >= parse_time(suspended_at)
    suspend(kube_api, ns, "ckpt", False)
    wait_for(lambda: len(pods_of(kube_api, ns, "ckpt")) == 4, 15, "the resumed job's pods")
    config = RuntimeConfig.from_json(
        kube_api.get(namespaced("configmaps", ns, "ckpt-config"))["data"]["config.json"]
    )
    assert config.fault_tolerance.checkpoint.restore_from == checkpoint["path"]
    wait_pushing(tmp_path)  # the job restored from it runs; then its workers finish
    (tmp_path / "stop").touch()
    wait_succeeded(kube_api, ns, "ckpt", 60)


@pytest.mark.e2e
def test_a_job_created_suspended_starts_only_when_resumed(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    create_job(kube_api, ns, quickstart_job("later", runPolicy={"suspend": True}))
    job = wait_phase(kube_api, ns, "later", {"Suspended"}, 15)
    assert condition_of(job, "Suspended")["reason"] == "JobSuspended"
    assert pods_of(kube_api, ns, "later") == []
    suspend(kube_api, ns, "later", False)
    wait_succeeded(kube_api, ns, "later", 120)


@pytest.mark.e2e
def test_deleting_the_job_removes_every_child(
    operator: OperatorThread, kube_control_plane: ControlPlane, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    create_job(kube_api, ns, quickstart_job("del", epochs=LONG_EPOCHS))
    wait_phase(kube_api, ns, "del", {"Running"}, 60)
    kube_control_plane.kubectl("delete", "psjob", "del", "-n", ns, "--wait=false")
    wait_for(lambda: not pods_of(kube_api, ns, "del"), 60, "the deleted job's pods to go")
    wait_for(lambda: gone(kube_api, namespaced("services", ns, "del")), 30, "the headless Service to go")
    wait_for(lambda: gone(kube_api, namespaced("configmaps", ns, "del-config")), 30, "the ConfigMap to go")
    assert gone(kube_api, jobs_path(ns, "del"))


@pytest.mark.e2e
def test_clean_pod_policy_all_and_ttl_after_finished(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    job = quickstart_job("ttl", runPolicy={"cleanPodPolicy": "All", "ttlSecondsAfterFinished": 4})
    create_job(kube_api, ns, job)
    wait_succeeded(kube_api, ns, "ttl", 120)
    wait_for(lambda: not pods_of(kube_api, ns, "ttl"), 30, "cleanPodPolicy All to delete every pod")
    assert not gone(kube_api, jobs_path(ns, "ttl"))  # still there: the TTL has not passed yet
    wait_for(lambda: gone(kube_api, jobs_path(ns, "ttl")), 30, "the TTL to delete the finished job")


@pytest.mark.e2e
def test_active_deadline_fails_the_job_and_stops_its_pods(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    create_job(kube_api, ns, quickstart_job("late", epochs=10_000, runPolicy={"activeDeadlineSeconds": 3}))
    done = wait_phase(kube_api, ns, "late", {"Failed", "Succeeded"}, 60)
    failed = condition(done, "Failed")
    assert failed is not None, done["status"]
    assert failed["reason"] == "DeadlineExceeded", done["status"]
    assert "activeDeadlineSeconds (3 s)" in failed["message"]
    wait_for(lambda: not pods_of(kube_api, ns, "late"), 60, "the running pods to be deleted")
