"""dynaps status's views and text, on the documents its two sources send."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from dynaps.contract import (
    CheckpointStatus,
    Condition,
    ConditionStatus,
    ConditionType,
    DataLossEntry,
    DataLossStatus,
    JobPhase,
    JobStatus,
    OwnershipStatus,
    ReplicaStatus,
)
from dynaps.observe import render, view

JsonDict = dict[str, Any]
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


def coordinator_doc() -> JsonDict:
    """A /status document as dynaps.coordinator.http.status_document shapes it."""
    return {
        "job": "probe",
        "phase": "running",
        "epoch": 3,
        "membershipVersion": 5,
        "shardsPerServer": {"1": 700, "2": 324},
        "migrationsInFlight": 2,
        "replication": {"synced": 1000, "unsynced": 24},
        "dataLoss": [
            {"cause": "initial", "server": 7, "message": "8 shards (80 keys) of lost server 7 restarted"}
        ],
        "dataLossTotal": {"entries": 3, "keys": 240},
        "lastCheckpoint": {"path": "/ckpt/3", "time": NOW - 30},
        "exitCode": None,
        "reason": "",
        "startedAt": NOW - 125,
        "servers": {"desired": 2, "ready": 2},
        "workers": {"desired": 3, "ready": 2, "finished": 1},
        "metrics": {"loss": 0.25, "epoch": 2.0, "epochs": 4.0, "steps": 1000.0, "bad": "x"},
        "dataShards": {"2": {"shards": 10, "done": 4, "held": 2, "free": 4}},
        "members": [
            {"id": 1, "role": "server", "name": "server-0", "state": "ready", "attached": False},
            {"id": 2, "role": "server", "name": "server-1", "state": "draining", "attached": False},
            {"id": 12, "role": "worker", "name": "worker-10", "rank": 10, "state": "ready", "attached": True},
            {"id": 3, "role": "worker", "name": "worker-2", "rank": 2, "state": "joining", "attached": False},
            {"id": 4, "role": "worker", "name": "worker-3", "rank": 3, "state": "ready", "exitCode": 0},
        ],
    }


def test_a_coordinator_document_renders_every_part() -> None:
    job = view.from_coordinator(coordinator_doc(), "http://127.0.0.1:9")
    assert job.shards_per_server == {"server-0": 700, "server-1": 324}  # node ids become names
    assert job.metrics == {"loss": 0.25, "epoch": 2.0, "epochs": 4.0, "steps": 1000.0}  # "bad" dropped
    text = render.render(job, NOW, {"steps/s": 50.0})
    lines = text.splitlines()
    assert lines[0] == "Job probe (http://127.0.0.1:9)  phase running  running for 2m05s"
    assert "  servers: 2/2 ready" in lines
    assert "  workers: 2/3 ready, 1 finished" in lines
    servers = [line.split() for line in lines if line.startswith("    server-")]
    assert servers == [
        ["server-0", "server", "ready,", "700", "shards"],
        ["server-1", "server", "draining,", "324", "shards"],
    ]
    workers = [line.split()[0] for line in lines if line.startswith("    worker-")]
    assert workers == ["worker-2", "worker-3", "worker-10"]  # by index, not as text
    assert any("worker-2" in line and "joining, program not attached (rank 2)" in line for line in lines)
    assert any("worker-3" in line and "program exited 0" in line for line in lines)
    assert (
        "Shards: 1024 on 2 servers (324 to 700 each), shard map epoch 3; "
        "2 migrations in flight, 24 not yet replicated"
    ) in lines
    assert f"Progress: epoch 2 of 4 [{'#' * 15}{'.' * 15}] 50 %" in lines
    assert "Throughput: steps/s 50" in lines
    assert "Metrics: epoch=2  epochs=4  loss=0.25  steps=1000" in lines
    assert "Last checkpoint: /ckpt/3" in lines
    assert "Data loss: 3 recoveries restored 240 keys from other than a synced replica:" in lines
    assert "  8 shards (80 keys) of lost server 7 restarted" in lines


def test_an_ending_run_says_its_exit_code() -> None:
    doc = {**coordinator_doc(), "phase": "stopping", "exitCode": 3, "reason": "worker-1 exited 3"}
    text = render.render(view.from_coordinator(doc, "x"), NOW)
    assert "  exit code 3: worker-1 exited 3" in text.splitlines()


def test_progress_without_a_total_follows_the_data_shards() -> None:
    doc = coordinator_doc()
    del doc["metrics"]["epochs"]
    job = view.from_coordinator(doc, "x")
    assert render.progress(job) == f"data epoch 2: 4 of 10 shards done [{'#' * 12}{'.' * 18}] 40 %"
    doc["dataShards"] = {}
    assert render.progress(view.from_coordinator(doc, "x")) == "epoch 2"


def test_throughput_is_the_growth_of_counters_between_two_samples() -> None:
    first = view.from_coordinator(coordinator_doc(), "x")
    later_doc = coordinator_doc()
    later_doc["metrics"].update(steps=1300.0, loss=0.1, samples_per_s=42.0)
    later_doc["dataShards"] = {"2": {"shards": 10, "done": 9}, "3": {"shards": 10, "done": 1}}
    later = view.from_coordinator(later_doc, "x")
    rates = render.throughput(render.Sample(100.0, first), render.Sample(102.0, later))
    # loss and epoch are not counters; a reported rate passes as it is; 5 + 1 shards in 2 s
    assert rates == {"steps/s": 150.0, "samples_per_s": 42.0, "data shards/s": 3.0}
    assert render.throughput(None, render.Sample(102.0, later)) == {"samples_per_s": 42.0}
    restarted_doc = copy.deepcopy(later_doc)
    restarted_doc["metrics"]["steps"] = 5.0  # a program started again: a counter went back
    restarted = view.from_coordinator(restarted_doc, "x")
    assert "steps/s" not in render.throughput(render.Sample(102.0, later), render.Sample(104.0, restarted))


def test_documents_that_are_not_status_are_refused() -> None:
    with pytest.raises(view.BadDocumentError, match="other than a dynaps /status"):
        view.from_coordinator(["not", "a", "document"], "http://x")
    with pytest.raises(view.BadDocumentError, match="does not follow the CRD"):
        view.from_kubernetes({"metadata": {"name": "j"}, "status": {"phase": "Exploded"}}, [], [])


def k8s_job(status: JobStatus | None) -> JsonDict:
    job: JsonDict = {"kind": "ParameterServerJob", "metadata": {"name": "mf", "namespace": "team-a"}}
    if status is not None:
        job["status"] = status.to_wire()
    return job


def pod(name: str, role: str, phase: str, **status: Any) -> JsonDict:
    return {
        "metadata": {"name": name, "labels": {"dynaps.io/job": "mf", "dynaps.io/role": role}},
        "status": {"phase": phase, **status},
    }


def container(ready: bool = True, restarts: int = 0, **state: Any) -> JsonDict:
    return {"name": "dynaps", "ready": ready, "restartCount": restarts, "state": state or {"running": {}}}


def running_status() -> JobStatus:
    since = datetime.fromtimestamp(NOW - 90, UTC)
    return JobStatus(
        phase=JobPhase.RUNNING,
        message="every node registered",
        conditions=[
            Condition(
                type=ConditionType.RUNNING,
                status=ConditionStatus.TRUE,
                reason="JobRunning",
                message="training runs",
                last_transition_time=since,
            ),
            Condition(
                type=ConditionType.DEGRADED,
                status=ConditionStatus.TRUE,
                reason="PodsNotReady",
                message="mf-worker-1 is not ready",
                last_transition_time=since,
            ),
        ],
        servers=ReplicaStatus(desired=2, current=2, ready=2),
        workers=ReplicaStatus(desired=2, current=2, ready=1),
        ownership=OwnershipStatus(epoch=4, shards_per_server={"mf-server-0": 512, "mf-server-1": 512}),
        restarts=2,
        start_time=datetime.fromtimestamp(NOW - 600, UTC),
        metrics={"rmse": 0.5},
        last_checkpoint=CheckpointStatus(path="/data/ckpt", time=since),
        data_loss=DataLossStatus(
            entries=1,
            keys=80,
            recent=[
                DataLossEntry(
                    cause="checkpoint", node=3, server="mf-server-1", keys=80, time=since, message=""
                )
            ],
        ),
    )


def test_a_kubernetes_job_renders_conditions_pods_and_loss() -> None:
    pods = [
        pod(
            "mf-worker-1",
            "worker",
            "Pending",
            containerStatuses=[container(False, waiting={"reason": "ErrImagePull"})],
        ),
        pod("mf-worker-0", "worker", "Running", containerStatuses=[container(True, restarts=2)]),
        pod("mf-server-1", "server", "Running", containerStatuses=[container(True)]),
        pod("mf-server-0", "server", "Running", containerStatuses=[container(True)]),
        pod(
            "mf-coordinator",
            "coordinator",
            "Failed",
            containerStatuses=[container(False, terminated={"exitCode": 137, "reason": "OOMKilled"})],
        ),
    ]
    events = [
        {
            "type": "Normal",
            "reason": "CreatedPods",
            "message": "created 5 pods",
            "lastTimestamp": "2025-01-02T03:00:00Z",
        },
        {
            "type": "Warning",
            "reason": "PodFailed",
            "message": "oom",
            "count": 2,
            "lastTimestamp": "2025-01-02T03:01:00Z",
        },
    ]
    job = view.from_kubernetes(k8s_job(running_status()), pods, events)
    lines = render.render(job, NOW).splitlines()
    assert lines[0] == "Job mf (namespace team-a)  phase Running  running for 10m00s  2 pod restarts"
    assert "  every node registered" in lines
    conditions = [line.split(None, 4) for line in lines[lines.index("Conditions:") + 1 :][:2]]
    assert conditions == [
        ["Running", "True", "JobRunning", "1m30s", "ago  training runs"],
        ["Degraded", "True", "PodsNotReady", "1m30s", "ago  mf-worker-1 is not ready"],
    ]
    members = [line.split(None, 2) for line in lines if line.startswith("    mf-")]
    assert members == [
        ["mf-coordinator", "coordinator", "Failed (exit 137, OOMKilled)"],
        ["mf-server-0", "server", "Running, ready, 512 shards"],
        ["mf-server-1", "server", "Running, ready, 512 shards"],
        ["mf-worker-0", "worker", "Running, ready, 2 restarts"],
        ["mf-worker-1", "worker", "Pending (ErrImagePull)"],
    ]
    assert "  workers: 1/2 ready" in lines
    assert "Metrics: rmse=0.5" in lines
    assert "Data loss: 1 recovery restored 80 keys from other than a synced replica:" in lines
    assert "  80 keys of mf-server-1 (checkpoint)" in lines
    assert lines[-2:] == ["  Normal CreatedPods: created 5 pods", "  Warning PodFailed: oom (x2)"]


def test_a_finished_kubernetes_job_shows_its_final_quality_and_run_time() -> None:
    status = running_status().model_copy(
        update={
            "phase": JobPhase.SUCCEEDED,
            "final_quality": {"rmse": 0.25},
            "completion_time": datetime.fromtimestamp(NOW - 60, UTC),
        }
    )
    text = render.render(view.from_kubernetes(k8s_job(status), [], []), NOW)
    assert text.startswith("Job mf (namespace team-a)  phase Succeeded  ran 9m00s")
    assert "Metrics: rmse=0.25\n" in text


def test_a_job_just_created_has_no_status_yet() -> None:
    text = render.render(view.from_kubernetes(k8s_job(None), [], []), NOW)
    assert text.splitlines() == [
        "Job mf (namespace team-a)  phase Pending",
        "Members:",
        "  none yet",
        "  servers: 0/0 ready",
        "  workers: 0/0 ready",
        "Shards: no shard map yet",
        "Data loss: none",
    ]


def test_a_big_job_summarises_its_members_past_the_first_ones() -> None:
    pods = [pod(f"mf-worker-{i}", "worker", "Running", containerStatuses=[container()]) for i in range(30)]
    pods += [pod(f"mf-worker-{i}", "worker", "Pending") for i in range(30, 35)]
    lines = render.render(view.from_kubernetes(k8s_job(running_status()), pods, []), NOW).splitlines()
    listed = [line for line in lines if line.startswith("    mf-worker-")]
    assert len(listed) == render.MAX_MEMBERS
    assert "    ... 15 more: 10 Running, ready, 5 Pending" in lines
