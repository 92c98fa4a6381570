"""A LocalCluster's runners: the training processes that run the functions given to ``run``.

One runner per worker node, attached to it, lives as long as its worker, so consecutive runs
reuse warm processes and keep the keys they localized.  Functions and results travel to
runners over local pipes (pickle, never over the network), so ``fn`` must be importable
(defined at module level).  :class:`Job` is the caller's handle on one function running in
every runner.

Runners are started with multiprocessing's ``spawn``, which imports the caller's main
script again in each of them: a script that builds its ``LocalCluster`` at module level,
without ``if __name__ == "__main__":``, builds it again there, and the runner dies before
it joins (:func:`await_runners` says so).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any, cast

from dynaps import profiling
from dynaps.contract import secret
from dynaps.errors import ClusterError, DynapsTimeoutError, UsageError
from dynaps.local.launch import Process

_SPAWN = multiprocessing.get_context("spawn")
Connection = multiprocessing.connection.Connection

NODE_LOOK_SECONDS = 0.2  # how often a start-up wait looks whether a node process ended
EXIT_WAIT_SECONDS = 5.0  # a runner whose pipe closed is given this long to exit, for its code


def _runner_main(token: str, conn: Connection, log_level: str, job_secret: str, log: str | None) -> None:
    """A runner: attach to the worker node, then run functions until told to stop; its
    stdout and stderr go to ``log`` if given."""
    from dynaps.client import ps as client_ps
    from dynaps.config import setup_logging

    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    # through the pipe, not the command line: other users can read a command line
    os.environ[secret.HEX_ENV] = job_secret
    setup_logging(log_level)
    try:
        ps = client_ps.PS.attach(token)
    except Exception as exc:  # report, do not hang the parent
        conn.send(("error", f"runner could not join the job: {exc}"))
        return
    client_ps._CURRENT = ps  # dynaps.connect() inside fn returns this connection
    conn.send(("ready", ps.rank))
    try:
        profiling.profiled(f"runner-{ps.rank}", lambda: _run_calls(ps, conn))
    finally:
        ps.close()


def _run_calls(ps: Any, conn: Connection) -> None:
    """A runner's loop: run each function sent down the pipe and send back what it returned."""
    while not ps.control[0]:  # our node drains or was declared lost: this training process ends
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        fn, args = item
        try:
            conn.send(("ok", fn(ps, *args)))
        except UsageError as exc:  # the caller's mistake, met in a worker: its message, no traceback
            conn.send(("usage", str(exc)))
        except BaseException as exc:
            conn.send(("error", "".join(traceback.format_exception(exc))))


def pickled_task(fn: Any, args: tuple[Any, ...]) -> bytes:
    """``(fn, args)`` as a runner receives it, pickled once for every runner (as
    ``Connection.send`` would); a UsageError that says why when it cannot be: a runner is
    another process, which finds ``fn`` by its module and name."""
    try:
        return bytes(ForkingPickler.dumps((fn, args)))
    except Exception as exc:  # pickle raises PicklingError, TypeError, AttributeError...
        what = getattr(fn, "__qualname__", repr(fn))
        raise UsageError(
            f"LocalCluster.run cannot send {what} and its arguments to the worker processes "
            f"({type(exc).__name__}: {exc}); pass a function defined at the top level of a "
            "module (not a lambda or a nested function) and arguments that pickle"
        ) from None


@dataclass
class Worker:
    """A worker node and the runner attached to it (``rank`` once the runner joined)."""

    name: str
    node: Process
    runner: Any  # multiprocessing.Process
    conn: Connection
    rank: int = -1


