"""Jobs that cannot start: the reason shows on the job within one poll, and
``runPolicy.startTimeoutSeconds`` fails it (the real scheduler, the process kubelet)."""

from __future__ import annotations

import time

import pytest

from dynaps_operator import starting
from dynaps_operator.references import USABLE_LABEL
from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import (
    JsonDict,
    condition,
    create_job,
    events_of,
    get_job,
    quickstart_job,
    wait_phase,
)
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.polling import wait_for

POLL_SECONDS = 1.0  # the e2e operator's poll (conftest)


def running_reason(kube_api: KubeClient, ns: str, name: str, reason: str) -> JsonDict | None:
    job = get_job(kube_api, ns, name)
    found = condition(job, "Running")
    return job if found is not None and found["reason"] == reason else None


@pytest.mark.e2e
def test_an_unschedulable_pod_is_the_reason_then_the_start_timeout_fails_the_job(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    job = quickstart_job("nowhere", runPolicy={"startTimeoutSeconds": 6})
    job["spec"]["workers"]["template"] = {"spec": {"nodeSelector": {"dynaps.io/no-such-node": "x"}}}
    create_job(kube_api, ns, job)
    shown = wait_for(lambda: running_reason(kube_api, ns, "nowhere", "Unschedulable"), 20, "Unschedulable")
    message = condition(shown, "Running")["message"]  # type: ignore[index]
    assert message.startswith("pod nowhere-worker-"), message
    assert "cannot be scheduled: 0/1 nodes are available" in message
    assert shown["status"]["phase"] == "Pending"
    assert shown["status"]["message"].startswith("pod nowhere-worker-")
    done = wait_phase(kube_api, ns, "nowhere", {"Failed", "Succeeded"}, 30)
    failed = condition(done, "Failed")
    assert failed is not None, done["status"]
    assert failed["reason"] == "StartTimeoutExceeded", done["status"]
    assert "did not start within runPolicy.startTimeoutSeconds (6 s)" in failed["message"]
    assert "cannot be scheduled" in failed["message"]
    reasons = [e["reason"] for e in events_of(kube_api, ns, "nowhere")]
    assert "Unschedulable" in reasons
    assert "StartTimeoutExceeded" in reasons


@pytest.mark.e2e
def test_a_missing_config_map_key_is_the_reason_within_one_poll(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    # marked for jobs (the operator creates no pod that names an unmarked one), without the key
    labels = {USABLE_LABEL: "true"}
    kube_api.create(namespaced("configmaps", ns), {"metadata": {"name": "sauceless", "labels": labels}})
    job = quickstart_job("noconfig")
    env = {"name": "SECRET_SAUCE", "valueFrom": {"configMapKeyRef": {"name": "sauceless", "key": "sauce"}}}
    job["spec"]["servers"]["template"] = {"spec": {"containers": [{"name": "dynaps", "env": [env]}]}}
    create_job(kube_api, ns, job)
    started = time.monotonic()

    def pod_says_so() -> float | None:
        pods = kube_api.items(f"/api/v1/namespaces/{ns}/pods", labelSelector="dynaps.io/job=noconfig")
        server = [p for p in pods if p["metadata"]["name"] == "noconfig-server-0"]
        statuses = (server[0].get("status") or {}).get("containerStatuses") or [] if server else []
        waiting = [(s.get("state") or {}).get("waiting") or {} for s in statuses]
        return (
            time.monotonic()
            if any(w.get("reason") == "CreateContainerConfigError" for w in waiting)
            else None
        )

    pod_time = wait_for(pod_says_so, 30, "the kubelet to report CreateContainerConfigError")
    shown = wait_for(
        lambda: running_reason(kube_api, ns, "noconfig", "CreateContainerConfigError"),
        10,
        "the job to show CreateContainerConfigError",
    )
    assert time.monotonic() - pod_time < POLL_SECONDS + 1.0, "more than one poll after the pod said so"
    message = condition(shown, "Running")["message"]  # type: ignore[index]
    assert (
        message == "pod noconfig-server-0: container dynaps: CreateContainerConfigError: "
        "couldn't find key sauce in configmaps sauceless"
    )
    assert time.monotonic() - started < 30


@pytest.mark.e2e
def test_a_worker_program_that_never_attaches_is_named_then_fails_the_job(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    # 25 s: on a loaded 2-core machine the pods took 6.7-7.7 s to say what they wait for,
    # a program is named once its pod ran for the grace (10 s), and the reason must show
    # before the timeout fails the job
    timeout = 15 + starting.REGISTER_GRACE_SECONDS
    job = quickstart_job("silent", workers=1, runPolicy={"startTimeoutSeconds": int(timeout)})
    job["spec"]["workers"]["command"] = ["python", "-c", "import time; time.sleep(300)"]
    job["spec"]["workers"]["args"] = []
    create_job(kube_api, ns, job)
    shown = wait_for(
        lambda: running_reason(kube_api, ns, "silent", "WorkersNotAttached"), 30, "WorkersNotAttached"
    )
    assert condition(shown, "Running")["message"] == (  # type: ignore[index]
        "the programs of workers silent-worker-0 have not connected to the job (dynaps.connect())"
    )
    done = wait_phase(kube_api, ns, "silent", {"Failed", "Succeeded"}, 30)
    failed = condition(done, "Failed")
    assert failed is not None, done["status"]
    assert failed["reason"] == "StartTimeoutExceeded", done["status"]
    assert failed["message"].endswith("have not connected to the job (dynaps.connect())")
