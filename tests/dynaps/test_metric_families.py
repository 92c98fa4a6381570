"""The metric families without processes: the shared usage counters' layout, the
coordinator's collector on a status document, and the docs listing every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dynaps.coordinator import metrics as coordinator_metrics
from dynaps.coordinator.reports import MAX_NAME_LENGTH, MAX_REPORTED_NAMES
from dynaps.node import metrics as node_metrics
from dynaps.store import usage
from dynaps.telemetry.exposition import Family, families_by_name

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_the_docs_list_every_family_the_processes_export() -> None:
    text = DOCS.read_text()
    for table in (coordinator_metrics.FAMILIES, node_metrics.FAMILIES):
        for family in table.values():
            shown = family.samples[0] if family.kind == "counter" else family.name
            labels = ", ".join(f"`{label}`" for label in family.labels)
            assert f"| `{shown}` | {family.kind} | {labels} | {family.help} |" in text, family.name


def test_a_family_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        families_by_name([Family("dynaps_x", "gauge", "x"), Family("dynaps_x", "counter", "y")])


def test_the_usage_counters_land_in_their_tables_row_and_buckets() -> None:
    shared = np.zeros(usage.words(2), dtype=np.int64)
    writer = usage.UsageWriter(shared, 2)
    writer.rows[1][usage.PULLED_REMOTE] += 7
    writer.rows[1][usage.PULLS] += 1
    writer.rows[0][usage.PUSHED_LOCAL] += 3
    bounds_ns = [int(b * 1e9) for b in usage.LATENCY_BOUNDS]
    pull = usage.OPERATIONS.index("pull")
    took = [bounds_ns[0], bounds_ns[0] + 1, bounds_ns[3], bounds_ns[-1] * 2]  # on, over, on, above all
    for elapsed in took:
        writer.observe(1, pull, elapsed)
    counters, histograms = usage.read(shared, 1)
    assert counters["keys_pulled_remote"] == 7
    assert counters["pulls"] == 1
    assert counters["keys_pushed_local"] == 0  # table 0's, not table 1's
    assert usage.read(shared, 0)[0]["keys_pushed_local"] == 3
    seen = histograms["pull"]
    # le is inclusive: an observation equal to a bound counts in that bound's bucket
    assert seen.cumulative[0] == 1
    assert seen.cumulative[1] == 2
    assert seen.cumulative[3] == 3
    assert seen.cumulative[-2] == 3  # 5 s: the slowest went above every bound
    assert seen.count == 4
    assert seen.sum_seconds == pytest.approx(
        sum((bounds_ns[0], bounds_ns[0] + 1, bounds_ns[3], bounds_ns[-1] * 2)) / 1e9
    )
    assert histograms["push"].count == 0
    assert writer.totals()["keys_pulled_remote"] == 7


def test_a_usage_array_too_small_for_the_tables_is_refused() -> None:
    with pytest.raises(ValueError, match="usage array"):
        usage.UsageWriter(np.zeros(usage.words(1), dtype=np.int64), 2)


def test_the_coordinator_exports_reported_names_within_bounds() -> None:
    reported = {f"m{i:03d}": float(i) for i in range(MAX_REPORTED_NAMES + 5)}
    reported["x" * (MAX_NAME_LENGTH + 1)] = 1.0
    reported['a "name"\n'] = 2.5  # sorts first: exported
    doc = {"phase": "running", "metrics": reported, "metricsByRank": {"0": {"loss": 0.25}}}
    registry = coordinator_metrics.registry(lambda: doc, ["registering", "running"])
    samples = [
        sample
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    ]
    names = {s.labels["name"] for s in samples if s.name == "dynaps_job_reported"}
    assert len(names) == MAX_REPORTED_NAMES
    assert 'a "name"\n' in names  # escaped in the exposition, read back whole
    assert all(len(name) <= MAX_NAME_LENGTH for name in names)
    by_rank = [s for s in samples if s.name == "dynaps_job_reported_by_rank"]
    assert [(s.labels, s.value) for s in by_rank] == [({"name": "loss", "rank": "0"}, 0.25)]
    phases = {s.labels["phase"]: s.value for s in samples if s.name == "dynaps_job_phase"}
    assert phases == {"registering": 0.0, "running": 1.0}
