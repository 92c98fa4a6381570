"""Fixtures for runtime tests: small LocalClusters shared by the tests of a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import dynaps

TABLES = {
    "W": dynaps.TableSpec(num_keys=1000, dim=4),
    "E": dynaps.TableSpec(num_keys=500, dim=2, dtype="float64"),
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[dynaps.LocalCluster]:
    """Two servers and three workers on 127.0.0.1, for one test module."""
    with dynaps.LocalCluster(servers=2, workers=3, tables=TABLES) as c:
        yield c
