"""Small pure parts of the operator: pod states, coordinator status, status helpers, validation,
settings, the work queue and the command line."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from dynaps.contract import ConditionType
from dynaps_operator import __main__ as cli
from dynaps_operator.coordinator_view import parse_final, parse_status
from dynaps_operator.errors import OperatorConfigError
from dynaps_operator.podstate import Outcome, pod_view
from dynaps_operator.settings import OperatorSettings, describe
from dynaps_operator.status import merge_patch, set_condition
from dynaps_operator.validation import parse_job
from dynaps_operator.workqueue import QueueClosedError, WorkQueue
from tests.dynaps_operator.conftest import quickstart_job


def raw_pod(**status: object) -> dict[str, object]:
    return {
        "metadata": {
            "name": "mf-worker-0",
            "uid": "u",
            "labels": {"dynaps.io/role": "worker", "dynaps.io/index": "0"},
            "ownerReferences": [{"uid": "job", "controller": True}],
        },
        "status": status,
    }


def terminated(code: int, reason: str = "Error") -> dict[str, object]:
    return {
        "phase": "Failed" if code else "Succeeded",
        "containerStatuses": [
            {
                "name": "dynaps",
                "state": {
                    "terminated": {"exitCode": code, "reason": reason, "finishedAt": "2026-01-01T00:00:00Z"}
                },
            }
        ],
    }


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ({"phase": "Running"}, None),
        (terminated(0, "Completed"), Outcome.SUCCEEDED),
        (terminated(1), Outcome.FAILED),
        (terminated(137), Outcome.PREEMPTED),
        (terminated(143), Outcome.PREEMPTED),
        (terminated(75), Outcome.PREEMPTED),  # a node that fenced itself after it was declared lost
        (terminated(137, "OOMKilled"), Outcome.FAILED),
        ({"phase": "Failed", "reason": "Evicted"}, Outcome.PREEMPTED),
        (
            {"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True"}]},
            Outcome.PREEMPTED,
        ),
    ],
)
def test_pod_outcomes(status: dict[str, object], outcome: Outcome | None) -> None:
    view = pod_view(raw_pod(**status))
    assert view is not None
    assert view.outcome == outcome


def test_pod_view_reads_identity_and_termination() -> None:
    view = pod_view(raw_pod(**terminated(3)))
    assert view is not None
    assert (view.name, view.index, view.owner_uid, view.exit_code) == ("mf-worker-0", 0, "job", 3)
    assert view.finished_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert view.describe_exit() == "pod mf-worker-0 exited with code 3"
    assert pod_view({"metadata": {"name": "x", "labels": {}}}) is None


def test_coordinator_status_is_read_tolerantly() -> None:
    view = parse_status(
        {
            "phase": "running",
            "epoch": 4,
            "shardsPerServer": {"1": 600, "2": 424},
            "members": [{"id": 1, "role": "server", "name": "mf-server-0"}, {"id": 2, "role": "server"}],
            "servers": {"desired": 2},
            "workers": {"desired": 3},
            "migrationsInFlight": 1,
            "replication": {"factor": 1, "synced": 1000, "unsynced": 24},
            "metrics": {"rmse": 0.5, "epoch": 3, "bad": "x", "inf": float("inf")},
            "lastCheckpoint": {"path": "/c/1", "time": 0},
        }
    )
    assert view.running
    assert view.shards_per_server == {"mf-server-0": 600, "2": 424}
    assert (view.servers_desired, view.workers_desired, view.migrations_in_flight) == (2, 3, 1)
    assert view.unsynced_shards == 24
    assert parse_status({"replication": "x"}).unsynced_shards == 0
    assert view.metrics == {"rmse": 0.5, "epoch": 3.0}
    assert view.last_checkpoint is not None
    assert view.last_checkpoint.path == "/c/1"
    assert parse_status("nonsense").phase == ""
    assert parse_final("not json") is None
    final = parse_final('{"phase": "stopping", "exitCode": 0, "metrics": {"mrr": 0.3}}')
    assert final is not None
    assert final.ending
    assert final.metrics == {"mrr": 0.3}


def test_conditions_keep_their_transition_time_until_they_flip() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = set_condition([], ConditionType.RUNNING, True, "JobRunning", "m", t0)
    same = set_condition(first, ConditionType.RUNNING, True, "JobRunning", "m", t0 + timedelta(seconds=5))
    assert same is first
    reworded = set_condition(first, ConditionType.RUNNING, True, "JobRunning", "n", t0 + timedelta(seconds=5))
    assert reworded[0].last_transition_time == t0
    flipped = set_condition(
        first, ConditionType.RUNNING, False, "JobSucceeded", "", t0 + timedelta(seconds=9)
    )
    assert flipped[0].last_transition_time == t0 + timedelta(seconds=9)
    ordered = set_condition(flipped, ConditionType.CREATED, True, "JobCreated", "", t0)
    assert [c.type for c in ordered] == ["Created", "Running"]


def test_merge_patch_removes_what_disappeared() -> None:
    old = {"a": 1, "m": {"x": 1, "y": 2}, "gone": True}
    new = {"a": 1, "m": {"x": 1}, "b": [1]}
    assert merge_patch(old, new) == {"gone": None, "m": {"y": None}, "b": [1]}


def test_validation_names_the_field() -> None:
    job = quickstart_job("ok")
    assert parse_job(job) == (parse_job(job)[0], "")
    bad = quickstart_job("ok")
    bad["spec"]["workers"]["replicas"] = 0
    assert parse_job(bad)[1].startswith("spec.workers.replicas: Input should be greater than or equal to 1")
    empty = quickstart_job("ok")
    empty["spec"]["workers"]["command"] = []
    assert parse_job(empty)[1].startswith("spec.workers.command: is empty")
    digit = quickstart_job("9lives")
    assert parse_job(digit)[1].startswith("metadata.name: '9lives' must start with a letter")
    many = quickstart_job("a" * 51, workers=16_000)  # mf-worker-15999: 64 characters
    assert "is too long: pod 'aaa" in parse_job(many)[1]


def test_settings_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "DYNAPS_OPERATOR_NAMESPACES": "a, b,",
            "DYNAPS_OPERATOR_WORKERS": "8",
            "DYNAPS_OPERATOR_POLL_SECONDS": "0.5",
        }
    )
    assert settings.namespaces == ("a", "b")
    assert (settings.workers, settings.poll_seconds) == (8, 0.5)
    assert OperatorSettings.from_env({"DYNAPS_OPERATOR_WORKERS": "8"}, workers=2).workers == 2
    with pytest.raises(OperatorConfigError, match="DYNAPS_OPERATOR_WORKERS='many' is not a valid int"):
        OperatorSettings.from_env({"DYNAPS_OPERATOR_WORKERS": "many"})
    with pytest.raises(OperatorConfigError, match="LOG_LEVEL"):
        OperatorSettings(log_level="LOUD")
    privileged = "DYNAPS_OPERATOR_ALLOW_PRIVILEGED_JOBS"
    assert OperatorSettings.from_env({privileged: " Yes"}).allow_privileged_jobs
    assert not OperatorSettings.from_env({privileged: "false"}).allow_privileged_jobs
    # a typo of "true" was read as false, quietly
    with pytest.raises(OperatorConfigError, match=f"{privileged}='ture' is not a valid bool"):
        OperatorSettings.from_env({privileged: "ture"})
    assert "DYNAPS_OPERATOR_RESYNC_SECONDS" in describe()


def test_work_queue_coalesces_delays_and_never_hands_out_a_key_twice() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue()
        order: list[str] = []
        queue.add("a", 0.05)
        queue.add("a")  # the earlier time wins; still one entry
        queue.add("b", 0.02)
        assert len(queue) == 2
        first = await queue.get()
        order.append(first)
        queue.add(first)  # re-added while processing: comes back after done()
        second = await queue.get()
        order.append(second)
        getter = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0.05)
        assert not getter.done()  # "a" is still being processed
        queue.done(first)
        order.append(await asyncio.wait_for(getter, 1))
        queue.close()
        with pytest.raises(QueueClosedError):
            await queue.get()
        return order

    assert asyncio.run(scenario()) == ["a", "b", "a"]


def test_help_lists_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "ParameterServerJob" in out
    assert "DYNAPS_OPERATOR_NAMESPACES" in out
    assert "dynaps-operator crd | kubectl apply -f -" in out


def test_crd_command_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    assert "kind: CustomResourceDefinition" in capsys.readouterr().out
