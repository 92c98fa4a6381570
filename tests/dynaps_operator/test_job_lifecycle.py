"""A ParameterServerJob from `kubectl apply` to Succeeded on the real control plane.

The job's pods are real dynaps processes (coordinator, server, workers running the quickstart
app) started by the process kubelet; the operator runs in the test process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from dynaps.contract import RuntimeConfig
from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import (
    condition,
    condition_of,
    events_of,
    get_job,
    jobs_path,
    pod_logs,
    pods_of,
    quickstart_job,
    wait_phase,
)
from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet
from tests.kube.polling import wait_for

POD_NAMES = {"mf-coordinator", "mf-server-0", "mf-worker-0", "mf-worker-1"}
JsonDict = dict[str, Any]


@dataclass(frozen=True)
class FinishedJob:
    namespace: str
    job: JsonDict  # as it was when it finished
    created_in: float  # seconds from the job's creation to its four pods
    pods: list[JsonDict]  # as created
    service: JsonDict
    configmap: JsonDict


@pytest.fixture(scope="module")
def finished_job(
    operator: OperatorThread,
    kube_control_plane: ControlPlane,
    kube_api: KubeClient,
    module_namespace: str,
    process_kubelet: ProcessKubelet,
    tmp_path_factory: pytest.TempPathFactory,
) -> FinishedJob:
    """`kubectl apply` a two-worker quickstart job and wait until it finishes (once per module)."""
    ns = module_namespace
    manifest = tmp_path_factory.mktemp("mf") / "mf.yaml"
    manifest.write_text(yaml.safe_dump(quickstart_job("mf")))
    kube_control_plane.kubectl("apply", "-n", ns, "-f", str(manifest))
    # From the moment the API server holds the job (kubectl has returned): kubectl's own start-up
    # and discovery (1-2.5 s here, cold) are measured apart in bench/operator_bench.py.
    started = time.monotonic()
    wait_for(
        lambda: {p["metadata"]["name"] for p in pods_of(kube_api, ns, "mf")} == POD_NAMES,
        10,
        "the job's four pods",
        interval=0.02,
    )
    created_in = time.monotonic() - started
    pods = pods_of(kube_api, ns, "mf")
    service = kube_api.get(namespaced("services", ns, "mf"))
    configmap = kube_api.get(namespaced("configmaps", ns, "mf-config"))
    try:
        job = wait_phase(kube_api, ns, "mf", {"Succeeded", "Failed"}, 120)
    except AssertionError:
        print(pod_logs(process_kubelet, ns, sorted(POD_NAMES)))
        raise
    if job["status"]["phase"] != "Succeeded":
        print(pod_logs(process_kubelet, ns, sorted(POD_NAMES)))
    return FinishedJob(ns, job, created_in, pods, service, configmap)


@pytest.mark.e2e
def test_apply_creates_the_children_with_stable_identities(finished_job: FinishedJob) -> None:
    ns = finished_job.namespace
    # The job stored to its four pods created: the target is 2 s.
    assert finished_job.created_in < 2.0
    pods = {p["metadata"]["name"]: p for p in finished_job.pods}
    job = finished_job.job
    uid = job["metadata"]["uid"]
    for name, pod in pods.items():
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "dynaps.io/v1alpha1",
                "kind": "ParameterServerJob",
                "name": "mf",
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["dynaps.io/job"] == "mf"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "dynaps-operator"
        assert (spec["hostname"], spec["subdomain"], spec["restartPolicy"]) == (name, "mf", "Never")
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["DYNAPS_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["DYNAPS_BIND_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["DYNAPS_CONFIG_FILE"]["value"] == "/etc/dynaps/config.json"
    assert pods["mf-coordinator"]["spec"]["containers"][0]["command"] == ["dynaps", "coordinator"]
    assert pods["mf-server-0"]["spec"]["containers"][0]["command"] == ["dynaps", "server"]
    worker = pods["mf-worker-1"]["spec"]["containers"][0]
    assert worker["command"][:4] == ["dynaps", "worker", "--", "python"]
    assert {"name": "DYNAPS_RANK", "value": "1"} in worker["env"]
    service = finished_job.service
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    config = RuntimeConfig.from_json(finished_job.configmap["data"]["config.json"])
    assert config.coordinator == f"mf-coordinator.mf.{ns}.svc:7070"
    assert (config.servers, config.workers, config.coordinator_http_port) == (1, 2, 8080)
    assert [t.name for t in config.tables] == ["rows", "cols"]


@pytest.mark.e2e
def test_job_reaches_succeeded_with_status_and_events(
    finished_job: FinishedJob, kube_api: KubeClient, kube_control_plane: ControlPlane
) -> None:
    ns = finished_job.namespace
    job = finished_job.job
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    assert condition_of(job, "Created")["status"] == "True"
    assert condition_of(job, "Succeeded")["reason"] == "JobSucceeded"
    assert condition_of(job, "Running")["status"] == "False"
    assert condition(job, "Failed") is None
    assert status["startTime"] <= status["completionTime"]
    assert status["observedGeneration"] == job["metadata"]["generation"]
    assert (status["restarts"], status["preemptions"]) == (0, 0)
    assert status["ownership"]["epoch"] >= 1
    assert status["ownership"]["shardsPerServer"] == {"mf-server-0": 1024}
    assert (status["servers"]["desired"], status["workers"]["desired"]) == (1, 2)
    reasons = [e["reason"] for e in events_of(kube_api, ns, "mf")]
    # (JobRunning is not asserted: a job this short can end between two polls of its coordinator.)
    assert {"CreatedPods", "JobSucceeded"} <= set(reasons), reasons
    assert all(e["source"]["component"] == "dynaps-operator" for e in events_of(kube_api, ns, "mf"))
    # cleanPodPolicy Running (the default) keeps the completed pods for their logs. The job
    # succeeds when its coordinator exits 0; the nodes end on its SHUTDOWN, so one may still
    # be on its way out when the job's phase is read: each must end Succeeded, soon.
    wait_for(
        lambda: {p["status"]["phase"] for p in pods_of(kube_api, ns, "mf")} == {"Succeeded"},
        30,
        "every pod of the finished job to end Succeeded",
    )
    table = kube_control_plane.kubectl("get", "psjob", "mf", "-n", ns).stdout.split("\n")
    assert table[0].split() == ["NAME", "PHASE", "SERVERS", "WORKERS", "EPOCH", "AGE"]
    assert table[1].split()[:2] == ["mf", "Succeeded"]


@pytest.mark.e2e
def test_job_reports_its_final_quality(finished_job: FinishedJob) -> None:
    """Needs the runtime to report metrics (ps.report -> coordinator /status "metrics", and the
    final /status in the coordinator's termination message); the quickstart reports its RMSE."""
    status = finished_job.job["status"]
    assert status["phase"] == "Succeeded"
    assert "rmse" in (status.get("finalQuality") or {}), status


@pytest.mark.e2e
def test_status_is_not_rewritten_when_nothing_changes(
    finished_job: FinishedJob, operator: OperatorThread, kube_api: KubeClient
) -> None:
    ns = finished_job.namespace
    assert operator.controller is not None
    metrics = operator.controller.metrics.registry

    def reconciled() -> float:
        return metrics.get_sample_value("dynaps_operator_reconciles_total", {"result": "ok"}) or 0.0

    before = reconciled()
    # A change that is not the operator's business makes it reconcile the finished job again...
    touched = kube_api.patch(jobs_path(ns, "mf"), {"metadata": {"annotations": {"touched": "yes"}}})
    wait_for(lambda: reconciled() >= before + 1, 10, "the operator to reconcile the job again")
    # ... and it writes nothing: the status it computes is the one stored.
    assert (
        get_job(kube_api, ns, "mf")["metadata"]["resourceVersion"] == touched["metadata"]["resourceVersion"]
    )


@pytest.mark.e2e
def test_a_failing_worker_program_fails_the_job(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    job = quickstart_job("bad", workers=1)
    job["spec"]["workers"]["command"] = ["python", "-c", "import sys; sys.exit(3)"]
    job["spec"]["workers"]["args"] = []
    kube_api.create(f"/apis/dynaps.io/v1alpha1/namespaces/{ns}/parameterserverjobs", job)
    done = wait_phase(kube_api, ns, "bad", {"Succeeded", "Failed"}, 90)
    assert done["status"]["phase"] == "Failed"
    failed = condition(done, "Failed")
    assert failed is not None
    assert failed["reason"] == "JobFailed"
    assert "exit code 3" in failed["message"] or "code 3" in failed["message"], failed
    # the operator posts a transition's Events right after writing the status that shows it
    wait_for(
        lambda: any(
            e["type"] == "Warning" and e["reason"] == "JobFailed" for e in events_of(kube_api, ns, "bad")
        ),
        10,
        "the JobFailed Warning Event",
    )
    assert done["status"]["restarts"] == 0  # the program's failure is the job's result, not a retry
    print(json.dumps(done["status"]))
