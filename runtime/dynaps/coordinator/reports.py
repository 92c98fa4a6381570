"""What the training programs reported (REPORT): the latest value of each metric.

The /status document shows them for the job as a whole and per worker rank, the operator
copies them into the job's status, and ``/metrics`` exports them.  Which names a program
reports is its own choice, so they are bounded here, where they arrive: a program that
reports a new name every step (a bug) would otherwise grow the coordinator, every /status
answer and the job object in etcd without end.  Past :data:`MAX_REPORTED_NAMES` names,
new ones are dropped and counted; a name longer than :data:`MAX_NAME_LENGTH` is dropped.
"""

from __future__ import annotations

import logging

from dynaps.contract import limits

log = logging.getLogger(__name__)

# In the contract: the operator reads no more of a /status than this.
MAX_REPORTED_NAMES = limits.MAX_REPORTED_NAMES  # distinct names for the job, and per worker rank
MAX_NAME_LENGTH = limits.MAX_REPORTED_NAME_LENGTH


class Reports:
    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}  # the job's metrics (latest wins)
        self.by_rank: dict[str, dict[str, float]] = {}  # worker rank -> its metrics
        self.dropped = 0  # values not kept: a name too long, or new past the limit

    def add(self, rank: int | None, metrics: dict[str, float]) -> None:
        kept = self._keep(self.metrics, metrics)
        if rank is not None:
            self._keep(self.by_rank.setdefault(str(rank), {}), kept)

    def _keep(self, into: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
        kept = {}
        for name, value in metrics.items():
            if len(name) <= MAX_NAME_LENGTH and (name in into or len(into) < MAX_REPORTED_NAMES):
                into[name] = value
                kept[name] = value
            else:
                if not self.dropped:
                    log.warning(
                        "a program reported %r: more than %d metric names, or a name longer than %d "
                        "characters; such values are dropped (counted in /status reportsDropped)",
                        name[:40],
                        MAX_REPORTED_NAMES,
                        MAX_NAME_LENGTH,
                    )
                self.dropped += 1
        return kept
