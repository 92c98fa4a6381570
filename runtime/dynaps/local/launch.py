"""Starting and stopping a job's processes on this machine (LocalCluster and ``dynaps run``).

Each role runs as ``python -m dynaps <role>`` with the job's RuntimeConfig in
``DYNAPS_CONFIG``: the same entry points a pod runs, so a local run exercises the code
that runs on Kubernetes.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence

from dynaps.config import ATTACH_ENV, ATTACH_TOKEN_ENV, LAUNCHER_PID_ENV
from dynaps.contract import CONFIG_ENV, CONFIG_FILE_ENV, RuntimeConfig, thread_env
from dynaps.errors import ClusterError

ANNOUNCE_PREFIX = "DYNAPS_COORDINATOR_READY "

Process = subprocess.Popen[bytes]


def cpus() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def training_threads(config: RuntimeConfig, workers: int | None = None) -> int:
    """Numeric-library threads for each training process of a job on this machine: its
    share of the CPUs (the servers and the coordinator do no matrix products: one each).
    ``workers``: how many the job has when this one starts (a later stage's, a scale's),
    else the configuration's."""
    return max(1, cpus() // (workers or config.workers))


def _env(config: RuntimeConfig, extra: dict[str, str] | None = None, threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.update(thread_env(threads, {**os.environ, **(extra or {})}))
    env.pop(CONFIG_FILE_ENV, None)
    env.pop(ATTACH_ENV, None)
    env.pop(ATTACH_TOKEN_ENV, None)
    env[CONFIG_ENV] = config.to_json()
    env[LAUNCHER_PID_ENV] = str(os.getpid())  # the child stops if we vanish (dynaps.launcher_watch)
    env.update(extra or {})
    return env


def start_coordinator(
    config: RuntimeConfig,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60.0,
    stderr: int | None = None,
) -> tuple[Process, str, int]:
    """Start the coordinator; returns it, its data-plane ``host:port`` and its HTTP port.
    ``stderr``: a file descriptor for its log (default: ours)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynaps", "coordinator", "--announce"],
        env=_env(config, extra_env),
        stdout=subprocess.PIPE,
        stderr=stderr,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            stop_processes([proc])
            raise ClusterError("the coordinator did not start (see its log above)")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            line += chunk
    text = line.decode().strip()
    if not text.startswith(ANNOUNCE_PREFIX):
        stop_processes([proc])
        raise ClusterError(f"unexpected output from the coordinator: {text!r}")
    address, http_port = text[len(ANNOUNCE_PREFIX) :].split()
    return proc, address.removeprefix("tcp://"), int(http_port)


def start_node(
    role: str,
    config: RuntimeConfig,
    name: str,
    attach_token: str | None = None,
    command: Sequence[str] | None = None,
    rank: int | None = None,
    extra_env: dict[str, str] | None = None,
    output: tuple[int, int] | None = None,
    workers: int | None = None,
) -> Process:
    """Start a node; ``output``: file descriptors for its (stdout, stderr), default ours;
    ``workers``: the job's worker count now (a worker's program gets its share of the CPUs)."""
    args = [sys.executable, "-m", "dynaps", role]
    if command:
        args += ["--", *command]
    extra = {"DYNAPS_NODE_NAME": name, **(extra_env or {})}
    if attach_token:  # in the environment: any user can read a command line, and take the name first
        extra[ATTACH_TOKEN_ENV] = attach_token
    if rank is not None:
        extra["DYNAPS_RANK"] = str(rank)
    stdout, stderr = output or (None, None)
    # A worker node passes its environment on to the program it starts (`dynaps run`).
    threads = training_threads(config, workers) if role == "worker" else 1
    return subprocess.Popen(args, env=_env(config, extra, threads), stdout=stdout, stderr=stderr)


def stop_processes(procs: Iterable[Process], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; reaps every process."""
    procs = [p for p in procs if p.poll() is None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def wait_processes(procs: Iterable[Process], timeout: float) -> bool:
    """Wait until all ``procs`` exit; False if some still run after ``timeout``."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True
