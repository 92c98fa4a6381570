"""``dynaps run``: a job's processes on this machine, watched until the job ends.

The coordinator, then every server and worker node (:mod:`dynaps.local.supervise` starts
them and replaces the ones that die as Kubernetes would replace their pods), each line they
print prefixed by its node's name; progress, data losses and the end read from the
coordinator's /status. A node that ends for good before the job starts stops the run: the
coordinator would wait for it for ever.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dynaps.config import ATTACH_ENV, ATTACH_TOKEN_ENV, LAUNCHER_PID_ENV
from dynaps.contract import IDENTITY_ENV, RuntimeConfig, secret
from dynaps.errors import DynapsError
from dynaps.local.launch import start_coordinator, stop_processes
from dynaps.local.supervise import Nodes
from dynaps.observe import runfile
from dynaps.observe.streams import Prefixer


def _program_env(wanted: dict[str, str], output: Prefixer) -> dict[str, str]:
    """``wanted`` without the variables dynaps sets itself (saying which it leaves out)."""
    own = IDENTITY_ENV | {ATTACH_ENV, ATTACH_TOKEN_ENV, LAUNCHER_PID_ENV}
    left_out = sorted(own & wanted.keys())
    if left_out:
        output.say("[dynaps] ", f"spec.workers.env: {', '.join(left_out)} left out: dynaps sets them itself")
    return {name: value for name, value in wanted.items() if name not in own}


def run_job(
    config: RuntimeConfig,
    command: list[str],
    log_level: str,
    quiet: bool,
    program_env: dict[str, str] | None = None,
) -> int:
    """Run the job ``config`` describes on this machine until it ends; its exit code.

    ``command``: the program every worker node starts; ``log_level``: the dynaps
    processes'; ``quiet``: no progress lines of our own; ``program_env``: the program's
    environment variables (a manifest's ``spec.workers.env``; those that tie a process to
    its job are dropped, as the operator drops them, and said so).
    """
    # every node's output (its program's too) comes out a whole line at a time, as "[worker-0] ..."
    output = Prefixer(sys.stdout.buffer, sys.stderr.buffer)

    def say(text: str) -> None:
        if not quiet:
            output.say("[dynaps] ", text)

    # the coordinator answers /status a moment after the job ends: the last read sees its end
    env = {"DYNAPS_LOG_LEVEL": log_level.upper(), "DYNAPS_COORDINATOR_LINGER_SECONDS": "3"}
    env.setdefault("PYTHONUNBUFFERED", "1")  # a Python program's lines reach the pipe as printed
    job_secret = secret.new_secret()  # the job's, in memory only: its processes get it in env
    env[secret.HEX_ENV] = secret.encode(job_secret)
    token = secret.http_token(job_secret)
    started = time.monotonic()
    out_fd, err_fd = output.pipes("coordinator")
    os.close(out_fd)  # its stdout is the announcement start_coordinator reads
    try:
        coordinator, address, http_port = start_coordinator(config, env, stderr=err_fd)
    finally:
        os.close(err_fd)
    status_url = f"http://127.0.0.1:{http_port}"
    try:
        run_file: Path | None = runfile.write(config.job, status_url, token)
    except OSError as exc:  # the job runs all the same; only `dynaps status --local` cannot find it
        run_file = None
        say(f"cannot record the run in {runfile.run_dir()} for `dynaps status --local`: {exc}")
    config = config.model_copy(update={"coordinator": address})
    nodes = Nodes(config, env, say, output, _program_env(program_env or {}, output))
    for i in range(config.servers):
        nodes.start("server", f"server-{i}")
    for i in range(config.workers):
        nodes.start("worker", f"worker-{i}", rank=i, command=command)
    say(
        f"job {config.job!r}: {config.servers} servers, {config.workers} workers, "
        f"allocation {config.allocation}; coordinator at {address}, status {status_url}/status "
        f"(`dynaps status --local {config.job}`)"
    )
    losses: list[dict[str, Any]] = []  # the coordinator's latest dataLoss entries, as last read
    seen, lost_keys = 0, 0  # losses printed so far, and keys lost over the whole job
    last = ""
    reason = ""  # why the job ended, as the coordinator said

    def read() -> dict[str, Any] | None:
        """/status, its progress line and new losses printed. Every read is reported: the
        coordinator answers one read after the job's end and then exits, and that read may
        be any of this loop's."""
        nonlocal last, losses, seen, lost_keys, reason
        status = _read_status(status_url, token)
        if status is not None and status.get("exitCode") is not None:
            reason = str(status.get("reason") or "")
        line = _progress_line(status) if status is not None else ""
        if line and line != last:
            say(line)
            last = line
        if status is not None:
            # /status lists the latest losses and counts them all: print the new ones
            total = status.get("dataLossTotal", {})
            fresh = int(total.get("entries", 0)) - seen
            for entry in status.get("dataLoss", [])[-fresh:] if fresh > 0 else []:
                say(f"DATA LOSS: {describe_loss(entry)}")
            seen += max(fresh, 0)
            losses, lost_keys = status.get("dataLoss", []), int(total.get("keys", 0))
        return status

    try:
        while coordinator.poll() is None:
            status = read()
            if status is not None and _stage_gathers(status):  # a stage with more workers waits
                nodes.grow_workers(status["workers"]["desired"], _leaving_workers(status), command)
            with contextlib.suppress(subprocess.TimeoutExpired):
                coordinator.wait(1.0)
            if coordinator.poll() is None:
                nodes.replace_dead()
                ended = nodes.given_up()
                if ended and _starting(read()):
                    # read after the node ended: nodes end on their own at the job's end, once
                    # the coordinator stops it; before the start the coordinator would wait for ever
                    name, node_code = ended[0]
                    say(f"{name} ended (exit code {node_code}) before the job started: stopping the job")
                    code = node_code if node_code > 0 else 1
                    break
        else:
            code = coordinator.returncode
    except KeyboardInterrupt:
        say("interrupted: stopping the job")
        code = 130
    finally:
        if run_file is not None:
            runfile.remove(run_file)
        stop_processes([coordinator, *nodes.processes()])
        # the nodes' last lines; a program that outlived its node may hold its pipe: not for long
        output.join(5.0)
    elapsed = time.monotonic() - started
    why = f": {reason}" if reason and code != 0 else ""
    say(f"job {'succeeded' if code == 0 else f'failed (exit code {code})'} after {elapsed:.1f} s{why}")
    if seen:
        recoveries = f"{seen} {'recovery' if seen == 1 else 'recoveries'}"
        say(f"data loss: {recoveries} restored {lost_keys} keys from other than a synced replica:")
        for entry in losses:
            say(f"  {describe_loss(entry)}")
    return code


