"""The data the job lost, for /status ``dataLoss``, the logs and ``faultTolerance.onDataLoss``:
one entry per recovery (one new home, one source) that restored keys from anything but a
synced replica, and one per home that took back keys a lost node held (a worker's localized
keys) with its own copy of their values.

For a recovery, ``keys`` starts as the number of keys in the shards (all of them may have
lost updates) and becomes what the new homes report once they rebuilt them: the keys nobody
else held (a worker holding a key keeps its value), which is the best count the job has.  A
home that took keys back counted them (TOOK_BACK): what their holder did to them since the
home's copy is lost, which is everything without replication and at most the last flush
interval with it (:func:`held_keys_cause`).  A node giving keys back to a home that died
before they arrived reported them (HANDOFF_LOST): the new home rebuilt them from its replica,
the sender's last write-back, and the sender's updates since are lost (``sender``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.contract import DataLossCause, FaultTolerance, Partition
from dynaps.store.shardmap import shard_key_range, shard_of

COUNT_CHUNK = 1 << 22  # keys per step when counting the keys of hashed shards
# /status stays small however often a job loses data: the latest entries, the first shards of
# each (with their count), and totals over the whole job
STATUS_ENTRIES = 100
STATUS_SHARDS = 64


def held_keys_cause(faults: FaultTolerance) -> DataLossCause | None:
    """What keys taken back from a lost node lose: the updates since their last write-back,
    every update since they were localized (no replication), or nothing (write-through: an
    update was acknowledged once its home had it)."""
    if faults.replication == 0:
        return DataLossCause.HOME_COPY
    return DataLossCause.WRITE_BACK if faults.flush_interval_ms > 0 else None


@dataclass
class LossEntry:
    cause: DataLossCause
    node: int  # the lost server whose shards these were, or the lost node that held these keys
    epoch: int  # the shard map that rehomed them (or current when they were taken back)
    shards: list[int]
    keys: int
    checkpoint_age: float | None  # seconds, when cause is checkpoint (None: age unknown)
    at: float = field(default_factory=time.time)
    counted: bool = False  # True: ``keys`` is what the new home rebuilt, not the shards' size
    role: str = "server"  # the lost node's
    flush_interval_ms: int = 0  # cause write-back: what bounds the updates lost
    # a live node that was giving these keys back to ``node`` (their home) when it died: its
    # updates since its last write-back are what is lost (HANDOFF_LOST)
    sender: int | None = None
    sender_role: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "cause": str(self.cause),
            "server": self.node,  # the name /status has always used: the lost node, whatever its role
            "role": self.role,
            "epoch": self.epoch,
            "shards": self.shards[:STATUS_SHARDS],
            "shardCount": len(self.shards),
            "keys": self.keys,
            "keysCounted": self.counted,  # False: the count is the shards' size
            "time": self.at,
            "message": self.describe(),  # one line for people (dynaps run, the job's condition)
        }
        if self.cause is DataLossCause.CHECKPOINT:
            age = self.checkpoint_age
            doc["checkpointAgeSeconds"] = None if age is None else round(age, 3)
        return doc

    def describe(self) -> str:
        if self.sender is not None:
            return (
                f"{self.keys} keys (in {len(self.shards)} shards) that {self.sender_role} {self.sender} was "
                f"giving back to lost {self.role} {self.node} died on their way: rebuilt from their last "
                f"write-back, {self.sender_role} {self.sender}'s updates of up to its last flush interval "
                f"({self.flush_interval_ms} ms) may be lost"
            )
        held = f"{self.keys} keys held by lost {self.role} {self.node} (in {len(self.shards)} shards)"
        if self.cause is DataLossCause.WRITE_BACK:
            return (
                f"{held} went back to their last write-back: the updates of up to its last flush "
                f"interval ({self.flush_interval_ms} ms) are lost"
            )
        if self.cause is DataLossCause.HOME_COPY:
            return (
                f"{held} went back to their home's copy from before they were localized (no "
                "replication): every update made to them since is lost"
            )
        where = f"{len(self.shards)} shards ({self.keys} keys) of lost server {self.node}"
        if self.cause is DataLossCause.CHECKPOINT:
            age = "of unknown age" if self.checkpoint_age is None else f"{self.checkpoint_age:.1f} s old"
            return f"{where} went back to the last checkpoint ({age})"
        if self.cause is DataLossCause.INITIAL:
            return f"{where} restarted from their initial values (no replica, no checkpoint)"
        return f"{where} had no synced replica left and no checkpoint: updates since the last sync are lost"


class DataLoss:
    """The entries, and how many keys each shard has (over all tables)."""

    def __init__(self, num_keys: Sequence[int], num_shards: int, partition: Partition | str) -> None:
        self.entries: list[LossEntry] = []
        self._by_recovery: dict[int, LossEntry] = {}
        self._num_keys = list(num_keys)
        self._num_shards = num_shards
        self._partition = partition
        self._per_shard: npt.NDArray[np.int64] | None = None  # counted at the first loss

    def keys_in(self, shards: list[int]) -> int:
        """How many keys ``shards`` have over all tables."""
        if self._partition != Partition.HASH:
            return sum(
                end - first
                for keys in self._num_keys
                for first, end in (shard_key_range(s, keys, self._num_shards) for s in shards)
            )
        if self._per_shard is None:  # hashed: count once, a chunk at a time (tables can be huge)
            counts = np.zeros(self._num_shards, dtype=np.int64)
            for keys in self._num_keys:
                for first in range(0, keys, COUNT_CHUNK):
                    chunk = np.arange(first, min(keys, first + COUNT_CHUNK), dtype=np.int64)
                    of_chunk = shard_of(chunk, keys, self._num_shards, self._partition)
                    counts += np.bincount(of_chunk, minlength=self._num_shards)
            self._per_shard = counts
        return int(self._per_shard[shards].sum())

    def record(
        self,
        cause: DataLossCause,
        server: int,
        epoch: int,
        shards: list[int],
        recovery: int,
        checkpoint_age: float | None,
    ) -> LossEntry:
        keys = self.keys_in(shards)
        entry = LossEntry(cause, server, epoch, list(shards), keys, checkpoint_age)
        self.entries.append(entry)
        self._by_recovery[recovery] = entry
        return entry

    def took_back(
        self,
        cause: DataLossCause,
        node: int,
        role: str,
        epoch: int,
        shards: list[int],
        keys: int,
        flush_ms: int,
    ) -> LossEntry:
        """A home took back ``keys`` keys (of ``shards``) that lost node ``node`` held."""
        entry = LossEntry(
            cause, node, epoch, list(shards), keys, None, counted=True, role=role, flush_interval_ms=flush_ms
        )
        self.entries.append(entry)
        return entry

    def handed_off(
        self,
        node: int,
        epoch: int,
        shards: list[int],
        keys: int,
        flush_ms: int,
        *,
        sender: int,
        sender_role: str,
    ) -> LossEntry:
        """``sender`` was giving ``keys`` keys (of ``shards``) back to their home, lost server
        ``node``, which died before they arrived: they went back to the sender's last write-back."""
        entry = LossEntry(
            DataLossCause.WRITE_BACK,
            node,
            epoch,
            list(shards),
            keys,
            None,
            counted=True,
            flush_interval_ms=flush_ms,
            sender=sender,
            sender_role=sender_role,
        )
        self.entries.append(entry)
        return entry

    def recovered(self, recovery: int, keys: int) -> None:
        """The new home rebuilt ``keys`` keys itself (from the recovery's source)."""
        entry = self._by_recovery.pop(recovery, None)
        if entry is not None:
            entry.keys = keys
            entry.counted = True

    def abandoned(self, recovery: int) -> None:
        """The new home died before reporting: the shards' size stays the count."""
        self._by_recovery.pop(recovery, None)

    def status(self) -> list[dict[str, Any]]:
        """The latest entries (totals: :meth:`totals`)."""
        return [entry.to_json() for entry in self.entries[-STATUS_ENTRIES:]]

    def totals(self) -> dict[str, int]:
        return {"entries": len(self.entries), "keys": sum(entry.keys for entry in self.entries)}
