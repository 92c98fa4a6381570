"""Fixtures for runtime tests: small LocalClusters shared by the tests of a module."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

import dynaps

TABLES = {
    "W": dynaps.TableSpec(num_keys=1000, dim=4),
    "E": dynaps.TableSpec(num_keys=500, dim=2, dtype="float64"),
}
LOG_TAIL_LINES = 60  # of each process's log, shown under a failed test


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dynaps.LocalCluster]:
    """Two servers and three workers on 127.0.0.1, for one test module; their logs go to
    files, whose ends a failed test shows (the processes outlive each test's capture)."""
    logs = tmp_path_factory.mktemp("cluster-logs")
    with dynaps.LocalCluster(servers=2, workers=3, tables=TABLES, log_dir=str(logs), log_level="DEBUG") as c:
        yield c


def _tails(log_dir: str) -> str:
    parts = []
    for path in sorted(Path(log_dir).glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        if lines:
            parts.append(f"--- {path.name} (last {len(lines)} lines) ---\n" + "\n".join(lines))
    return "\n".join(parts) or "(every log is empty)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    shared = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(shared, dynaps.LocalCluster) and shared.log_dir is not None:
        report.sections.append(("the cluster's logs", _tails(shared.log_dir)))
        try:
            status = shared.status()
            barriers = {k: status.get(k) for k in ("phase", "barrierPassed", "barriers", "members")}
        except Exception as exc:  # a report must never end the test session
            barriers = {"status": f"unreadable: {exc!r}"}
        report.sections.append(("the cluster's status", json.dumps(barriers, indent=1)))
    return report