def describe_loss(entry: dict[str, Any]) -> str:
    """One line for an entry of the coordinator's /status ``dataLoss`` (its own message)."""
    return str(entry.get("message") or entry)


def _read_status(url: str, token: str) -> dict[str, Any] | None:
    """The coordinator's /status, or None while it cannot be read (starting, ending)."""
    from dynaps.observe.sources import read_coordinator

    try:
        return read_coordinator(url, token)[0]
    except DynapsError:
        return None


def _starting(status: dict[str, Any] | None) -> bool:
    """The coordinator is known to wait for nodes to register or build their stores (a
    status that could not be read says nothing)."""
    return status is not None and status.get("phase") in ("registering", "prepare")


def _progress_line(status: dict[str, Any]) -> str:
    servers, workers = status["servers"], status["workers"]
    line = (
        f"{status['phase']}: servers {servers['ready']}/{servers['desired']} ready, workers "
        f"{workers['ready']}/{workers['desired']} attached, {workers['finished']} finished"
    )
    stage = status.get("stage")
    if isinstance(stage, dict):
        line += f"; stage {stage['index'] + 1}/{stage['count']} {stage['name']!r}: {stage['progress']}"
    return line


def _stage_gathers(status: dict[str, Any]) -> bool:
    """The job stands at a stage's start (where the coordinator may want more workers)."""
    stage = status.get("stage")
    return (
        status.get("phase") == "running"
        and isinstance(stage, dict)
        and stage["done"] == 0
        and not stage["finished"]
    )


def _leaving_workers(status: dict[str, Any]) -> set[str]:
    """Names of the workers that drain (a process that exited since is not counted anyway)."""
    return {
        m["name"] for m in status.get("members", []) if m["role"] == "worker" and m["state"] == "draining"
    }
