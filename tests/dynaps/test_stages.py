"""Stages (``spec.stages``): validation, the coordinator's decisions, and whole jobs under
``dynaps run`` whose worker count changes from stage to stage without a restart."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from pydantic import ValidationError

from dynaps.contract import ParameterServerJob, StageSpec, describe_validation_error
from dynaps.coordinator.stages import Stages

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "stages.yaml"


def manifest(stages: list[dict[str, object]], **workers: object) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["stages"] = stages
    doc["spec"]["workers"].update(workers)
    return doc


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("stages", "workers", "message"),
    [
        ([{"name": "a", "workers": 2}], {}, "needs exactly one of epochs or steps"),
        ([{"name": "a", "epochs": 1, "steps": 2, "workers": 2}], {}, "needs exactly one of epochs or steps"),
        (
            [{"name": "a", "epochs": 1, "workers": 2}, {"name": "a", "steps": 1, "workers": 1}],
            {},
            "stages[1].name: stage 'a' is declared twice",
        ),
        (
            [{"name": "a", "epochs": 1, "workers": 2}, {"name": "b", "epochs": 1, "workers": 5}],
            {"maxReplicas": 4},
            "stages[1].workers (5) is above workers.maxReplicas (4)",
        ),
        (
            [{"name": "a", "epochs": 1, "workers": 1}],
            {"minReplicas": 2, "replicas": 2},
            "below workers.minReplicas",
        ),
        ([{"name": "9a", "epochs": 1, "workers": 1}], {}, "must start with a letter"),
    ],
)
def test_invalid_stages_are_refused_naming_the_field(
    stages: list[dict[str, object]], workers: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        ParameterServerJob.model_validate(manifest(stages, **workers))
    described = describe_validation_error(caught.value)
    assert "spec.stages" in described
    assert message in described


def test_dynaps_validate_names_the_stage_field(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest([{"name": "a", "epochs": 1, "workers": 9}], maxReplicas=4)))
    done = subprocess.run(
        [sys.executable, "-m", "dynaps", "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "spec.stages: stages[0].workers (9) is above workers.maxReplicas (4)" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_job_starts_with_the_first_stage_workers() -> None:
    from dynaps.contract import runtime_config

    job = ParameterServerJob.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    config = runtime_config(job, coordinator="c:1")
    assert config.workers == 4
    assert [s.workers for s in config.stages] == [4, 2, 1]


# ------------------------------------------------------------------------------ decisions

A, B = 1001, 1002  # client endpoints
NODES = {A: 1, B: 2}


def stages(*specs: tuple[str, int, int]) -> Stages:
    return Stages([StageSpec(name=n, epochs=e, workers=w) for n, e, w in specs])


def test_a_unit_completes_when_every_staying_worker_reported_it() -> None:
    s = stages(("one", 2, 2))
    s.reach(A, None)
    assert s.release({A: 1}, set()) == []  # the stage gathers its two workers: one is attached
    s.reach(B, None)
    answers = s.release(NODES, set())
    assert [(c, a.done, a.index, a.leave) for c, a in answers] == [(A, 0, 0, False), (B, 0, 0, False)]
    s.reach(A, 1)
    assert not s.complete({A, B})
    assert s.release(NODES, set()) == []  # B is still in unit 0
    s.reach(B, 1)
    s.complete({A, B})
    assert s.done == 1
    assert [a.done for _, a in s.release(NODES, set())] == [1, 1]
    s.reach(A, 2)
    s.reach(B, 2)
    s.complete({A, B})
    assert s.finished
    assert [a.index for _, a in s.release(NODES, set())] == [1, 1]  # past the last stage: the end
    assert s.status()["progress"] == "2/2 epochs"
    assert s.status()["finished"] is True


def test_a_new_stage_with_fewer_workers_tells_the_surplus_to_leave() -> None:
    s = stages(("wide", 1, 2), ("narrow", 1, 1))
    for client in (A, B):
        s.reach(client, None)
    s.release(NODES, set())
    s.reach(A, 1)
    s.reach(B, 1)
    assert s.complete({A, B})  # a new stage began: the coordinator applies its count
    assert s.current() == StageSpec(name="narrow", epochs=1, workers=1)
    s.leaving.add(NODES[B])
    answers = dict(s.release(NODES, set()))
    assert answers[B].leave
    assert not answers[A].leave
    assert answers[A].index == 1
    # the next unit counts A alone
    s.reach(A, 2)
    s.complete({A})
    assert s.finished


def test_a_stage_with_more_workers_waits_for_them() -> None:
    s = stages(("narrow", 1, 1), ("wide", 1, 2))
    s.reach(A, None)
    s.release({A: 1}, set())
    s.reach(A, 1)
    assert s.complete({A})
    assert s.release({A: 1}, set()) == []  # the gate: one worker of two
    s.reach(B, None)  # the newcomer starts where the job is
    answers = s.release(NODES, set())
    assert [(c, a.done, a.index) for c, a in answers] == [(A, 1, 1), (B, 1, 1)]


def test_a_drained_worker_waiting_for_its_unit_is_told_to_leave() -> None:
    s = stages(("one", 3, 2))
    for client in (A, B):
        s.reach(client, None)
    s.release(NODES, set())
    s.reach(B, 1)
    answers = s.release(NODES, draining={NODES[B]})
    assert [(c, a.leave) for c, a in answers] == [(B, True)]
    s.reach(A, 1)
    s.complete({A})  # the unit completes without the drained worker
    assert s.done == 1


def test_a_restarted_coordinator_learns_the_progress_from_the_reports() -> None:
    s = stages(("a", 2, 2), ("b", 3, 2))
    s.reach(A, 4)  # A completed four units: the first three were complete everywhere
    assert s.done == 3
    assert s.index() == 1
    s.reach(B, 4)
    s.complete({A, B})
    assert s.done == 4


# ------------------------------------------------------------------------------ whole jobs


def watch_processes(run: subprocess.Popen[str], seen: dict[str, set[int]]) -> None:
    """Record the pid of every process ``dynaps run`` started, by node name."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(run.pid).children():
            with contextlib.suppress(psutil.Error):
                name = child.environ().get("DYNAPS_NODE_NAME") or (
                    "coordinator" if "coordinator" in child.cmdline() else ""
                )
                if name:
                    seen[name].add(child.pid)


