"""Gang scheduling by a real gang scheduler: scheduler-plugins' Coscheduling (tests/kube/scheduler_plugins.py)
runs as the test control plane's second scheduler, and a job that does not fit waits whole.

The process kubelet's node advertises 64 CPUs. A blocker pod takes all but three of those its
pods leave free; the job's four pods (coordinator, server, two workers) ask for one CPU each, so
any three of them fit and the four do not:

* with the default scheduler (same job, ``schedulerName: default-scheduler``) the job starts
  half: three pods bound, holding their CPUs for nothing, the fourth Pending;
* with ``scheduler: coscheduling`` none is bound: the first pods wait at Coscheduling's Permit,
  and when the last one does not fit the plugin rejects the whole PodGroup (a FailedScheduling
  Event that says so); the job's status says its pods cannot be scheduled;
* once the blocker goes, the four are bound and the job runs to Succeeded.
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any

import pytest

from dynaps.contract.quantity import parse
from dynaps_operator import gang
from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import (
    condition,
    create_job,
    get_job,
    jobs_path,
    pods_of,
    quickstart_job,
    wait_phase,
)
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet
from tests.kube.polling import holds_for, wait_for

JsonDict = dict[str, Any]
GANG = 4  # the coordinator, one server, two workers: minMember
ONE_CPU = {"requests": {"cpu": "1"}}


def gang_job(name: str, **policy: Any) -> JsonDict:
    """The quickstart job with every pod asking for one CPU, gang-scheduled by ``policy``."""
    job = quickstart_job(name, runPolicy={"schedulingPolicy": {"scheduler": "coscheduling", **policy}})
    job["spec"]["coordinator"] = {"resources": ONE_CPU}
    for role in ("servers", "workers"):
        job["spec"][role]["resources"] = ONE_CPU
    return job


def cpu_request(pod: JsonDict) -> Fraction:
    """What the scheduler counts for a pod: its containers' CPU requests added up, or its largest
    init container's when that is more."""

    def cpu(container: JsonDict) -> Fraction:
        return parse(((container.get("resources") or {}).get("requests") or {}).get("cpu", "0"))

    spec = pod["spec"]
    total = sum((cpu(c) for c in spec.get("containers") or []), Fraction(0))
    return max([total, *(cpu(c) for c in spec.get("initContainers") or [])])


def cpu_left(kube_api: KubeClient, node: str) -> Fraction:
    """The node's allocatable CPU less what its pods ask for, once no pod that asks for CPU is on
    its way out (earlier tests' namespaces): its CPU coming back mid-test would let the gang fit."""

    def settled() -> Fraction | None:
        leaving = {
            ns["metadata"]["name"]
            for ns in kube_api.items("/api/v1/namespaces")
            if (ns.get("status") or {}).get("phase") == "Terminating"
        }
        pods = [
            pod
            for pod in kube_api.items("/api/v1/pods", fieldSelector=f"spec.nodeName={node}")
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        going = [
            p for p in pods if "deletionTimestamp" in p["metadata"] or p["metadata"]["namespace"] in leaving
        ]
        if any(cpu_request(pod) for pod in going):
            return None
        allocatable = parse(kube_api.get(f"/api/v1/nodes/{node}")["status"]["allocatable"]["cpu"])
        return allocatable - sum((cpu_request(pod) for pod in pods), Fraction(0))

    return wait_for(settled, 90, f"the pods leaving {node} to give their CPU back")


def blocker_pod(cpu: Fraction) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "blocker"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "ignored:latest",
                    "command": ["sleep", "3600"],
                    "resources": {"requests": {"cpu": f"{int(cpu * 1000)}m"}},
                }
            ],
        },
    }


def bound(pods: list[JsonDict]) -> list[str]:
    return sorted(pod["metadata"]["name"] for pod in pods if pod["spec"].get("nodeName"))


