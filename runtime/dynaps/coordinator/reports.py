"""What the training programs reported (REPORT): the latest value of each metric.

The /status document shows them for the job as a whole and per worker rank.
"""

from __future__ import annotations


class Reports:
    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}  # the job's metrics (latest wins)
        self.by_rank: dict[str, dict[str, float]] = {}  # worker rank -> its metrics

    def add(self, rank: int | None, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)
        if rank is not None:
            self.by_rank.setdefault(str(rank), {}).update(metrics)
