"""runPolicy.oomMemoryGrowth on the test control plane: a worker that needs more memory than its
limit is OOM-killed by the process kubelet (which enforces limits.memory on the pod's processes'
RSS), comes back with the grown memory and finishes the job."""

from __future__ import annotations

import pytest

from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import (
    GROUP,
    condition_of,
    create_job,
    events_of,
    pod_logs,
    pods_of,
    python_name,
    wait_phase,
)
from tests.kube.kubeapi import KubeClient
from tests.kube.kubelet import ProcessKubelet

NEED_MI = 300  # what the program holds: over the first limit (256Mi), well under the grown one
# The program learns its limit from the downward API. Over it, it waits for the OOM kill (and
# fails loudly if none comes); within it, it does its work and the job succeeds.
PROGRAM = f"""
import os, sys, time
import numpy as np
import dynaps

hold = b"x" * ({NEED_MI} << 20)
if {NEED_MI} > int(os.environ["LIMIT_MI"]):
    time.sleep(60)
    sys.exit("not OOM-killed at limit " + os.environ["LIMIT_MI"] + "Mi")
ps = dynaps.connect()
counts = ps.table("counts")
counts.push(np.arange(10), np.ones((10, 1)))
ps.barrier()
print("done with", os.environ["LIMIT_MI"], "Mi", flush=True)
"""


@pytest.mark.e2e
def test_an_oom_killed_worker_comes_back_with_more_memory_and_the_job_succeeds(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str, process_kubelet: ProcessKubelet
) -> None:
    ns = kube_namespace
    limit_env = {
        "name": "LIMIT_MI",
        "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
    }
    job = {
        "apiVersion": GROUP,
        "kind": "ParameterServerJob",
        "metadata": {"name": "oom"},
        "spec": {
            "tables": [{"name": "counts", "numKeys": 10, "dim": 1}],
            "servers": {"replicas": 1},
            "workers": {
                "replicas": 1,
                "command": [python_name(), "-c", PROGRAM],
                "resources": {"requests": {"memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "template": {"spec": {"containers": [{"name": "dynaps", "env": [limit_env]}]}},
            },
            "runPolicy": {
                "backoffLimit": 0,  # the growth does not count: a counted failure would fail the job
                "cleanPodPolicy": "None",
                "oomMemoryGrowth": {"factor": 4, "maxMemory": "1Gi"},
            },
        },
    }
    create_job(kube_api, ns, job)
    try:
        done = wait_phase(kube_api, ns, "oom", {"Succeeded", "Failed"}, 150)
    finally:
        print(pod_logs(process_kubelet, ns, ["oom-coordinator", "oom-worker-0"]))
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert (status["workers"]["memoryGrowths"], status["workers"]["memory"]) == (1, "1Gi")
    assert "memory" not in status["servers"]
    assert (status["restarts"], status["preemptions"]) == (0, 0)
    worker = next(p for p in pods_of(kube_api, ns, "oom") if p["metadata"]["name"] == "oom-worker-0")
    resources = worker["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert "done with 1024 Mi" in process_kubelet.logs(ns, "oom-worker-0")
    grown = [e for e in events_of(kube_api, ns, "oom") if e["reason"] == "MemoryGrown"]
    assert [e["message"] for e in grown] == [
        "pod oom-worker-0 was OOMKilled with 256Mi; replacing it with 1Gi "
        "(runPolicy.oomMemoryGrowth: x4, at most 1Gi)"
    ]
    assert condition_of(done, "Succeeded")["status"] == "True"
