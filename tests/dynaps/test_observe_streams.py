"""dynaps logs's merging of pod logs, and the run file of dynaps status --local.

`kubectl logs` needs a kubelet that serves logs, which the test control plane's process kubelet
does not (tests/containers runs the real one); here a stand-in kubectl prints each pod's log
in pieces, the way a log arrives over a network, to test what dynaps does with the streams.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from dynaps.errors import ConfigError
from dynaps.observe import podlogs, runfile, streams
from tests.dynaps.test_status_local import dynaps as run_dynaps

FAKE_KUBECTL = """\
import json, sys, time
args = [a for a in sys.argv[1:] if not a.startswith(("--namespace=", "--context=", "--kubeconfig="))]
with open(__file__ + ".calls", "a") as calls:
    calls.write(json.dumps(sys.argv[1:]) + "\\n")
if args[:2] == ["get", "parameterserverjobs.dynaps.io"]:
    if args[2] == "unreachable":  # what kubectl says with no API server at its address
        for _ in range(3):
            print('E1207 08:56:11.453051   32291 memcache.go:265] "Unhandled Error" err="could not get '
                  'the server API group list"', file=sys.stderr)
        sys.exit(print("The connection to the server localhost:8080 was refused - did you specify "
                       "the right host or port?", file=sys.stderr) or 1)
    if args[2] == "missing":
        sys.exit(print('Error from server (NotFound): parameterserverjobs.dynaps.io "missing" not found',
                       file=sys.stderr) or 1)
    print(json.dumps({"metadata": {"name": args[2]}}))
elif args[:2] == ["get", "pods"]:
    pods = [("mf-worker-1", "worker"), ("mf-coordinator", "coordinator"), ("mf-server-0", "server"),
            ("mf-worker-0", "worker")]
    items = [{"metadata": {"name": n, "labels": {"dynaps.io/role": r}}} for n, r in pods]
    print(json.dumps({"items": items}))
elif args[0] == "logs":
    pod, follow = args[1], "--follow" in args
    if pod == "mf-worker-1" and not follow:
        sys.exit(print("container dynaps is waiting to start", file=sys.stderr) or 1)
    i = 0
    while i < 3 or follow:
        for piece in ("line ", str(i), " of ", pod, "\\n"):
            sys.stdout.write(piece)
            sys.stdout.flush()
            time.sleep(0.002)
        i += 1
