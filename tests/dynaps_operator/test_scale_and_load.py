"""Scaling through the scale subresource, and many jobs at once."""

from __future__ import annotations

import time
import urllib.request

import pytest

from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import (
    DRAINABLE_WORKER,
    IDLE_WORKER,
    create_job,
    events_of,
    get_job,
    jobs_path,
    pods_of,
    quickstart_job,
    wait_phase,
)
from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.polling import wait_for

JOBS = 20


@pytest.mark.e2e
def test_kubectl_scale_adds_a_worker_through_the_coordinator(
    operator: OperatorThread, kube_control_plane: ControlPlane, kube_api: KubeClient, kube_namespace: str
) -> None:
    """The pod appears at once; the job reaching Running on three workers needs the runtime's
    POST /scale and live joins."""
    ns = kube_namespace
    job = quickstart_job("grow")
    job["spec"]["workers"].update(command=DRAINABLE_WORKER, args=[], maxReplicas=4)
    create_job(kube_api, ns, job)
    wait_phase(kube_api, ns, "grow", {"Running"}, 60)
    kube_control_plane.kubectl("scale", "psjob", "grow", "-n", ns, "--replicas=3")
    wait_for(
        lambda: "grow-worker-2" in {p["metadata"]["name"] for p in pods_of(kube_api, ns, "grow")},
        5,
        "the third worker pod",
    )
    scale = kube_api.get(jobs_path(ns, "grow") + "/scale")
    assert scale["spec"]["replicas"] == 3
    wait_for(lambda: get_job(kube_api, ns, "grow")["status"]["workers"]["desired"] == 3, 10, "desired 3")
    # The coordinator admits the third worker and the job is Running again, on all of them.
    wait_for(
        lambda: (
            get_job(kube_api, ns, "grow")["status"]["workers"]["summary"] == "3/3"
            and get_job(kube_api, ns, "grow")["status"]["phase"] == "Running"
        ),
        60,
        "the job to run on three workers",
    )


@pytest.mark.e2e
def test_twenty_jobs_applied_at_once_all_reach_running(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    started = time.monotonic()
    for i in range(JOBS):
        job = quickstart_job(f"many-{i}", workers=1)
        job["spec"]["workers"].update(command=IDLE_WORKER, args=[])
        create_job(kube_api, ns, job)
    created = wait_for(
        lambda: len(kube_api.items(namespaced("pods", ns))) == 3 * JOBS or None,
        30,
        f"{3 * JOBS} pods",
        interval=0.05,
    )
    assert created
    pods_in = time.monotonic() - started

    def running() -> bool:
        items = kube_api.items(jobs_path(ns))
        return sum(1 for j in items if j.get("status", {}).get("phase") == "Running") == JOBS

    wait_for(running, 180, f"all {JOBS} jobs to be Running")
    running_in = time.monotonic() - started
    print(f"{JOBS} jobs: all pods created after {pods_in:.1f} s, all Running after {running_in:.1f} s")
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.probe_port}/healthz", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.probe_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert 'dynaps_operator_jobs{phase="Running"}' in metrics
    assert "dynaps_operator_reconciles_total" in metrics
    for i in range(JOBS):  # stop the idle workers now rather than with the namespace
        kube_api.delete(jobs_path(ns, f"many-{i}"))
    wait_for(lambda: not kube_api.items(namespaced("pods", ns)), 120, "the jobs' pods to go")


@pytest.mark.e2e
def test_kubectl_scale_in_drains_the_surplus_worker_then_deletes_it(
    operator: OperatorThread, kube_control_plane: ControlPlane, kube_api: KubeClient, kube_namespace: str
) -> None:
    """Needs the runtime's POST /drain: the node hands its keys away and exits 0."""
    ns = kube_namespace
    job = quickstart_job("shrink", workers=3, rebalancePolicy={"drainTimeoutSeconds": 30})
    job["spec"]["workers"].update(command=DRAINABLE_WORKER, args=[])
    create_job(kube_api, ns, job)
    wait_phase(kube_api, ns, "shrink", {"Running"}, 60)
    kube_control_plane.kubectl("scale", "psjob", "shrink", "-n", ns, "--replicas=2")
    wait_for(
        lambda: any(e["reason"] == "ScalingIn" for e in events_of(kube_api, ns, "shrink")),
        10,
        "the operator to ask for a drain",
    )
    wait_for(
        lambda: "shrink-worker-2" not in {p["metadata"]["name"] for p in pods_of(kube_api, ns, "shrink")},
        60,
        "the drained worker's pod to go (well before the 30 s drain timeout)",
    )
    drained = [e["message"] for e in events_of(kube_api, ns, "shrink") if e["reason"] == "DeletingPods"]
    assert any("has left the job" in m for m in drained), drained  # it drained; not deleted on a timeout
    job_now = wait_phase(kube_api, ns, "shrink", {"Running"}, 30)
    assert job_now["status"]["workers"]["summary"] == "2/2"
    assert (job_now["status"]["restarts"], job_now["status"]["preemptions"]) == (0, 0)
