"""bench/profile_diff.py reads the profiles dynaps.profiling writes and names what grew."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from dynaps.profiling import PROFILE_DIR_ENV, profiled

from . import scripts


def busy(steps: int = 200_000) -> int:
    """CPU work in this function's own frame (no calls for the profile to charge it to)."""
    total = 0
    for i in range(steps):
        total += i * i
    return total


def work(rounds: int) -> None:
    for _ in range(rounds):
        busy()


def test_the_function_that_grew_heads_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for run, rounds in (("few", 2), ("many", 12)):
        monkeypatch.setenv(PROFILE_DIR_ENV, str(tmp_path / run))
        profiled("runner-0", functools.partial(work, rounds))
        profiled("server-0", busy)
    diff = scripts.load("profile_diff")
    first, second = diff.read_run(tmp_path / "few"), diff.read_run(tmp_path / "many")
    assert first.processes == second.processes == 2
    assert second.by_role["runner"] > 3 * first.by_role["runner"]
    lines = diff.report(first, second, 3, ["test_profile_diff.py:work"])
    grown = lines[lines.index("own time that grew most (s, calls), top 3:") + 1]
    assert grown.endswith("test_profile_diff.py:busy")
    assert "calls         3 ->        13" in grown  # runner and server: 2 + 1, then 12 + 1
    callee = lines[lines.index("test_profile_diff.py:work: cumulative s by callee") + 1]
    assert callee.endswith("test_profile_diff.py:busy")


def test_a_directory_without_profiles_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        scripts.load("profile_diff").main([str(tmp_path), str(tmp_path)])
    assert exit_.value.code == 2
