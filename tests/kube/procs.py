"""Starting and stopping the processes of the test cluster so that none outlives the tests.

Three layers, because pytest can be stopped in three ways:
- normal teardown and Ctrl-C: `stop_process` (SIGTERM, then SIGKILL) from the fixtures' finalizers;
- SIGKILL of the test process: every process is started under `setpriv --pdeathsig KILL`, so the kernel
  kills it when the thread that started it dies;
- grandchildren (a pod's `sh -c 'x &'`) carry MARKER_ENV in their environment, and the next session's
  `reap_stale_roots` kills whatever still carries the marker of a root whose owner is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

MARKER_ENV = "DYNAPS_KUBE_ROOT"
ROOT_PREFIX = "dynaps-kube-"
OWNER_FILE = "owner.pid"
CREATED_DIRS_FILE = "created-paths"
USED_PATHS_FILE = "used-paths"
# Not under ROOT_PREFIX: it is no session's root.
MOUNT_POINTS_LOCK = Path(tempfile.gettempdir()) / "dynaps-mount-points.lock"


def make_root() -> Path:
    """A fresh temporary folder for one test session's cluster, owned by this process."""
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    (root / OWNER_FILE).write_text(str(os.getpid()))
    return root


def start_process(
    argv: Sequence[str],
    *,
    root: Path,
    env: Mapping[str, str],
    log: Path,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    full_env = dict(env)
    full_env[MARKER_ENV] = str(root)
    with log.open("ab") as out:
        return subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            # Own process group: signals reach the whole tree the process starts.
            start_new_session=True,
        )


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> int:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; returns the exit status."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait()
    # Reap what is left of the group (children that ignored SIGTERM) too.
    signal_group(proc, signal.SIGKILL)
    return proc.returncode


def processes_marked(root: Path) -> list[int]:
    """Pids of live processes whose environment carries the marker of `root`."""
    needle = f"{MARKER_ENV}={root}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes() + b"\0":
                pids.append(int(entry.name))
    return pids


def kill_marked(root: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (pids := processes_marked(root)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def record_created_path(root: Path, path: Path) -> None:
    with (root / CREATED_DIRS_FILE).open("a") as f:
        f.write(f"{path}\n")


def record_used_path(root: Path, path: Path) -> None:
    with (root / USED_PATHS_FILE).open("a") as f:
        f.write(f"{path}\n")


@contextlib.contextmanager
def mount_points_locked() -> Iterator[None]:
    """Sessions on one host (pytest-xdist workers, each with a process kubelet) share the
    mount points made on the host (/etc/dynaps...). A container's bind mount on one that
    another session removes is detached in its namespace (Linux >= 3.18): its program then
    finds no config and exits 2. So making and noting a mount point, and removing those no
    live session uses, each happen under this lock."""
    with MOUNT_POINTS_LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _paths_of_other_live_sessions(root: Path) -> set[str]:
    paths: set[str] = set()
    for other in Path(tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        if other == root:
            continue
        try:
            if not _alive(int((other / OWNER_FILE).read_text())):
                continue
        except (OSError, ValueError):
            continue
        for name in (CREATED_DIRS_FILE, USED_PATHS_FILE):
            with contextlib.suppress(OSError):
                paths.update((other / name).read_text().splitlines())
    return paths


def remove_root(root: Path) -> None:
    """Kills leftover processes, removes mount points made on the host, then the folder itself."""
    kill_marked(root)
    created = root / CREATED_DIRS_FILE
    if created.exists():
        with mount_points_locked():
            elsewhere = _paths_of_other_live_sessions(root)
            # Deepest first, and only what is still empty: mount points we made, never anything
            # else, and none another live session uses (or a folder above one).
            for line in sorted(set(created.read_text().splitlines()), key=len, reverse=True):
                if any(used == line or used.startswith(line + "/") for used in elsewhere):
                    continue
                path = Path(line)
                with contextlib.suppress(OSError):
                    if path.is_dir():
                        path.rmdir()
                    elif path.is_file() and path.stat().st_size == 0:
                        path.unlink()
    shutil.rmtree(root, ignore_errors=True)


def reap_stale_roots() -> None:
    """Cleans up after sessions that were killed before their teardown could run."""
    for root in Path(tempfile.gettempdir()).glob(ROOT_PREFIX + "*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            remove_root(root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