def failed_scheduling(kube_api: KubeClient, ns: str, job: str, *words: str) -> JsonDict | None:
    """A FailedScheduling Event of one of the job's pods whose message has every one of ``words``."""
    for event in kube_api.items(namespaced("events", ns), fieldSelector="reason=FailedScheduling"):
        message = event.get("message") or event.get("note") or ""
        if event["involvedObject"]["name"].startswith(f"{job}-") and all(w in message for w in words):
            return event
    return None


@pytest.mark.e2e
def test_a_gang_that_does_not_fit_waits_whole_and_runs_once_there_is_room(
    operator: OperatorThread,
    coscheduling_scheduler: str,
    process_kubelet: ProcessKubelet,
    kube_api: KubeClient,
    kube_namespace: str,
) -> None:
    ns, node = kube_namespace, process_kubelet.node_name
    left = cpu_left(kube_api, node)
    assert left >= GANG, f"{node} has only {left} CPUs free"
    kube_api.create(namespaced("pods", ns), blocker_pod(left - (GANG - 1)))
    blocker = namespaced("pods", ns, "blocker")
    wait_for(lambda: kube_api.get(blocker)["spec"].get("nodeName") == node, 30, "the blocker to be bound")

    # The same job, placed pod by pod by the default scheduler: three of four start.
    began = time.monotonic()
    create_job(kube_api, ns, gang_job("half", schedulerName="default-scheduler"))

    def half_started() -> list[JsonDict] | None:
        pods = pods_of(kube_api, ns, "half")
        if len(pods) < GANG or len(bound(pods)) < GANG - 1:
            return None
        # the default scheduler has tried the fourth too, and found no room
        return pods if failed_scheduling(kube_api, ns, "half", "Insufficient cpu") else None

    pods = wait_for(half_started, 60, "the default scheduler to bind three pods and refuse the fourth")
    binding_took = time.monotonic() - began
    assert len(bound(pods)) == GANG - 1, bound(pods)
    # Suspending deletes its pods (and their CPU requests with them).
    kube_api.patch(jobs_path(ns, "half"), {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(lambda: not pods_of(kube_api, ns, "half"), 60, "the half-started job's pods to go")

    # With Coscheduling: the PodGroup is rejected whole, and no pod is bound.
    create_job(kube_api, ns, gang_job("whole"))
    rejected = wait_for(
        lambda: failed_scheduling(
            kube_api, ns, "whole", "Insufficient cpu", f"PodGroup {ns}/whole gets rejected"
        ),
        60,
        "Coscheduling to reject the PodGroup whole",
    )
    pods = pods_of(kube_api, ns, "whole")
    assert len(pods) == GANG
    assert {pod["spec"]["schedulerName"] for pod in pods} == {coscheduling_scheduler}
    assert bound(pods) == [], f"{bound(pods)} bound, yet {rejected['message']}"

    def shown_on_the_job() -> JsonDict | None:
        running = condition(get_job(kube_api, ns, "whole"), "Running")
        return running if running is not None and running["reason"] == "Unschedulable" else None

    why = wait_for(shown_on_the_job, 30, "the job to say that its pods cannot be scheduled")
    assert "cannot be scheduled" in why["message"], why
    # Three times as long as the default scheduler took to bind three pods: still none.
    holds_for(
        lambda: bound(pods_of(kube_api, ns, "whole")) == [],
        max(5.0, 3 * binding_took),
        "no pod of the gang bound",
    )
    group = kube_api.get(namespaced(gang.POD_GROUP_PLURAL, ns, "whole", api=gang.COSCHEDULING_API))
    assert group["spec"]["minMember"] == GANG

    # Room for the four: they are bound, and the job runs.
    kube_api.delete(blocker, {"gracePeriodSeconds": 0})
    wait_for(lambda: len(bound(pods_of(kube_api, ns, "whole"))) == GANG, 60, "the whole gang to be bound")
    done = wait_phase(kube_api, ns, "whole", {"Succeeded", "Failed"}, 180)
    assert done["status"]["phase"] == "Succeeded", done["status"]
