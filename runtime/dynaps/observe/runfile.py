"""Where ``dynaps run`` leaves its coordinator's address and token, for ``dynaps status --local``.

A local run's coordinator listens on a port chosen at start and wants the job's HTTP token,
which exists only in the run's memory. While it runs, ``dynaps run`` writes
``<dir>/<job>.<pid>.json`` (``{"job", "address", "token", "pid"}``) and removes it at the end;
``<dir>`` is ``$DYNAPS_RUN_DIR``, else ``$XDG_RUNTIME_DIR/dynaps``, else
``~/.cache/dynaps/runs``. The token lets its holder read the job's status and act on it
(scale, shut down), so the folder is the user's alone (0700) and the file is created 0600,
never readable by others even for an instant. The file holds the HTTP token only, never the
job secret the nodes sign their messages with. A file whose process is gone (a run that was
killed) is ignored and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from dynaps.errors import ConfigError

RUN_DIR_ENV = "DYNAPS_RUN_DIR"


@dataclass(frozen=True)
class RunFile:
    job: str
    address: str  # http://127.0.0.1:PORT
    token: str
    pid: int
    path: Path


def run_dir() -> Path:
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "dynaps"
    return Path.home() / ".cache" / "dynaps" / "runs"


def write(job: str, address: str, token: str) -> Path:
    """Record this process's run; returns the file to :func:`remove` at the end."""
    folder = run_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid == os.getuid():
        folder.chmod(0o700)  # mkdir's mode is masked by the umask, and the folder may be older
    pid = os.getpid()
    path = folder / f"{job}.{pid}.json"
    staging = folder / f".{job}.{pid}.tmp"
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"job": job, "address": address, "token": token, "pid": pid}, out)
    staging.replace(path)  # readers never see half a file
    return path


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive, though not ours
    return True


def _read(path: Path) -> RunFile | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    job, address, token, pid = (doc.get(k) for k in ("job", "address", "token", "pid"))
    if not (isinstance(job, str) and isinstance(address, str) and isinstance(token, str)):
        return None
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    return RunFile(job, address, token, pid, path)


def runs() -> list[RunFile]:
    """The local runs that are alive (stale files are removed on the way)."""
    folder = run_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        run = _read(path)
        if run is None:
            continue
        if not _alive(run.pid):
            remove(path)
            continue
        found.append(run)
    return found


def find(job: str | None = None, address: str | None = None) -> RunFile:
    """The one live run of ``job`` (any job when None; or the one at ``address``)."""
    live = runs()
    matching = [
        r for r in live if (job is None or r.job == job) and (address is None or r.address == address)
    ]
    if len(matching) == 1:
        return matching[0]
    what = f" of job {job!r}" if job else f" at {address}" if address else ""
    if not matching:
        others = f" (running: {', '.join(sorted({r.job for r in live}))})" if live else ""
        raise ConfigError(
            f"no local dynaps run{what} found in {run_dir()}{others}; "
            "`dynaps run` records its coordinator there while it runs"
        )
    listing = ", ".join(f"{r.job} (pid {r.pid}, {r.address})" for r in matching)
    raise ConfigError(f"several local runs{what}: {listing}; name the JOB, or give --address")
