"""A local job's training processes get their share of the machine's CPUs as numeric-library
threads, counted from the job's workers when each one starts: a later stage's or a scale's,
not only the first stage's (its 2 threads each would oversubscribe a 2-core laptop)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from dynaps.contract import NamedTable, RuntimeConfig
from dynaps.local import launch
from dynaps.local.supervise import Nodes


class Started:
    """A stand-in for a node process that runs until asked: what ``poll`` says of a live one."""

    def __init__(self, args: list[str], env: dict[str, str], **_: Any) -> None:
        self.role = args[3]
        self.threads = env.get("OMP_NUM_THREADS")

    def poll(self) -> int | None:
        return None


def test_workers_started_for_a_larger_stage_get_a_smaller_share(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    started: list[Started] = []

    def popen(args: list[str], env: dict[str, str], **more: Any) -> Started:
        started.append(Started(args, env, **more))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)  # what dynaps.local.launch starts nodes with
    monkeypatch.setattr(launch, "cpus", lambda: 8)
    config = RuntimeConfig(tables=[NamedTable(name="W", num_keys=10, dim=1)], workers=1)
    nodes = Nodes(config, {}, say=lambda line: None)
    nodes.start("server", "server-0")
    nodes.start("worker", "worker-0", rank=0, command=["python", "t.py"])
    nodes.grow_workers(4, set(), ["python", "t.py"])  # the next stage wants 4
    assert [(s.role, s.threads) for s in started] == [
        ("server", "1"),
        ("worker", "8"),  # the first stage's one worker: all 8
        ("worker", "2"),
        ("worker", "2"),
        ("worker", "2"),
    ]
