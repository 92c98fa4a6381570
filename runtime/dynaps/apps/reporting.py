"""Per-epoch progress shared by every app: sums over all workers through a small table
(:class:`Reducer`, so the apps work the same under ``dynaps run`` and LocalCluster), the
keys' local share (:class:`AccessMeter`), and the epoch's report line (:class:`Progress`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.apps.common import PSLike, check_table
from dynaps.contract import TableSpec
from dynaps.errors import UsageError

METRICS_TABLE = "metrics"
METRICS_DIM = 16  # the most values one reduction carries
METRICS_SLOTS = 3  # reductions rotate over three keys (see Reducer)


def metrics_table() -> dict[str, TableSpec]:
    return {METRICS_TABLE: TableSpec(num_keys=METRICS_SLOTS, dim=METRICS_DIM, dtype="float64")}


class Reducer:
    """Sum small vectors over all workers through the metrics table.

    Call ``n`` uses key ``n % 3``: every worker pushes its part, rank 0 zeroes the key
    of call ``n + 1``, then all meet at a barrier and read the sum.  The key zeroed now
    was last read in call ``n - 2``, before every worker's push in call ``n - 1``, and
    rank 0 zeroes it before the barrier that precedes any push of call ``n + 1``: one
    barrier per reduction, and no worker can see a stale sum.
    """

    def __init__(self, ps: PSLike) -> None:
        self.ps = ps
        self.table = check_table(ps, METRICS_TABLE, METRICS_SLOTS, METRICS_DIM)
        self.calls = 0
        if ps.rank == 0:  # an earlier run in the same job may have left sums behind
            self.table.set(np.arange(METRICS_SLOTS), np.zeros((METRICS_SLOTS, METRICS_DIM)))
        ps.barrier()

    def sum(self, values: Any) -> npt.NDArray[np.float64]:
        part = np.zeros(METRICS_DIM)
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(flat) > METRICS_DIM:
            raise UsageError(f"Reducer.sum takes at most {METRICS_DIM} values, got {len(flat)}")
        part[: len(flat)] = flat
        slot = self.calls % METRICS_SLOTS
        self.calls += 1
        self.table.push([slot], part[None, :])
        if self.ps.rank == 0:
            self.table.set([(slot + 1) % METRICS_SLOTS], np.zeros((1, METRICS_DIM)))
        self.ps.barrier()
        total: npt.NDArray[np.float64] = np.asarray(self.table.pull([slot]), dtype=np.float64)[0]
        return total[: len(flat)]


class AccessMeter:
    """Keys read and written, and how many of them locally, since the last ``take``."""

    # the first three are served by this process without a message (cached: value_cache)
    FIELDS = (
        "keys_pulled_local",
        "keys_pulled_cached",
        "keys_pushed_local",
        "keys_pulled_remote",
        "keys_pushed_remote",
    )

    def __init__(self, ps: PSLike) -> None:
        self.ps = ps
        self.last = self._now()

    def _now(self) -> npt.NDArray[np.float64]:
        stats = self.ps.stats()
        return np.array([stats.get(name, 0) for name in self.FIELDS], dtype=np.float64)

    def take(self) -> npt.NDArray[np.float64]:
        """[local accesses, all accesses] since the last call."""
        now = self._now()
        delta, self.last = now - self.last, now
        return np.array([delta[:3].sum(), delta.sum()])


@dataclass
class EpochReport:
    """One line of progress: what an epoch cost and what the model is worth afterwards."""

    app: str
    epoch: int
    epochs: int
    seconds: float  # wall time of the epoch's training (rank 0, barrier to barrier)
    loss: float  # training loss over the epoch, all workers
    quality: dict[str, float] = field(default_factory=dict)  # held-out metrics
    accesses: float = 0.0  # keys pulled + pushed by all workers
    local_share: float = 0.0  # share of those served from local memory
    eval_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def keys_per_second(self) -> float:
        return self.accesses / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        quality = "  ".join(f"{name} {value:.4f}" for name, value in self.quality.items())
        extra = "  ".join(f"{name} {value:.4g}" for name, value in self.extra.items())
        parts = [
            f"[{self.app}] epoch {self.epoch}/{self.epochs}  {self.seconds:6.2f} s  loss {self.loss:.4f}",
            quality,
            f"keys/s {self.keys_per_second:,.0f}  local {100 * self.local_share:.1f}%",
            extra,
        ]
        return "  ".join(part for part in parts if part)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["keys_per_second"] = self.keys_per_second
        return doc


# Called as ``hook(phase, epoch)`` in every worker right after the barrier that starts
# ("start") or ends ("end") an epoch: bench/cpu_scaling.py reads every process's CPU there,
# so that a job's set-up and its evaluations between epochs stay out of the epoch's figure.
EPOCH_HOOKS: list[Callable[[str, int], None]] = []


class Progress:
    """Per-epoch timing, access counting and printing, identical in every app."""

    def __init__(self, ps: PSLike, app: str, epochs: int, quiet: bool = False) -> None:
        self.ps = ps
        self.app = app
        self.epochs = epochs
        self.quiet = quiet or ps.rank != 0
        self.reducer = Reducer(ps)
        self.meter = AccessMeter(ps)
        self.reports: list[EpochReport] = []
        self.started = 0.0
        self.epoch = 0  # the epoch under way (from 1), or the last one ended
        self._accesses = (0.0, 0.0)

    def note(self, text: str) -> None:
        """One line about the run (rank 0 only), before the epochs start."""
        if not self.quiet:
            print(f"[{self.app}] {text}", flush=True)

    def start_epoch(self) -> None:
        self.ps.barrier()
        self.epoch += 1
        for hook in EPOCH_HOOKS:
            hook("start", self.epoch)
        self.meter.take()
        self.started = time.perf_counter()

    def end_epoch(self, loss_sum: float, loss_count: float) -> tuple[float, float]:
        """Close the epoch's timing: (seconds, mean training loss over all workers)."""
        self.ps.barrier()
        seconds = time.perf_counter() - self.started
        for hook in EPOCH_HOOKS:
            hook("end", self.epoch)
        local, total = self.meter.take()
        summed = self.reducer.sum([loss_sum, loss_count, local, total])
        self._accesses = (float(summed[2]), float(summed[3]))
        return seconds, float(summed[0] / max(summed[1], 1.0))

    def report(
        self,
        epoch: int,
        seconds: float,
        loss: float,
        quality: dict[str, float],
        eval_seconds: float = 0.0,
        extra: dict[str, float] | None = None,
    ) -> EpochReport:
        local, total = self._accesses
        rep = EpochReport(
            self.app,
            epoch,
            self.epochs,
            seconds,
            loss,
            quality,
            total,
            float(local / total) if total else 0.0,
            eval_seconds,
            extra or {},
        )
        self.reports.append(rep)
        if not self.quiet:
            print(rep.line(), flush=True)
        publish = getattr(self.ps, "report", None)  # a job's /status (and the job's K8s status)
        if publish is not None and self.ps.rank == 0:
            publish({**quality, "loss": loss, "epoch": float(epoch), "epochs": float(self.epochs)})
        return rep

    def write(self, path: str | None, config: Any) -> None:
        if path and self.ps.rank == 0:
            doc = {"config": config, "epochs": [r.to_dict() for r in self.reports]}
            with open(path, "w", encoding="utf-8") as out:
                json.dump(doc, out, indent=2, default=str)
