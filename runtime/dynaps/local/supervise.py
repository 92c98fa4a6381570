"""``dynaps run``'s nodes, replaced when they die as Kubernetes replaces a job's pods.

A node killed by a signal (the OOM killer, a stray ``kill -9``) or fenced by the coordinator
(:data:`~dynaps.contract.FENCED_EXIT_CODE`) is started again under its name, so it rejoins as
its own replacement (a worker takes its rank back) and the job goes on, as it would on a
cluster. Any other exit is the node's own decision and is left alone. Each node is replaced
at most :data:`MAX_REPLACEMENTS` times: a node that keeps dying has a cause to look at. A node
that ends for good before the job starts (:meth:`Nodes.given_up`) would leave the
coordinator waiting for it for ever: ``dynaps run`` then stops the job.

A job with stages (``spec.stages``) grows its workers when a stage wants more: the coordinator
raises its desired count, and :meth:`Nodes.grow_workers` starts new worker nodes, as the
operator creates pods (a stage's surplus workers leave on their own).

With a :class:`~dynaps.observe.streams.Prefixer`, every node's output (its program's
included) reaches the terminal a whole line at a time, prefixed by the node's name.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from dynaps.contract import FENCED_EXIT_CODE, RuntimeConfig
from dynaps.local.launch import Process, start_node
from dynaps.observe.streams import Prefixer

MAX_REPLACEMENTS = 3


@dataclass
class _Node:
    role: str
    name: str
    rank: int | None
    command: list[str] | None
    process: Process
    workers: int | None = None  # the job's worker count when it started (its program's threads)
    replacements: int = 0


def _replaceable(node: _Node, code: int) -> bool:
    """Whether a node that ended with ``code`` is started again (the module docstring)."""
    return (code < 0 or code == FENCED_EXIT_CODE) and node.replacements < MAX_REPLACEMENTS


def _why(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"fenced by the coordinator (exit {code})"


class Nodes:
    def __init__(
        self,
        config: RuntimeConfig,
        env: dict[str, str],
        say: Callable[[str], None],
        output: Prefixer | None = None,
        program_env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.env = env
        self.program_env = program_env or {}  # a worker node hands it on to its program
        self.say = say
        self.output = output
        self._nodes: list[_Node] = []

    def start(
        self,
        role: str,
        name: str,
        rank: int | None = None,
        command: list[str] | None = None,
        workers: int | None = None,
    ) -> None:
        """``workers``: the job's worker count now, if not the configuration's (a stage's)."""
        process = self._launch(role, name, rank, command, workers)
        self._nodes.append(_Node(role, name, rank, command, process, workers))

    def _launch(
        self, role: str, name: str, rank: int | None, command: list[str] | None, workers: int | None
    ) -> Process:
        pipes = self.output.pipes(name) if self.output is not None else None
        try:
            env = {**self.env, **self.program_env} if role == "worker" else self.env
            return start_node(
                role,
                self.config,
                name,
                command=command,
                rank=rank,
                extra_env=env,
                output=pipes,
                workers=workers,
            )
        finally:
            for fd in pipes or ():
                os.close(fd)  # the node holds them now: the copier sees the end when it exits

    def grow_workers(self, desired: int, leaving: set[str], command: list[str]) -> None:
        """Start worker nodes until ``desired`` run that are not ``leaving`` (names)."""
        staying = sum(
            1
            for node in self._nodes
            if node.role == "worker" and node.process.poll() is None and node.name not in leaving
        )
        missing = desired - staying
        for _ in range(missing):
            name = f"worker-{sum(1 for node in self._nodes if node.role == 'worker')}"
            self.say(f"the job wants {desired} workers: starting {name}")
            self.start("worker", name, command=command, workers=desired)

    def replace_dead(self) -> None:
        """Start again every node that died as a lost pod would (see the module's docstring)."""
        for node in self._nodes:
            code = node.process.poll()
            if code is None or not _replaceable(node, code):
                continue
            node.replacements += 1
            self.say(
                f"{node.name} {_why(code)}: starting it again "
                f"({node.replacements} of at most {MAX_REPLACEMENTS} replacements)"
            )
            node.process = self._launch(node.role, node.name, node.rank, node.command, node.workers)

    def given_up(self) -> list[tuple[str, int]]:
        """(name, exit code) of every node that ended and will not be started again: it
        exited on its own (a usage error at start: a bad variable, a program not found), or
        was replaced :data:`MAX_REPLACEMENTS` times already."""
        ended = []
        for node in self._nodes:
            code = node.process.poll()
            if code is not None and not _replaceable(node, code):
                ended.append((node.name, code))
        return ended

    def processes(self) -> list[Process]:
        return [node.process for node in self._nodes]
