"""dynaps status on a real local run: `dynaps run` in a process, its coordinator over HTTP with
the job's token, found through the run file or given by address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynaps.errors import ConfigError
from dynaps.observe import runfile
from tests.dynaps.test_cli import wait_until

pytestmark = pytest.mark.integration

PROGRAM = """\
import sys, time, pathlib, numpy as np, dynaps
ps = dynaps.connect()
W = ps.table("W")
stop = pathlib.Path(sys.argv[1]) / "stop"
steps = 0
while not stop.exists():
    W.push(np.arange(10), np.ones((10, 2)))
    steps += 1
    if ps.rank == 0:
        ps.report(steps=float(steps), epoch=1.0, epochs=4.0)
    time.sleep(0.02)
"""


def dynaps(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynaps", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture
def local_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """A two-server, two-worker `dynaps run` of job "probe" whose workers push until DIR/stop."""
    (tmp_path / "train.py").write_text(PROGRAM)
    (tmp_path / "job.yaml").write_text(
        "apiVersion: dynaps.io/v1alpha1\nkind: ParameterServerJob\nmetadata: {name: probe}\nspec:\n"
        "  tables: [{name: W, numKeys: 100, dim: 2}]\n  servers: {replicas: 2}\n"
        f"  workers: {{replicas: 2, command: [python, {tmp_path / 'train.py'}, {tmp_path}]}}\n"
    )
    monkeypatch.setenv(runfile.RUN_DIR_ENV, str(tmp_path / "runs"))
    env = dict(os.environ)
    command = [sys.executable, "-m", "dynaps", "run", str(tmp_path / "job.yaml")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as run:
        try:
            yield run, env
        finally:
            (tmp_path / "stop").touch()
            try:
                run.communicate(timeout=60)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.communicate()


def status_json(env: dict[str, str], *args: str) -> dict[str, object]:
    done = dynaps(env, "status", *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def test_status_of_a_local_run_by_name_by_address_and_watched(
    local_run: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    run, env = local_run

    def reporting() -> bool:
        try:
            runfile.find("probe")
        except ConfigError:
            return False
        doc = status_json(env, "--local", "probe")
        return doc["phase"] == "running" and "steps" in doc["metrics"]  # type: ignore[operator]

    wait_until(reporting, 60, "the run to report its steps")
    record = runfile.find("probe")
    assert record.pid == run.pid

    done = dynaps(env, "status", "--local")  # the only local run: no name needed
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"Job probe ({record.address})  phase running  running for ")
    assert "  servers: 2/2 ready" in lines
    assert "  workers: 2/2 ready" in lines
    servers = [line.split() for line in lines if line.startswith("    server-")]
    assert [s[:3] for s in servers] == [["server-0", "server", "ready,"], ["server-1", "server", "ready,"]]
    assert sum(int(s[3]) for s in servers) == 1024  # every shard has a home
    workers = [line for line in lines if line.startswith("    worker-")]
    assert len(workers) == 2
    assert all("program attached" in line for line in workers)
    assert any(line.startswith("Shards: 1024 on 2 servers") for line in lines)
    assert f"Progress: epoch 1 of 4 [{'#' * 8}{'.' * 22}] 25 %" in lines
    assert "Data loss: none" in lines

    # by address: with the token in a file, or found in the run file; a wrong token is refused
    token_file = tmp_path / "token"
    token_file.write_text(record.token + "\n")
    assert status_json(env, "--address", record.address, "--token-file", str(token_file))["job"] == "probe"
    assert status_json(env, "--address", record.address.removeprefix("http://"))["job"] == "probe"
    done = dynaps(env, "status", "--address", record.address, "--token", "0" * 64)
    assert done.returncode == 2
    assert "refused the token" in done.stderr

    # watched: the counters' growth between reads is the throughput; the run's end ends the watch
    command = [sys.executable, "-m", "dynaps", "status", "--local", "probe", "--watch", "--interval", "0.3"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as watch:
        assert watch.stdout is not None
        deadline = time.monotonic() + 30
        line = ""
        while not line.startswith("Throughput: steps/s "):
            assert time.monotonic() < deadline, "no throughput in the watch"
            line = watch.stdout.readline()
        assert float(line.split()[2].rstrip(",")) > 0
        (tmp_path / "stop").touch()
        rest, errors = watch.communicate(timeout=60)
    assert watch.returncode == 0, errors
    assert rest.rstrip().endswith(f"no coordinator listens at {record.address}: the run ended")
    assert run.wait(60) == 0
    assert not record.path.exists()  # the run removed its file
