"""The coordinator's ``/metrics``: the job as a whole, read from its status document.

The coordinator's thread builds the /status document (:func:`dynaps.coordinator.http.
status_document`) when it is read (:mod:`dynaps.coordinator.status_reads`), a scrape as much as
a ``GET /status``; this collector turns it into metric families, so metrics and /status never
disagree and no state is shared but the published document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from dynaps.coordinator.reports import MAX_NAME_LENGTH, MAX_REPORTED_NAMES
from dynaps.telemetry.exposition import Family, Scrape, families_by_name

FAMILIES = families_by_name(
    [
        Family("dynaps_job_phase", "gauge", "1 for the job's current phase, 0 for the others.", ("phase",)),
        Family("dynaps_job_shard_map_epoch", "gauge", "Epoch of the committed shard map."),
        Family("dynaps_job_membership_version", "gauge", "Version of the job's membership."),
        Family(
            "dynaps_job_nodes",
            "gauge",
            "Nodes of the job by role (servers, workers) and state (desired, ready, finished).",
            ("role", "state"),
        ),
        Family(
            "dynaps_job_migrations",
            "gauge",
            "Shard migrations now, by state (in_flight, queued).",
            ("state",),
        ),
        Family("dynaps_job_migrations_completed", "counter", "Shard migrations committed."),
        Family("dynaps_job_recoveries_in_flight", "gauge", "Recoveries of a lost server's shards under way."),
        Family("dynaps_job_recoveries", "counter", "Recoveries of lost servers' shards started."),
        Family(
            "dynaps_job_unsynced_shards",
            "gauge",
            "Shards without the configured number of backups known to hold all their keys.",
        ),
        Family(
            "dynaps_job_lost_keys",
            "counter",
            "Keys restored from anything but a synced replica, or taken back from a lost node (their "
            "latest updates are lost).",
        ),
        Family(
            "dynaps_job_data_loss_events",
            "counter",
            "Recoveries that restored keys with a loss, and homes' take-backs of a lost node's keys.",
        ),
        Family(
            "dynaps_job_lost_nodes",
            "gauge",
            "Nodes of the job that died (others recovered their keys).",
        ),
        Family("dynaps_job_barrier_generation", "gauge", "The last barrier every worker passed."),
        Family(
            "dynaps_job_reported",
            "gauge",
            "The latest value of each metric the training program reported (ps.report).",
            ("name",),
        ),
        Family(
            "dynaps_job_reported_by_rank",
            "gauge",
            "The latest value of each reported metric, per worker rank.",
            ("name", "rank"),
        ),
    ]
)


class CoordinatorCollector(Collector):
    """Families of :data:`FAMILIES` from the status document ``status()`` returns."""

    def __init__(self, status: Callable[[], dict[str, Any]], phases: Sequence[str]) -> None:
        self._status = status
        self._phases = tuple(phases)  # every phase gets a sample, 1 for the current one

    def collect(self) -> Iterator[Metric]:
        doc = self._status()
        scrape = Scrape(FAMILIES)
        one = scrape.add
        for phase in self._phases:
            one("dynaps_job_phase", doc.get("phase") == phase, phase)
        one("dynaps_job_shard_map_epoch", doc.get("epoch", 0))
        one("dynaps_job_membership_version", doc.get("membershipVersion", 0))
        for role in ("servers", "workers"):
            for state, count in sorted(doc.get(role, {}).items()):
                one("dynaps_job_nodes", count, role, state)
        one("dynaps_job_migrations", doc.get("migrationsInFlight", 0), "in_flight")
        one("dynaps_job_migrations", doc.get("migrationsQueued", 0), "queued")
        one("dynaps_job_migrations_completed", doc.get("migrationsCompleted", 0))
        one("dynaps_job_recoveries_in_flight", doc.get("recoveriesInFlight", 0))
        one("dynaps_job_recoveries", doc.get("recoveriesStarted", 0))
        one("dynaps_job_unsynced_shards", doc.get("replication", {}).get("unsynced", 0))
        losses = doc.get("dataLossTotal", {})
        one("dynaps_job_lost_keys", losses.get("keys", 0))
        one("dynaps_job_data_loss_events", losses.get("entries", 0))
        one("dynaps_job_lost_nodes", len(doc.get("lost", [])))
        one("dynaps_job_barrier_generation", max(0, doc.get("barrierPassed", 0)))
        # Names are label values: the exposition escapes them, whatever the program chose.
        for name, value in _reported(doc.get("metrics", {})):
            one("dynaps_job_reported", value, name)
        for rank, metrics in sorted(doc.get("metricsByRank", {}).items()):
            for name, value in _reported(metrics):
                one("dynaps_job_reported_by_rank", value, name, rank)
        yield from scrape.metrics()


def _reported(metrics: dict[str, float]) -> list[tuple[str, float]]:
    # bounded where they arrive (coordinator.reports); /status is what this reads
    named = sorted((name, value) for name, value in metrics.items() if len(name) <= MAX_NAME_LENGTH)
    return named[:MAX_REPORTED_NAMES]


def registry(status: Callable[[], dict[str, Any]], phases: Sequence[str]) -> CollectorRegistry:
    """A registry of the coordinator's metrics alone (not prometheus_client's global one)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(CoordinatorCollector(status, phases))
    return reg
