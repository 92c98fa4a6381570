"""A staged job (``spec.stages``: 4, 2, then 1 worker) on the test control plane: the operator
follows the coordinator's worker count from stage to stage without restarting anything."""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from pathlib import Path

import pytest
import yaml

from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import JsonDict, create_job, get_job, pod_logs, pods_of, wait_phase
from tests.kube.kubeapi import KubeClient
from tests.kube.kubelet import ProcessKubelet
from tests.kube.polling import wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stages.yaml"


@pytest.mark.e2e
def test_a_staged_job_scales_its_worker_pods_per_stage(
    operator: OperatorThread,
    kube_api: KubeClient,
    kube_namespace: str,
    process_kubelet: ProcessKubelet,
    tmp_path: Path,
) -> None:
    """Rank 0 holds at each stage's start until the test saw the job there (--hold): the
    stage in the job's status, the coordinator's worker count, and exactly those worker pods."""
    ns = kube_namespace
    job = yaml.safe_load(EXAMPLE.read_text())
    job["spec"]["workers"]["args"] = ["--shards", "8", "--hold", str(tmp_path)]
    job["spec"]["runPolicy"] = {"cleanPodPolicy": "None"}  # keep the pods to compare their uids
    create_job(kube_api, ns, job)
    uids: dict[str, set[str]] = defaultdict(set)  # pod name -> every uid it had

    def at(stage: str, workers: int) -> JsonDict | None:
        pods = pods_of(kube_api, ns, "stages")
        for pod in pods:
            uids[pod["metadata"]["name"]].add(pod["metadata"]["uid"])
        running = sorted(
            p["metadata"]["name"]
            for p in pods
            if "-worker-" in p["metadata"]["name"] and p["status"].get("phase") == "Running"
        )
        all_workers = sorted(p["metadata"]["name"] for p in pods if "-worker-" in p["metadata"]["name"])
        status: JsonDict = get_job(kube_api, ns, "stages").get("status", {})
        shown = status.get("stage") or {}
        expected = [f"stages-worker-{i}" for i in range(workers)]
        here = shown.get("name") == stage and status["workers"]["desired"] == workers
        return status if here and running == expected == all_workers else None

    for stage, workers in (("wide", 4), ("narrow", 2), ("single", 1)):
        status = wait_for(partial(at, stage, workers), 120, f"stage {stage} on {workers} worker pods")
        assert status["stage"]["done"] == 0, status  # rank 0 holds at its start
        assert status["stage"]["progress"] == f"0/{status['stage']['length']} {status['stage']['unit']}"
        (tmp_path / stage).touch()
    final = wait_phase(kube_api, ns, "stages", {"Succeeded", "Failed"}, 120)
    status = final["status"]
    names = sorted(uids)
    logs = pod_logs(process_kubelet, ns, names)
    assert status["phase"] == "Succeeded", f"{yaml.safe_dump(status)}\n{logs}"
    assert status["stage"] == {  # the last stage, complete
        "name": "single",
        "index": 2,
        "count": 3,
        "unit": "steps",
        "done": 3,
        "length": 3,
        "workers": 1,
        "progress": "3/3 steps",
    }
    # the exact result, checked by rank 0 and reported
    assert status["finalQuality"]["exact"] == 1.0, status
    assert "[stages] exact: 7 units with workers [4, 4, 2, 2, 1, 1, 1]" in logs
    # nothing was restarted: every pod had one uid, no fifth worker was ever created
    roles = ["coordinator", "server-0", *(f"worker-{i}" for i in range(4))]
    assert names == [f"stages-{role}" for role in roles], names
    assert all(len(u) == 1 for u in uids.values()), uids
    assert (status["restarts"], status["preemptions"]) == (0, 0), status
    # the workers that left were deleted; the coordinator, the server and rank 0 remain
    left = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods_of(kube_api, ns, "stages")}
    assert sorted(left) == ["stages-coordinator", "stages-server-0", "stages-worker-0"], left
    assert all(left[name] in uids[name] for name in left)
