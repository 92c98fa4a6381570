"""``dynaps logs``: the logs of every pod of a job, each line prefixed by the pod's role.

Each pod's log comes from ``kubectl logs`` (the kubelet serves it; the API server proxies).
Without ``--follow`` the pods are read one after the other (coordinator, servers, workers),
so each pod's lines stay together; with ``--follow`` one ``kubectl logs -f`` per pod runs at
once and their lines are merged whole as they come (:mod:`dynaps.observe.streams`). Following
is bounded (:data:`MAX_FOLLOW` pods unless ``--max-follow`` says otherwise): each one holds a
kubectl process and an API-server connection.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynaps.contract import KIND
from dynaps.errors import ConfigError
from dynaps.observe.sources import Kubectl
from dynaps.observe.streams import Merger, Output, copy_lines
from dynaps.observe.view import LABEL_ROLE, member_order

MAX_FOLLOW = 50  # pods followed at once by default


@dataclass(frozen=True)
class Pod:
    name: str
    role: str
    label: str  # the prefix's text: the pod name without the job's, e.g. "server-0"


def job_pods(items: Sequence[Any], job: str, roles: Sequence[str] = ()) -> list[Pod]:
    """The job's pods (from ``kubectl get pods -o json``), coordinator first, in index order."""
    pods = []
    for item in items:
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            continue
        role = str((meta.get("labels") or {}).get(LABEL_ROLE) or "?")
        if roles and role not in roles:
            continue
        name = meta["name"]
        pods.append(Pod(name, role, name.removeprefix(f"{job}-")))

    return sorted(pods, key=lambda pod: member_order(pod.role, pod.name))


def logs_args(pod: Pod, follow: bool, tail: int | None, since: str | None, timestamps: bool) -> list[str]:
    args = ["logs", pod.name]
    if follow:
        args.append("--follow")
    if tail is not None:
        args.append(f"--tail={tail}")
    if since:
        args.append(f"--since={since}")
    if timestamps:
        args.append("--timestamps")
    return args


def show_logs(
    kubectl: Kubectl,
    job: str,
    *,
    follow: bool = False,
    roles: Sequence[str] = (),
    tail: int | None = None,
    since: str | None = None,
    timestamps: bool = False,
    max_follow: int = MAX_FOLLOW,
) -> int:
    """Print the logs; 0 if every pod's log was read, 1 if some could not be (said on stderr)."""
    kubectl.job(job)  # a clear "no such job" before anything else
    pods = job_pods(kubectl.pods(job), job, roles)
    if not pods:
        print(
            f"dynaps: the {KIND} {job!r} has no pods{' of that role' if roles else ''} now", file=sys.stderr
        )
        return 1
    if follow and len(pods) > max_follow:
        raise ConfigError(
            f"{job} has {len(pods)} pods and --follow follows at most {max_follow} at once: "
            "choose --role, or raise --max-follow"
        )
    out, err = Output(sys.stdout.buffer), Output(sys.stderr.buffer)
    procs: list[subprocess.Popen[bytes]] = []
    merger = Merger()
    interrupted = False
    # `kill` ends following as Ctrl-C does, stopping the kubectl processes first (a SIGINT
    # that the shell ignores for a background job stays ignored)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for pod in pods:
            proc = subprocess.Popen(
                kubectl.command(*logs_args(pod, follow, tail, since, timestamps)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            procs.append(proc)
            assert proc.stdout is not None
            assert proc.stderr is not None
            prefix = f"[{pod.label}] "
            if follow:
                merger.add(proc.stdout, prefix, out)
                merger.add(proc.stderr, prefix, err)
            else:  # one pod after the other: its lines stay together
                merger.add(proc.stderr, prefix, err)
                copy_lines(proc.stdout, prefix.encode(), out)
                proc.wait()
        for proc in procs:
            proc.wait()
        merger.join(5.0)
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C ends following: not an error
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return 0 if interrupted or all(p.returncode == 0 for p in procs) else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
