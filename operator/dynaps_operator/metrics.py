"""Prometheus metrics of the operator (``GET /metrics`` on the probe port).

Each operator instance has its own registry, so tests can run several in one process.
"""

from __future__ import annotations

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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
