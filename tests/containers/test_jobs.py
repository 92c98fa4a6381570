"""Jobs living through what a cluster does to them, as real containers: a server pod deleted
mid-job under ``replication: 1`` (exact additive counters), ``kubectl scale`` out and in, and a
suspend that checkpoints onto a volume and a resume that restores from it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dynaps.contract import RuntimeConfig
from dynaps_operator.references import USABLE_LABEL
from tests.containers.conftest import get, job_pods, wait_for_phase, wait_until
from tests.dynaps_operator.conftest import COUNTER_KEYS, COUNTER_PROGRAM, DRAINABLE_WORKER
from tests.kube.node import RealNode

# the first test also waits for the node: its start, and another session's node (LOCK_WAIT)
pytestmark = [pytest.mark.e2e, pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(600)]


def apply(real_node: RealNode, namespace: str, *objects: dict[str, Any]) -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    real_node.kubectl("-n", namespace, "apply", "-f", "-", input_text=json.dumps(listed))


def job(name: str, **spec: Any) -> dict[str, Any]:
    kind = {"apiVersion": "dynaps.io/v1alpha1", "kind": "ParameterServerJob"}
    return {**kind, "metadata": {"name": name}, "spec": spec}


def suspend(real_node: RealNode, namespace: str, name: str, value: bool) -> None:
    patch = json.dumps({"spec": {"runPolicy": {"suspend": value}}})
    real_node.kubectl("-n", namespace, "patch", "psjob", name, "--type=merge", "-p", patch)


def pod_uid(real_node: RealNode, namespace: str, name: str) -> str | None:
    found = [p for p in get(real_node, "-n", namespace, "pods")["items"] if p["metadata"]["name"] == name]
    return found[0]["metadata"]["uid"] if found else None


def test_a_deleted_server_pod_loses_no_acknowledged_increment(
    real_node: RealNode, operator: None, namespace: str, volumes: Callable[[str], Path]
) -> None:
    shared = volumes("shared")
    program = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "counter-program", "labels": {USABLE_LABEL: "true"}},  # for jobs
        "data": {"counter_program.py": COUNTER_PROGRAM.read_text()},
    }
    mounts = {
        "spec": {
            "volumes": [
                {"name": "program", "configMap": {"name": "counter-program"}},
                {"name": "shared", "persistentVolumeClaim": {"claimName": "shared"}},
            ],
            "containers": [
                {
                    "name": "dynaps",
                    "volumeMounts": [
                        {"name": "program", "mountPath": "/program"},
                        {"name": "shared", "mountPath": "/shared"},
                    ],
                }
            ],
        }
    }
    counters = job(
        "counters",
        tables=[{"name": "counts", "numKeys": COUNTER_KEYS, "dim": 1}],
        servers={"replicas": 2},
        workers={
            "replicas": 2,
            "command": ["python", "/program/counter_program.py", "/shared"],
            "template": mounts,
        },
        faultTolerance={"replication": 1},
        runPolicy={"cleanPodPolicy": "None"},
    )
    apply(real_node, namespace, program, counters)
    wait_until("both workers pushing", 180, lambda: all((shared / f"progress-{r}").exists() for r in (0, 1)))
    victim = pod_uid(real_node, namespace, "counters-server-0")
    assert victim is not None
    real_node.kubectl("-n", namespace, "delete", "pod", "counters-server-0", "--wait=false")
    wait_until(
        "a new counters-server-0",
        120,
        lambda: pod_uid(real_node, namespace, "counters-server-0") not in (None, victim),
    )
    before = sum(int((shared / f"progress-{r}").read_text() or 0) for r in (0, 1))
    wait_until(
        "the workers to push on after the loss",
        120,
        lambda: sum(int((shared / f"progress-{r}").read_text() or 0) for r in (0, 1)) > before + 20,
    )
    (shared / "stop").touch()
    done = wait_for_phase(real_node, namespace, "counters", "Succeeded")
    acked = sum(int((shared / f"acked-{r}").read_text()) for r in (0, 1))
    table = json.loads((shared / "table").read_text())
    # Every key got one increment per acknowledged push, no more and no less.
    assert (table["min"], table["max"]) == (acked, acked), (table, acked)
    status = done["status"]
    assert not (status.get("dataLoss") or {}).get("entries"), status
    assert status["preemptions"] >= 1, status


def test_kubectl_scale_out_and_in(real_node: RealNode, operator: None, namespace: str) -> None:
    scaled = job(
        "scaled",
        tables=[{"name": "rows", "numKeys": 1000, "dim": 8}],
        servers={"replicas": 1},
        workers={"replicas": 2, "maxReplicas": 4, "command": DRAINABLE_WORKER},
        rebalancePolicy={"drainTimeoutSeconds": 60},
    )
    apply(real_node, namespace, scaled)
    wait_for_phase(real_node, namespace, "scaled", "Running")

    def summary() -> str:
        return str(get(real_node, "-n", namespace, "psjob", "scaled")["status"]["workers"].get("summary"))

    real_node.kubectl("-n", namespace, "scale", "psjob", "scaled", "--replicas=3")
    wait_until("three workers running", 120, lambda: summary() == "3/3")
    real_node.kubectl("-n", namespace, "scale", "psjob", "scaled", "--replicas=2")
    wait_until(
        "the drained third worker's pod to go",
        120,
        lambda: (
            "scaled-worker-2" not in {p["metadata"]["name"] for p in job_pods(real_node, namespace, "scaled")}
        ),
    )
    status = wait_for_phase(real_node, namespace, "scaled", "Running")["status"]
    assert status["workers"]["summary"] == "2/2"
    assert (status["restarts"], status["preemptions"]) == (0, 0), status


def test_suspend_checkpoints_onto_a_volume_and_resume_restores_it(
    real_node: RealNode, operator: None, namespace: str, volumes: Callable[[str], Path]
) -> None:
    checkpoints = volumes("checkpoints")
    paused = job(
        "paused",
        tables=[{"name": "rows", "numKeys": 2000, "dim": 8}, {"name": "cols", "numKeys": 500, "dim": 8}],
        servers={"replicas": 1},
        workers={
            "replicas": 2,
            "command": ["python", "-m", "dynaps.apps.quickstart"],
            "args": ["--epochs", "400", "--entries", "20000"],
        },
        faultTolerance={"checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": "checkpoints"}}}},
    )
    apply(real_node, namespace, paused)
    wait_for_phase(real_node, namespace, "paused", "Running")
    suspend(real_node, namespace, "paused", True)
    wait_until("the suspended job's pods to go", 180, lambda: not job_pods(real_node, namespace, "paused"))
    status = get(real_node, "-n", namespace, "psjob", "paused")["status"]
    checkpoint = status.get("lastCheckpoint")
    assert checkpoint is not None, status
    written = [p for p in checkpoints.rglob("*") if p.is_file()]
    assert written, "nothing was written to the checkpoint volume"
    suspend(real_node, namespace, "paused", False)

    def restores() -> bool:
        config = get(real_node, "-n", namespace, "configmap", "paused-config")["data"]["config.json"]
        restored = RuntimeConfig.from_json(config).fault_tolerance.checkpoint.restore_from
        return restored is not None and restored == str(checkpoint["path"])

    wait_until("the resumed job to restore the checkpoint", 60, restores)
    wait_for_phase(real_node, namespace, "paused", "Running")
