"""Which server is the home of a key: partitioning into virtual shards, and the shard map.

A key's shard is a pure function of the key (range or hash partition into ``num_shards``
virtual shards); the shard map assigns each shard a home server and carries an epoch
that grows with every change.  Many more shards than servers make rebalancing a matter
of moving whole shards, and keep per-key metadata out of the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.contract import Partition
from dynaps.contract.fault_tolerance import MAX_REPLICATION
from dynaps.errors import ProtocolError
from dynaps.wire import shard_rows
from dynaps.wire.control import MAX_SHARDS

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads neighbouring keys


def shard_of(
    keys: npt.NDArray[np.int64], num_keys: int, num_shards: int, partition: Partition | str
) -> npt.NDArray[np.int64]:
    """The shard of each key."""
    if partition == Partition.HASH:
        with np.errstate(over="ignore"):
            mixed = keys.astype(np.uint64) * _GOLDEN
        return (mixed % np.uint64(num_shards)).astype(np.int64)
    # range: shard s holds keys [ceil(s*K/S), ceil((s+1)*K/S)); keys*S < 2**63 by validation
    return (keys * num_shards) // num_keys


def shard_key_range(shard: int, num_keys: int, num_shards: int) -> tuple[int, int]:
    """[first, end) of the keys of a range-partitioned shard."""
    first = -((-shard * num_keys) // num_shards)
    end = -((-(shard + 1) * num_keys) // num_shards)
    return first, end


def balanced_homes(num_shards: int, servers: Sequence[int]) -> npt.NDArray[np.int16]:
    """Assign shards to servers in contiguous, equal-sized runs."""
    if not servers:
        raise ValueError("a shard map needs at least one server")
    order = np.asarray(sorted(servers), dtype=np.int16)
    index = (np.arange(num_shards, dtype=np.int64) * len(order)) // num_shards
    return order[index]


def next_servers(
    homes: npt.NDArray[np.int16], servers: Sequence[int], copies: int = 1
) -> npt.NDArray[np.int16]:
    """Each shard's ``copies`` backups (one row per shard): the servers after its home in id
    order, wrapping around; NO_BACKUP in the slots that too few servers leave empty.

    Computed per column with numpy: a million shards over a thousand servers took the
    coordinator minutes shard by shard, when the job starts."""
    order = np.asarray(sorted(servers), dtype=np.int64)
    backups = np.full((len(homes), copies), NO_BACKUP, dtype=np.int16)
    if not len(order):
        return backups
    at = np.searchsorted(order, homes)
    listed = order[np.minimum(at, len(order) - 1)] == homes
    # a listed home's backups start after it and never reach it again (at most n - 1 of
    # them); a home not listed (gone) takes the first servers in order
    start = np.where(listed, at + 1, 0)
    room = np.where(listed, len(order) - 1, len(order))
    for slot in range(copies):
        filled = slot < room
        backups[filled, slot] = order[(start[filled] + slot) % len(order)]
    return backups


NO_BACKUP = shard_rows.NO_BACKUP  # defined where the columns are encoded: the wire sits below
MAX_BACKUP_WIDTH = MAX_REPLICATION + 1  # a chain is one slot wider while a server drains


@dataclass
class ShardMap:
    """Shard -> home server (and backup servers), with the epoch this assignment began.

    ``backups[s]`` is shard ``s``'s replication chain after its home, in order: the home
    replicates to ``backups[s, 0]``, which passes the rows on to ``backups[s, 1]``, and so on
    (:mod:`dynaps.node.replication`); NO_BACKUP fills the slots too few servers leave empty,
    always at the end.
    """

    epoch: int
    num_shards: int
    partition: Partition
    homes: npt.NDArray[np.int16]
    backups: npt.NDArray[np.int16] | None = None  # (num_shards, replication), only with replication

    @classmethod
    def initial(cls, num_shards: int, partition: Partition, servers: Sequence[int]) -> ShardMap:
        return cls(1, num_shards, Partition(partition), balanced_homes(num_shards, servers))

    def shard_of(self, keys: npt.NDArray[np.int64], num_keys: int) -> npt.NDArray[np.int64]:
        return shard_of(keys, num_keys, self.num_shards, self.partition)

    def chains(self) -> npt.NDArray[np.int16]:
        """Per shard: its home, then its backups in replication order (num_shards, 1 + copies)."""
        if self.backups is None:
            return self.homes[:, None]
        return np.column_stack([self.homes, self.backups])

    def backup_slots(self, width: int) -> npt.NDArray[np.int16]:
        """The backups padded with NO_BACKUP to ``width`` slots (a chain is one slot wider
        while a draining server hands its backups over), to compare maps of either width."""
        assert self.backups is not None
        missing = width - self.backups.shape[1]
        if missing <= 0:
            return self.backups
        return np.pad(self.backups, ((0, 0), (0, missing)), constant_values=NO_BACKUP)

    def home_of(self, keys: npt.NDArray[np.int64], num_keys: int) -> npt.NDArray[np.int16]:
        return self.homes[shard_of(keys, num_keys, self.num_shards, self.partition)]

    def servers(self) -> list[int]:
        return sorted({int(h) for h in np.unique(self.homes)})

    def to_json(self) -> dict[str, Any]:
        """The map as a JSON document; its columns as :mod:`dynaps.wire.shard_rows` packs them."""
        doc: dict[str, Any] = {
            "epoch": self.epoch,
            "numShards": self.num_shards,
            "partition": str(self.partition),
            "homes": shard_rows.pack(self.homes),
        }
        if self.backups is not None:
            doc["backupWidth"] = self.backups.shape[1]
            doc["backups"] = shard_rows.pack(self.backups)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any], known_nodes: set[int] | None = None) -> ShardMap:
        try:
            epoch = int(doc["epoch"])
            num_shards = int(doc["numShards"])
            partition = Partition(doc["partition"])
            width = int(doc["backupWidth"]) if "backups" in doc else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"invalid shard map: {exc}") from exc
        if not 1 <= num_shards <= MAX_SHARDS:
            raise ProtocolError(f"a shard map has 1 to {MAX_SHARDS} shards, not {num_shards}")
        if width is not None and not 1 <= width <= MAX_BACKUP_WIDTH:
            raise ProtocolError(f"a shard map's backup rows are 1 to {MAX_BACKUP_WIDTH} wide, not {width}")
        homes = shard_rows.unpack(doc.get("homes"), num_shards)  # missing: not text, refused
        backups = None
        if width is not None:
            backups = shard_rows.unpack(doc["backups"], num_shards * width).reshape(num_shards, width)
        if known_nodes is not None and not set(homes.tolist()) <= known_nodes:
            raise ProtocolError("shard map names unknown servers")
        return cls(epoch, num_shards, partition, homes, backups)