@contextlib.contextmanager
def _environment(extra: Mapping[str, str]) -> Iterator[None]:
    """``extra`` in our environment while a child is spawned: ``spawn`` gives the child ours,
    and numpy reads its thread count when the child imports it, before any of our code runs."""
    before = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_runner(
    name: str,
    node: Process,
    token: str,
    log_level: str,
    job_secret: str,
    log: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Worker:
    """Start the runner of worker node ``node`` (it attaches with ``token``; its output goes
    to the file ``log`` if given; ``env``: variables it starts with); it joins in the
    background: :func:`await_runners` waits for it."""
    parent, child = _SPAWN.Pipe()
    runner = _SPAWN.Process(target=_runner_main, args=(token, child, log_level, job_secret, log), daemon=True)
    with _environment(env or {}):
        runner.start()
    child.close()
    return Worker(name, node, runner, parent)


def await_runners(workers: list[Worker], timeout: float, nodes: Mapping[str, Process] | None = None) -> None:
    """Wait until each runner joined its node; learns its rank.  A node process of ``nodes``
    (by name) that exits meanwhile ends the wait at once: the job cannot start without it."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        while not worker.conn.poll(max(0.0, min(NODE_LOOK_SECONDS, deadline - time.monotonic()))):
            for name, process in (nodes or {}).items():
                code = process.poll()
                if code is not None:
                    raise ClusterError(
                        f"{name}: its node process exited (exit code {code}) before the job started; "
                        "its output says why"
                    )
            if time.monotonic() >= deadline:
                raise ClusterError(f"{worker.name} did not join within {timeout} s")
        try:
            status, value = worker.conn.recv()
        except (EOFError, OSError):  # it died before it said anything
            raise ClusterError(_exited_before_joining(worker)) from None
        if status != "ready":
            raise ClusterError(str(value))
        worker.rank = int(value)


def _exited_before_joining(worker: Worker) -> str:
    """What to tell the user of a runner that exited before it joined, and the likely why."""
    worker.runner.join(EXIT_WAIT_SECONDS)
    code = worker.runner.exitcode
    text = f"{worker.name}: its runner process exited before joining the job"
    if code is not None:
        text += f" (exit code {code})"
    if code is not None and code > 0 and _spawn_runs_main_again():
        # an error before _runner_main ran: most likely the main script, run again by spawn
        text += (
            "; the script that builds the LocalCluster runs again in every runner process "
            "(multiprocessing's spawn imports the main module anew), so if it builds the cluster at "
            'module level, guard its entry point with `if __name__ == "__main__":`'
        )
    return text


def _spawn_runs_main_again() -> bool:
    """Whether a spawned process imports this process's main module again (as
    multiprocessing.spawn decides: a script or ``python -m module`` is, a package's
    ``__main__`` such as ``python -m pytest`` and an interactive session are not)."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return name != "__main__" and not name.endswith(".__main__")
    return getattr(main, "__file__", None) is not None


class Job:
    """A function running in every worker; ``result()`` returns their results by rank."""

    def __init__(self, name: str, conns: dict[int, Connection], log_dir: str | None = None) -> None:
        self._name = name
        self._log_dir = log_dir  # named in an error: the processes' own account is there
        self._conns = conns
        self._results: dict[int, Any] = {}
        self._errors: dict[int, str] = {}
        self._usage: set[int] = set()  # ranks whose call raised UsageError (its message: _errors)

    def done(self) -> bool:
        self._collect(0.0)
        return len(self._results) + len(self._errors) == len(self._conns)

    def result(self, timeout: float | None = None) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                raise DynapsTimeoutError(f"{self._name} did not finish within {timeout} s")
            self._collect(0.2)
        if self._errors and next(iter(self._errors)) in self._usage:
            # the first failure was a usage error (the others usually waited for that rank at
            # a barrier): it is the caller's to fix, so it comes back as what it was
            rank = next(iter(self._errors))
            raise UsageError(f"worker rank {rank}: {self._errors[rank]}")
        if self._errors:
            # every rank's error, in the order they came: the first is usually the cause (a
            # rank that failed leaves the others waiting at the next barrier until it times out)
            ranks = ", ".join(str(rank) for rank in self._errors)
            texts = "\n".join(f"--- worker rank {rank} ---\n{text}" for rank, text in self._errors.items())
            logs = "" if self._log_dir is None else f"\n(the processes' logs: {self._log_dir})"
            raise ClusterError(
                f"{self._name} failed on worker rank(s) {ranks}, first to last:\n{texts}{logs}"
            )
        return [self._results[rank] for rank in sorted(self._results)]

    def _collect(self, timeout: float) -> None:
        pending = {
            conn: rank
            for rank, conn in self._conns.items()
            if rank not in self._results and rank not in self._errors
        }
        if not pending:
            return
        for ready in multiprocessing.connection.wait(list(pending), timeout):
            conn = cast(Connection, ready)
            rank = pending[conn]
            try:
                status, value = conn.recv()
            except (EOFError, OSError):
                self._errors[rank] = "the worker process died"
                continue
            if status == "ok":
                self._results[rank] = value
            else:
                self._errors[rank] = value
                if status == "usage":
                    self._usage.add(rank)
