"""The dynaps command: runs, validation, help and clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def dynaps(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynaps", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_help_explains_the_commands() -> None:
    done = dynaps("--help")
    assert done.returncode == 0
    for word in ("run", "validate", "coordinator", "server", "worker", "examples:"):
        assert word in done.stdout
    run_help = dynaps("run", "--help")
    assert "--table NAME:KEYS:DIM" in run_help.stdout
    assert "Exits with the job's status" in run_help.stdout


@pytest.mark.integration
def test_run_a_program_on_a_local_cluster(tmp_path: Path) -> None:
    """Each worker's output comes out prefixed by its name, every line whole: both workers print
    a line in pieces (print() writes its parts apart under PYTHONUNBUFFERED, and a pause splits
    the rest), so lines copied as they come would interleave mid-line."""
    program = tmp_path / "train.py"
    program.write_text(
        "import sys, time, numpy as np, dynaps\n"
        "ps = dynaps.connect()\n"
        "W = ps.table('W')\n"
        "W.push(np.arange(10), np.ones((10, 2)))\n"
        "ps.barrier()\n"
        "ps.report(total=float(W.pull(np.arange(10)).sum()))\n"
        "sys.stdout.write('rank '); sys.stdout.flush(); time.sleep(0.2)\n"
        "print(ps.rank, 'sum', W.pull(np.arange(10)).sum())\n"
        "print('note from', ps.rank, file=sys.stderr)\n"
    )
    done = dynaps(
        "run", "--servers", "1", "--workers", "2", "--table", "W:100:2", "--", "python", str(program)
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["[worker-0] rank 0 sum 40.0", "[worker-1] rank 1 sum 40.0"]
    assert {"[worker-0] note from 0", "[worker-1] note from 1"} <= set(done.stderr.splitlines())
    assert "[dynaps] job succeeded" in done.stderr


@pytest.mark.integration
def test_run_gives_the_program_the_manifest_s_env_but_not_what_ties_it_to_the_job(tmp_path: Path) -> None:
    program = tmp_path / "show_env.py"
    program.write_text(
        "import os, dynaps\n"
        "ps = dynaps.connect()\n"
        "names = ('GREETING', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS')\n"
        "print(ps.rank, *(os.environ.get(name, '-') for name in names))\n"
    )
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        "apiVersion: dynaps.io/v1alpha1\nkind: ParameterServerJob\nmetadata: {name: envs}\n"
        "spec:\n  tables: [{name: W, numKeys: 10, dim: 2}]\n  servers: {replicas: 1}\n"
        f"  workers:\n    replicas: 2\n    command: [python, {program}]\n"
        "    env: {GREETING: hello, OMP_NUM_THREADS: '3', DYNAPS_RANK: '7', DYNAPS_SECRET: '00'}\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-m", "dynaps", "run", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environ,
    )
    assert done.returncode == 0, done.stderr
    # the user's OMP_NUM_THREADS chose for every library: no OPENBLAS_NUM_THREADS of ours
    assert sorted(done.stdout.splitlines()) == ["[worker-0] 0 hello 3 -", "[worker-1] 1 hello 3 -"]
    assert "spec.workers.env: DYNAPS_RANK, DYNAPS_SECRET left out: dynaps sets them itself" in done.stderr


@pytest.mark.integration
def test_a_failing_program_fails_the_job() -> None:
    done = dynaps(
        "run", "--workers", "2", "--table", "W:10:2", "--", "python", "-c", "import sys; sys.exit(3)"
    )
    assert done.returncode == 3
    # the last line says why, as the coordinator does: whose program ended how
    assert re.search(
        r"job failed \(exit code 3\) after [0-9.]+ s: worker rank [01] exited with code 3$", done.stderr
    )


def test_a_node_that_cannot_start_fails_the_run_instead_of_hanging_it() -> None:
    """Every node refuses a bad variable at start (exit 2): the coordinator would wait for
    them for ever, and `dynaps run` with it."""
    env = {**os.environ, "DYNAPS_SPIN_MICROS": "many"}
    done = subprocess.run(
        [sys.executable, "-m", "dynaps", "run", "--table", "W:10:2", "--", "python", "-c", "pass"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 2
    assert "DYNAPS_SPIN_MICROS='many' is not an integer" in done.stderr
    assert "ended (exit code 2) before the job started: stopping the job" in done.stderr


@pytest.mark.integration
def test_a_program_that_never_connects_does_not_hang_the_job() -> None:
    done = dynaps("run", "--workers", "2", "--table", "W:10:2", "--", "python", "-c", "pass", timeout=60)
    assert done.returncode == 0, done.stderr


def test_validate_accepts_the_examples() -> None:
    for manifest in sorted((ROOT / "examples").glob("*.yaml")):
        done = dynaps("validate", str(manifest))
        assert done.returncode == 0, f"{manifest}: {done.stderr}"
        assert "valid ParameterServerJob" in done.stdout


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("kind: ParameterServerJob\nmetadata: {name: x}\nspec: {tables: [], workers: {}}\n", "spec.tables"),
        (
            "kind: ParameterServerJob\nmetadata: {name: x}\n"
            "spec: {tables: [{name: W, numKeys: 0, dim: 4}], workers: {}}\n",
            "spec.tables.0.numKeys",
        ),
        (
            "kind: ParameterServerJob\nmetadata: {name: Bad_Name}\n"
            "spec: {tables: [{name: W, numKeys: 5, dim: 4}], workers: {}}\n",
            "metadata.name",
        ),
        (  # pydantic's lax mode read these as 1 and 3
            "kind: ParameterServerJob\nmetadata: {name: x}\n"
            "spec: {tables: [{name: W, numKeys: 5, dim: 4}], workers: {replicas: true}}\n",
            "spec.workers.replicas: a whole number, not True",
        ),
        (
            "kind: ParameterServerJob\nmetadata: {name: x}\n"
            "spec: {tables: [{name: W, numKeys: 5, dim: 4}], workers: {}, runPolicy: {backoffLimit: '3'}}\n",
            "spec.runPolicy.backoffLimit: a whole number, not '3'",
        ),
        (  # likewise 1.0 and 0.05 for the numbers
            "kind: ParameterServerJob\nmetadata: {name: x}\n"
            "spec: {tables: [{name: W, numKeys: 5, dim: 4, updater: {kind: sgd, lr: true}}], workers: {}}\n",
            "spec.tables.0.updater.lr: a number, not True",
        ),
        (
            "kind: ParameterServerJob\nmetadata: {name: x}\n"
            "spec: {tables: [{name: W, numKeys: 5, dim: 4, init: {kind: normal, scale: '0.05'}}],"
            " workers: {}}\n",
            "spec.tables.0.init.scale: a number, not '0.05'",
        ),
        (  # a misspelt field: the one meant, found through the list of tables
            "kind: ParameterServerJob\nmetadata: {name: x}\n"
            "spec: {tables: [{name: W, numKeys: 5, dim: 4, updatr: {kind: sgd}}], workers: {replicaz: 2}}\n",
            "spec.tables.0.updatr: not a field here; did you mean 'updater'?",
        ),
        (
            "kind: ParameterServerJob\nmetadata: {name: x}\n"
            "spec: {tables: [{name: W, numKeys: 5, dim: 4}], workers: {replicaz: 2}}\n",
            "spec.workers.replicaz: not a field here; did you mean 'replicas'?",
        ),
        (  # nothing close: the fields there
            "kind: ParameterServerJob\nmetadata: {name: x}\n"
            "spec: {tables: [{name: W, numKeys: 5, dim: 4}], workers: {}, xyz: 1}\n",
            "spec.xyz: not a field here; the fields: image, tables, allocation,",
        ),
        ("just: [yaml", "not valid YAML"),
        ("kind: Pod\n", "exactly one ParameterServerJob"),
    ],
)
def test_invalid_manifests_get_a_message_naming_the_field(
    tmp_path: Path, manifest: str, message: str
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(manifest)
    done = dynaps("validate", str(path))
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_are_explained() -> None:
    done = dynaps("run", "--table", "W:ten:2", "--", "python", "-c", "pass")
    assert done.returncode == 2
    assert "NUM_KEYS and DIM must be integers" in done.stderr
    done = dynaps("run", "--", "python", "-c", "pass")
    assert "declare at least one table" in done.stderr
    done = dynaps("run", "--table", "W:10:2", "--", "no-such-program-here")
    assert "cannot find the program" in done.stderr
    # a table field out of range: the field and the rule, not pydantic's report with its links
    done = dynaps("run", "--table", "W:0:2", "--", "python", "-c", "pass")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "dynaps run: error: argument --table: --table 'W:0:2': num_keys: Input should be greater than 0"
    )
    # a rule across tables: one line naming the field, not pydantic's report
    done = dynaps("run", "--table", "W:10:2", "--table", "W:20:2", "--", "python", "-c", "pass")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["dynaps: error: tables: table 'W' is declared twice"]
    # a log level is checked before any process starts (it was the coordinator's own failure)
    done = dynaps("run", "--log-level", "loud", "--table", "W:10:2", "--", "python", "-c", "pass")
    assert done.returncode == 2
    assert "argument --log-level: 'loud' is not a logging level" in done.stderr
    assert "[coordinator]" not in done.stderr


def _node_process(run: psutil.Process, name: str) -> psutil.Process | None:
    """The node process ``dynaps run`` started as ``name`` (its own children excluded)."""
    for child in run.children():
        with contextlib.suppress(psutil.Error):
            if child.environ().get("DYNAPS_NODE_NAME") == name:
                return child
    return None


@pytest.mark.integration
def test_run_replaces_a_killed_worker_and_its_rank_finishes_the_work(tmp_path: Path) -> None:
    """A worker node killed mid-job (its program with it, as a pod's containers die together)
    is started again; its replacement takes its rank, and the job succeeds with every
    acknowledged increment in the table (at most one applied but not yet counted)."""
    program = ROOT / "tests" / "dynaps_operator" / "counter_program.py"
    command = [sys.executable, "-m", "dynaps", "run", "--servers", "2", "--workers", "2"]
    command += ["--table", "counts:100:1", "--", "python", str(program), str(tmp_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        try:
            wait_until(lambda: pushes(tmp_path, 1) > 0, 60, "worker 1 to push")
            victim = _node_process(psutil.Process(run.pid), "worker-1")
            assert victim is not None
            family = [victim, *victim.children(recursive=True)]
            for proc in family:
                proc.kill()
            psutil.wait_procs(family, timeout=10)
            before = pushes(tmp_path, 1)
            wait_until(lambda: pushes(tmp_path, 1) > before + 5, 60, "the replacement to push")
            (tmp_path / "stop").touch()
            _, stderr = run.communicate(timeout=90)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
    assert run.returncode == 0, stderr
    assert "worker-1 killed by SIGKILL: starting it again" in stderr
    acked = sum(int((tmp_path / f"acked-{rank}").read_text()) for rank in range(2))
    table = json.loads((tmp_path / "table").read_text())
    assert acked <= table["min"] <= table["max"] <= acked + 1, (table, acked)


def pushes(folder: Path, rank: int) -> int:
    """What counter_program.py recorded for ``rank`` so far."""
    progress = folder / f"progress-{rank}"
    return int(progress.read_text() or 0) if progress.exists() else 0


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)