"""


@pytest.fixture
def kubectl_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "kubectl"
    script.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    script.chmod(0o755)
    return folder


def dynaps(kubectl_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_dynaps({**os.environ, "PATH": f"{kubectl_dir}{os.pathsep}{os.environ['PATH']}"}, *args)


def test_status_without_a_reachable_cluster_says_kubectls_message_without_its_log_lines(
    kubectl_dir: Path,
) -> None:
    done = dynaps(kubectl_dir, "status", "unreachable")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "dynaps: error: kubectl get: The connection to the server localhost:8080 was refused - "
        "did you specify the right host or port?"
    ]


def lines_of(pod: str, count: int = 3) -> list[str]:
    return [f"[{pod}] line {i} of mf-{pod}" for i in range(count)]


def test_logs_print_each_pod_in_turn_prefixed_by_its_role(kubectl_dir: Path) -> None:
    done = dynaps(kubectl_dir, "logs", "mf", "-n", "team-a", "--tail", "5")
    assert done.stdout.splitlines() == lines_of("coordinator") + lines_of("server-0") + lines_of("worker-0")
    # a pod whose log cannot be read is said, prefixed, and makes the exit code 1
    assert "[worker-1] container dynaps is waiting to start" in done.stderr.splitlines()
    assert done.returncode == 1
    calls = [json.loads(line) for line in (kubectl_dir / "kubectl.calls").read_text().splitlines()]
    assert all("--namespace=team-a" in call for call in calls)
    assert ["--namespace=team-a", "logs", "mf-server-0", "--tail=5"] in calls


def test_logs_of_one_role(kubectl_dir: Path) -> None:
    done = dynaps(kubectl_dir, "logs", "mf", "--role", "server")
    assert (done.returncode, done.stdout.splitlines()) == (0, lines_of("server-0"))


def test_logs_of_a_job_that_does_not_exist_or_without_kubectl(kubectl_dir: Path, tmp_path: Path) -> None:
    done = dynaps(kubectl_dir, "logs", "missing", "-n", "team-a")
    assert done.returncode == 2
    assert done.stderr == "dynaps: error: no ParameterServerJob 'missing' in namespace team-a\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    done = subprocess.run(
        [sys.executable, "-m", "dynaps", "status", "mf"], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 2
    assert "kubectl is not on PATH" in done.stderr
    assert "Traceback" not in done.stderr


def _interruptible() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and a
    # Python that starts so keeps ignoring it (as it should): Ctrl-C is what is tested here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_follow_merges_every_pod_line_by_line_until_stopped(kubectl_dir: Path, stop: signal.Signals) -> None:
    env = {**os.environ, "PATH": f"{kubectl_dir}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "dynaps", "logs", "mf", "--follow"]
    env["PYTHONFAULTHANDLER"] = "1"  # a SIGABRT prints every thread's stack (see below)
    run = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_interruptible,  # noqa: PLW1509 - a signal disposition only, before exec
    )
    followers: list[psutil.Process] = []
    try:
        assert run.stdout is not None
        seen: list[str] = []
        while len(seen) < 200:
            seen.append(run.stdout.readline().rstrip("\n"))
        followers = psutil.Process(run.pid).children()
        assert len(followers) == 4  # one kubectl logs -f per pod
        run.send_signal(stop)
        try:
            rest, errors = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            run.send_signal(signal.SIGABRT)
            _, stacks = run.communicate(timeout=30)
            pytest.fail(
                f"dynaps logs --follow still ran 60 s after {stop.name}; its threads:\n{stacks[-4000:]}"
            )
    finally:
        # whatever happened, nothing this test started outlives it (by pid)
        for proc in followers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, errors
    psutil.wait_procs(followers, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in followers)
    pods = ("coordinator", "server-0", "worker-0", "worker-1")
    after: dict[str, list[str]] = {}
    for line in rest.splitlines():
        after.setdefault(line.partition("]")[0], []).append(line)
    # each pod's last line may be cut where Ctrl-C stopped its kubectl; every other is whole
    for line in [*seen, *(line for lines in after.values() for line in lines[:-1])]:
        prefix, _, text = line.partition("] ")
        pod = prefix.removeprefix("[")
        assert pod in pods, line
        assert text.startswith("line "), line
        assert text.endswith(f" of mf-{pod}"), line  # no piece of another pod's line
    assert {line.partition("]")[0] for line in seen} == {f"[{pod}" for pod in pods}  # all four merged


def test_job_pods_are_ordered_and_named_without_the_job() -> None:
    items = [
        {"metadata": {"name": f"big-worker-{i}", "labels": {"dynaps.io/role": "worker"}}} for i in (10, 2)
    ] + [{"metadata": {"name": "big-coordinator", "labels": {"dynaps.io/role": "coordinator"}}}, {"bad": 1}]
    pods = podlogs.job_pods(items, "big")
    assert [p.label for p in pods] == ["coordinator", "worker-2", "worker-10"]
    assert [p.label for p in podlogs.job_pods(items, "big", ["worker"])] == ["worker-2", "worker-10"]


def test_lines_written_in_pieces_by_many_writers_come_out_whole() -> None:
    out = io.BytesIO()
    output = streams.Output(out)
    merger = streams.Merger()
    writers = []
    for name in ("a", "b", "c"):
        read, write = os.pipe()
        merger.add(os.fdopen(read, "rb"), f"[{name}] ", output)

        def write_pieces(fd: int = write, name: str = name) -> None:
            with os.fdopen(fd, "wb", buffering=0) as pipe:
                for i in range(50):
                    for piece in (b"line ", str(i).encode(), b" from ", name.encode(), b"\n"):
                        pipe.write(piece)
                pipe.write(b"last without newline")

        writers.append(threading.Thread(target=write_pieces))
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert merger.join(10)
    lines = out.getvalue().decode().splitlines()
    for name in ("a", "b", "c"):
        mine = [line for line in lines if line.startswith(f"[{name}] ")]
        assert mine == [f"[{name}] line {i} from {name}" for i in range(50)] + [
            f"[{name}] last without newline"
        ]
    assert len(lines) == 153


def test_a_line_longer_than_the_bound_goes_out_in_prefixed_pieces() -> None:
    out = io.BytesIO()
    streams.copy_lines(io.BytesIO(b"x" * (streams.MAX_LINE + 10) + b"\nok\n"), b"[p] ", streams.Output(out))
    assert out.getvalue().split(b"\n") == [
        b"[p] " + b"x" * streams.MAX_LINE,
        b"[p] " + b"x" * 10,
        b"[p] ok",
        b"",
    ]


def test_the_run_file_is_private_found_by_job_and_forgotten_when_its_run_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runfile.RUN_DIR_ENV, str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="no local dynaps run of job 'probe' found"):
        runfile.find("probe")
    path = runfile.write("probe", "http://127.0.0.1:1234", "secret-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    found = runfile.find("probe")
    assert (found.address, found.token, found.pid) == ("http://127.0.0.1:1234", "secret-token", os.getpid())
    assert runfile.find(None).path == path  # the only run: no need to name it
    assert runfile.find(None, address="http://127.0.0.1:1234").path == path
    with pytest.raises(ConfigError, match=r"no local dynaps run of job 'other' found .* \(running: probe\)"):
        runfile.find("other")
    # a run that was killed left its file: its process is gone, so the file is too
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    stale = path.with_name(f"probe.{int(dead.stdout)}.json")
    stale.write_text(
        json.dumps({"job": "probe", "address": "http://x", "token": "t", "pid": int(dead.stdout)})
    )
    assert runfile.find("probe").path == path
    assert not stale.exists()
    # two live runs of one job: the user must choose
    twin = path.with_name(f"probe.{os.getppid()}.json")
    twin.write_text(json.dumps({"job": "probe", "address": "http://y", "token": "t", "pid": os.getppid()}))
    with pytest.raises(ConfigError, match="several local runs of job 'probe'"):
        runfile.find("probe")
    runfile.remove(path)
    runfile.remove(path)  # twice is fine
    assert runfile.find("probe").address == "http://y"


def test_status_arguments_that_do_not_go_together_are_explained(kubectl_dir: Path, tmp_path: Path) -> None:
    done = dynaps(
        kubectl_dir, "status", "--address", "http://127.0.0.1:1", "--token", "a", "--token-file", "b"
    )
    assert (done.returncode, done.stderr) == (2, "dynaps: error: give --token or --token-file, not both\n")
    done = dynaps(kubectl_dir, "status", "--local", "-n", "team-a")
    assert "are for Kubernetes jobs" in done.stderr
    done = dynaps(kubectl_dir, "status")
    assert "name the JOB" in done.stderr
    done = dynaps(
        kubectl_dir, "status", "--address", "http://127.0.0.1:1", "--token-file", str(tmp_path / "none")
    )
    assert "cannot read --token-file" in done.stderr
    done = dynaps(kubectl_dir, "status", "--watch", "--interval", "0", "mf")
    assert done.returncode == 2
    assert "between 0.1 and 3600 seconds" in done.stderr
    start = time.monotonic()
    done = dynaps(kubectl_dir, "status", "--address", "127.0.0.1:1", "--token", "t")
    assert (done.returncode, done.stderr) == (
        2,
        "dynaps: error: no coordinator listens at http://127.0.0.1:1\n",
    )
    assert time.monotonic() - start < 30
