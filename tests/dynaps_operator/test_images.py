"""The images' install steps work: the Dockerfiles' `python -m pip` steps, run in clean virtual
environments (no Docker engine here), give working `dynaps` and `dynaps-operator` commands.

Slow (it builds every wheel the images hold, from the package index), so it runs with the e2e
suite. The build stage's COPY list is honoured: only what the Dockerfile copies is in its /src.
In `make test`, the two install tests skip when the run's container tests all ran and passed:
they ran the real images built from these Dockerfiles, and made the checks below that nothing
else makes (tests/containers/proof.py, test_image_contents.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.containers import proof

REPO = Path(__file__).resolve().parents[2]


def stages(dockerfile: Path) -> list[tuple[list[str], list[str]]]:
    """(COPY sources, pip commands) of each stage, in order."""
    result: list[tuple[list[str], list[str]]] = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("FROM "):
            result.append(([], []))
        elif line.startswith("COPY ") and "--from" not in line:
            result[-1][0].extend(line.split()[1:-1])
        elif line.startswith("RUN python -m pip "):
            result[-1][1].append(line.removeprefix("RUN "))
    return result


def run_stage(commands: list[str], env_dir: Path, paths: dict[str, Path]) -> None:
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    for step in commands:
        command = step
        for image_path, local in paths.items():
            command = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?=[/\[\"\s]|$)", str(local), command)
        command = command.replace("python -m pip", f"{python} -m pip", 1)
        done = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))},
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def skip_if_the_container_tests_ran_the_images() -> None:
    proven = proof.proven()
    if proven:
        pytest.skip(proven)


def build(dockerfile: Path, tmp: Path) -> Path:
    (copies, build_steps), (_, install_steps) = stages(dockerfile)
    src = tmp / "src"
    src.mkdir()
    for name in copies:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / name)
    paths = {"/src": src, "/wheels": tmp / "wheels"}
    run_stage(build_steps, tmp / "build-env", paths)
    final = tmp / "image-env"
    run_stage(install_steps, final, paths)
    return final / "bin"


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_runtime_image_install_gives_a_working_dynaps(tmp_path: Path) -> None:
    skip_if_the_container_tests_ran_the_images()
    bin_dir = build(REPO / "docker" / "runtime.Dockerfile", tmp_path)
    helped = run(bin_dir / "dynaps", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "coordinator" in helped.stdout
    validated = run(bin_dir / "dynaps", "validate", str(REPO / "examples" / "quickstart.yaml"))
    assert validated.returncode == 0, validated.stderr
    imports = run(bin_dir / "python", "-c", "import numpy, zmq, dynaps.client.ps, dynaps.apps.quickstart")
    assert imports.returncode == 0, imports.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_operator_image_install_gives_a_working_operator_without_the_data_plane(tmp_path: Path) -> None:
    skip_if_the_container_tests_ran_the_images()
    bin_dir = build(REPO / "docker" / "operator.Dockerfile", tmp_path)
    helped = run(bin_dir / "dynaps-operator", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "DYNAPS_OPERATOR_NAMESPACES" in helped.stdout
    crd = run(bin_dir / "dynaps-operator", "crd")
    assert crd.returncode == 0, crd.stderr
    assert crd.stdout == (REPO / "crds" / "dynaps.io_parameterserverjobs.yaml").read_text()
    # The operator image holds no numpy and no ZeroMQ, and the operator does not need them.
    absent = run(
        bin_dir / "python",
        "-c",
        "import importlib.util as u; print(u.find_spec('numpy'), u.find_spec('zmq'))",
    )
    assert absent.stdout.strip() == "None None", absent.stdout
    loaded = run(bin_dir / "python", "-c", "import dynaps_operator.runner, dynaps_operator.crdgen")
    assert loaded.returncode == 0, loaded.stderr


def test_dockerfiles_run_as_non_root_from_a_pinned_base() -> None:
    for name in ("runtime", "operator"):
        text = (REPO / "docker" / f"{name}.Dockerfile").read_text()
        base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
        assert base is not None
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1)), (
            base.group(1)
        )
        assert text.count("FROM ${PYTHON_IMAGE}") == 2  # multi-stage
        assert "\nUSER 10001:10001\n" in text
        assert stages(REPO / "docker" / f"{name}.Dockerfile")[1][1], "the final stage installs the wheels"
    assert sys.version_info[:2] == (3, 11)  # the images' Python; tests run on the same minor version
