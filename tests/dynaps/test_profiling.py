"""The opt-in profile switch (DYNAPS_PROFILE_DIR): off by default, snapshots on SIGUSR2."""

from __future__ import annotations

import os
import pstats
import signal
from pathlib import Path

import pytest

from dynaps import profiling


def _work(n: int) -> int:
    return sum(i * i for i in range(n))


def test_off_by_default_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(profiling.PROFILE_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGUSR2)
    assert profiling.profiled("node", lambda: _work(10)) == _work(10)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGUSR2) is before


def test_snapshots_and_exit_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "profiles"
    monkeypatch.setenv(profiling.PROFILE_DIR_ENV, str(directory))
    before = signal.getsignal(signal.SIGUSR2)

    def body() -> int:
        _work(1000)
        os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs before kill returns to Python code
        _work(200_000)
        os.kill(os.getpid(), signal.SIGUSR2)
        return 7

    assert profiling.profiled("server-3", body) == 7
    pid = os.getpid()
    names = sorted(p.name for p in directory.iterdir())
    assert names == [f"server-3.{pid}.{tag}.prof" for tag in ("1", "2", "exit")]
    calls = []
    for tag in ("1", "2", "exit"):
        stats = pstats.Stats(str(directory / f"server-3.{pid}.{tag}.prof")).stats  # type: ignore[attr-defined]
        calls.append(sum(nc for (_, _, name), (_, nc, *_) in stats.items() if name == "<genexpr>"))
    # cumulative: the second snapshot saw the calls of the larger _work, the first did not
    assert calls[0] < calls[1] <= calls[2]
    assert calls[1] - calls[0] >= 200_000  # a generator's every resumption counts as a call
    assert signal.getsignal(signal.SIGUSR2) is before
