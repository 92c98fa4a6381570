"""The dynaps command: runs, validation, help and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    program = tmp_path / "train.py"
    program.write_text(
        "import numpy as np, dynaps\n"
        "ps = dynaps.connect()\n"
        "W = ps.table('W')\n"
        "W.push(np.arange(10), np.ones((10, 2)))\n"
        "ps.barrier()\n"
        "ps.report(total=float(W.pull(np.arange(10)).sum()))\n"
        "print('rank', ps.rank, 'sum', W.pull(np.arange(10)).sum())\n"
    )
    done = dynaps(
        "run", "--servers", "1", "--workers", "2", "--table", "W:100:2", "--", "python", str(program)
    )
    assert done.returncode == 0, done.stderr
    assert "sum 40.0" in done.stdout
    assert "job succeeded" in done.stderr


@pytest.mark.integration
def test_a_failing_program_fails_the_job() -> None:
    done = dynaps(
        "run", "--workers", "2", "--table", "W:10:2", "--", "python", "-c", "import sys; sys.exit(3)"
    )
    assert done.returncode == 3
    assert "failed (exit code 3)" in done.stderr


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
