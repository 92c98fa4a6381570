"""Prometheus metrics of the operator (``GET /metrics`` on the probe port).

Each operator instance has its own registry, so tests can run several in one process.
"""

from __future__ import annotations

import contextlib
from collections import Counter as Tally
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dynaps.contract import JobPhase


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "dynaps_operator_reconciles", "Reconciles of jobs, by result.", ["result"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "dynaps_operator_reconcile_seconds",
            "Time to reconcile one job (reads, decisions, writes).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.pods_created = Counter(
            "dynaps_operator_pods_created", "Pods created, by role.", ["role"], registry=r
        )
        self.pods_deleted = Counter(
            "dynaps_operator_pods_deleted", "Pods deleted by the operator.", registry=r
        )
        self.pod_losses = Counter(
            "dynaps_operator_pod_losses",
            "Pods lost: failures (count against backoffLimit) and preemptions (do not).",
            ["kind"],
            registry=r,
        )
        self.coordinator_requests = Counter(
            "dynaps_operator_coordinator_requests",
            "Requests to coordinators, by endpoint and result.",
            ["endpoint", "result"],
            registry=r,
        )
        self.events = Counter("dynaps_operator_events", "Events posted, by type.", ["type"], registry=r)
        self.jobs = Gauge("dynaps_operator_jobs", "Jobs by phase, as last reconciled.", ["phase"], registry=r)
        self.queue_depth = Gauge("dynaps_operator_queue_depth", "Jobs waiting to be reconciled.", registry=r)
        # Per job, for autoscaling (examples/autoscaling): labels that do not collide with the
        # target labels Prometheus adds (its own `namespace` and `job`).
        self.data_shards_free = Gauge(
            "dynaps_operator_job_data_shards_free",
            "Data-shard pieces no worker has leased yet (ps.data_shards), per job, "
            "as its coordinator last said.",
            ["psjob_namespace", "psjob"],
            registry=r,
        )
        self._phases: dict[tuple[str, str], str] = {}

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def job_phase(self, key: tuple[str, str], phase: str | None) -> None:
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
        counts = Tally(self._phases.values())
        for known in JobPhase:
            self.jobs.labels(phase=known.value).set(counts.get(known.value, 0))

    def job_backlog(self, key: tuple[str, str], free: int | None) -> None:
        """A job's unleased data shards; None removes the job's series (it ended or is gone)."""
        namespace, name = key
        if free is None:
            with contextlib.suppress(KeyError):  # never set: the job had no coordinator to ask
                self.data_shards_free.remove(namespace, name)
        else:
            self.data_shards_free.labels(psjob_namespace=namespace, psjob=name).set(free)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
