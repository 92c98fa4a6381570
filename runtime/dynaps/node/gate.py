"""Holding requests for shards that are briefly unavailable at their home.

A shard is *blocked* while it is frozen for a migration or while its new home rebuilds
its directory after a crash.  Requests that touch a blocked shard wait here, in arrival
order, and are handled again once it is unblocked; the rest of the node keeps serving.
Blocks are counted, so a shard frozen by one duty and recovering for another stays held
until both end.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from dynaps.store.shardmap import ShardMap, shard_of
from dynaps.wire.protocol import Message


class ShardGate:
    def __init__(self) -> None:
        self.blocks: npt.NDArray[np.int16] | None = None  # per shard: how many duties hold it
        self.held: list[Message] = []

    def block(self, shards: npt.NDArray[np.int64], num_shards: int) -> None:
        if self.blocks is None:
            self.blocks = np.zeros(num_shards, dtype=np.int16)
        np.add.at(self.blocks, shards, 1)

    def unblock(self, shards: npt.NDArray[np.int64]) -> None:
        if self.blocks is None:
            return
        np.subtract.at(self.blocks, shards, 1)
        if not self.blocks.any():
            self.blocks = None

    def blocked(
        self, keys: npt.NDArray[np.int64], num_keys: int, shard_map: ShardMap
    ) -> npt.NDArray[np.bool_]:
        """Which of ``keys`` fall into blocked shards."""
        assert self.blocks is not None
        return self.blocks[shard_of(keys, num_keys, shard_map.num_shards, shard_map.partition)] > 0

    def park(self, msg: Message) -> None:
        self.held.append(msg)

    def release(self, still_blocked: Callable[[Message], bool]) -> list[Message]:
        """Held messages that may go on now, in arrival order."""
        if self.blocks is None:
            held, self.held = self.held, []
            return held
        keep: list[Message] = []
        out: list[Message] = []
        for msg in self.held:
            (keep if still_blocked(msg) else out).append(msg)
        self.held = keep
        return out