def run_staged(path: Path, record: Path, timeout: float = 240) -> tuple[str, str, dict[str, set[int]]]:
    command = [sys.executable, "-m", "dynaps", "run", str(path), "--"]
    command += ["python", "-m", "dynaps.apps.stages", "--shards", "8", "--record", str(record)]
    seen: dict[str, set[int]] = defaultdict(set)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        deadline = time.monotonic() + timeout
        try:
            while run.poll() is None:
                assert time.monotonic() < deadline, "the staged job did not end in time"
                watch_processes(run, seen)
                time.sleep(0.05)  # sampling the process table, not waiting for an outcome
            out, err = run.communicate(timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert run.returncode == 0, err
    return out, err, seen


def units_by_rank(record: Path) -> tuple[dict[int, set[int]], dict[int, set[int]], dict[int, str]]:
    """Per unit, the ranks that ran it; per rank, its program's pids; per unit, its stage."""
    ranks: dict[int, set[int]] = defaultdict(set)
    pids: dict[int, set[int]] = defaultdict(set)
    stage: dict[int, str] = {}
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        ranks[entry["unit"]].add(entry["rank"])
        pids[entry["rank"]].add(entry["pid"])
        stage[entry["unit"]] = entry["stage"]
    return ranks, pids, stage


@pytest.mark.integration
def test_dynaps_run_shrinks_four_two_one_without_restarting_anything(tmp_path: Path) -> None:
    record = tmp_path / "units.jsonl"
    out, err, seen = run_staged(EXAMPLE, record)
    # the exact result: every unit's workers, every shard once, the model's sum (rank 0 checks)
    assert "[stages] exact: 7 units with workers [4, 4, 2, 2, 1, 1, 1]" in out, out + err
    ranks, pids, stage = units_by_rank(record)
    assert [sorted(ranks[u]) for u in range(7)] == [[0, 1, 2, 3]] * 2 + [[0, 1]] * 2 + [[0]] * 3
    assert [stage[u] for u in range(7)] == ["wide", "wide", "narrow", "narrow", "single", "single", "single"]
    assert all(len(p) == 1 for p in pids.values()), pids  # one program per rank, never restarted
    # no process was restarted or added: one coordinator, one server, the four first workers
    assert sorted(seen) == ["coordinator", "server-0", "worker-0", "worker-1", "worker-2", "worker-3"]
    assert all(len(p) == 1 for p in seen.values()), seen
    assert "starting it again" not in err
    # dynaps run's progress shows the stage (a line per phase change and every few seconds:
    # a short stage may fall between two lines, the last one shows where the job ended)
    assert "stage 1/3 'wide'" in err, err
    assert "stage 3/3 'single': 3/3 steps" in err, err


@pytest.mark.integration
def test_dynaps_run_grows_a_stage_with_new_workers(tmp_path: Path) -> None:
    path = tmp_path / "grow.yaml"
    stages_ = [
        {"name": "pair", "epochs": 1, "workers": 2},
        {"name": "alone", "epochs": 1, "workers": 1},
        {"name": "trio", "epochs": 2, "workers": 3},
    ]
    path.write_text(yaml.safe_dump(manifest(stages_)))
    record = tmp_path / "units.jsonl"
    out, err, seen = run_staged(path, record)
    assert "[stages] exact: 4 units with workers [2, 1, 3, 3]" in out, out + err
    ranks, pids, _ = units_by_rank(record)
    assert [sorted(ranks[u]) for u in range(4)] == [[0, 1], [0], [0, 1, 2], [0, 1, 2]]
    # rank 1 is taken again by a newcomer (the lowest free rank): four programs in all
    assert {rank: len(p) for rank, p in pids.items()} == {0: 1, 1: 2, 2: 1}, pids
    assert len(set().union(*pids.values())) == 4, pids
    # worker-1 left after "pair"; two new workers joined for "trio", nothing was restarted
    assert sorted(seen) == ["coordinator", "server-0", "worker-0", "worker-1", "worker-2", "worker-3"]
    assert all(len(p) == 1 for p in seen.values()), seen
    assert "the job wants 3 workers: starting worker-2" in err
