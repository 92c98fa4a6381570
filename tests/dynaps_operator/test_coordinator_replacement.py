"""A coordinator pod lost mid-job is replaced alone: the nodes rejoin the new coordinator, every
other pod keeps its uid, and no acknowledged increment is lost (the real control plane)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator import conftest
from tests.dynaps_operator.conftest import (
    JsonDict,
    condition,
    create_job,
    events_of,
    get_job,
    pod_logs,
    pods_of,
    progress,
    wait_phase,
)
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet
from tests.kube.polling import wait_for

NUM_KEYS = conftest.COUNTER_KEYS
WORKERS = 2


def counter_job(name: str, folder: Path) -> JsonDict:
    return conftest.counter_job(name, folder, workers=WORKERS)


def uids(kube_api: KubeClient, ns: str, job: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods_of(kube_api, ns, job)}


@pytest.mark.e2e
@pytest.mark.parametrize("grace", [0, None], ids=["killed", "sigterm"])
def test_a_deleted_coordinator_is_replaced_alone_and_the_result_is_exact(
    operator: OperatorThread,
    kube_api: KubeClient,
    kube_namespace: str,
    process_kubelet: ProcessKubelet,
    tmp_path: Path,
    grace: int | None,
) -> None:
    """Killed at once (a failed node), or terminated politely (an eviction, a node drain:
    SIGTERM, after which the coordinator exits without ending the job)."""
    ns, name = kube_namespace, "adopt"
    create_job(kube_api, ns, counter_job(name, tmp_path))
    wait_phase(kube_api, ns, name, {"Running"}, 60)
    wait_for(lambda: progress(tmp_path) >= 20, 30, "the workers to push")
    before = uids(kube_api, ns, name)
    assert len(before) == 1 + 2 + WORKERS
    options = None if grace is None else {"gracePeriodSeconds": grace}
    kube_api.delete(namespaced("pods", ns, f"{name}-coordinator"), options)
    wait_for(
        lambda: (
            uids(kube_api, ns, name).get(f"{name}-coordinator") not in (None, before[f"{name}-coordinator"])
        ),
        30,
        "a new coordinator pod",
    )

    def lost_said() -> JsonDict | None:
        # the operator creates the replacement, then patches the status, in one pass: the pod
        # can be seen a moment before the condition (a full run read the status in between)
        job = get_job(kube_api, ns, name)
        degraded = condition(job, "Degraded")
        return job if degraded is not None and degraded["reason"] == "CoordinatorLost" else None

    wait_for(lost_said, 30, "the job to say its coordinator was lost (Degraded: CoordinatorLost)")
    try:
        wait_phase(kube_api, ns, name, {"Running"}, 60)
        pushed = progress(tmp_path)
        wait_for(
            lambda: progress(tmp_path) >= pushed + 20, 30, "the workers to push under the new coordinator"
        )
        (tmp_path / "stop").touch()
        done = wait_phase(kube_api, ns, name, {"Succeeded", "Failed"}, 60)
    finally:
        print(pod_logs(process_kubelet, ns, [f"{name}-coordinator", f"{name}-server-0", f"{name}-worker-0"]))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    after = uids(kube_api, ns, name)
    assert {k: v for k, v in after.items() if k != f"{name}-coordinator"} == {
        k: v for k, v in before.items() if k != f"{name}-coordinator"
    }, "every pod but the coordinator kept its uid"
    assert (done["status"]["preemptions"], done["status"]["restarts"]) == (1, 0)
    assert "CoordinatorLost" in [e["reason"] for e in events_of(kube_api, ns, name)]
    acked = sum(int((tmp_path / f"acked-{rank}").read_text()) for rank in range(WORKERS))
    table = json.loads((tmp_path / "table").read_text())
    assert table == {"min": acked, "max": acked}, f"{acked} increments acknowledged"
