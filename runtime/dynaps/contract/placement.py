"""Where keys live and how they move: ``spec.allocation`` (whether keys may move to the node
that uses them) and ``spec.rebalancePolicy`` (shards, partitioning, migrations)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from dynaps.contract.base import WHOLE_NUMBER, Model


class Allocation(StrEnum):
    DYNAMIC = "dynamic"  # Lapse: keys can move to the node that uses them (localize)
    STATIC = "static"  # classic parameter server: keys stay on their home server


class Partition(StrEnum):
    RANGE = "range"
    HASH = "hash"


class RebalancePolicy(Model):
    num_shards: Annotated[int, Field(ge=1, le=1 << 20), WHOLE_NUMBER] = 1024
    """Shards the keys are split into: what a server homes and a migration moves. Fixed at creation."""
    partition: Partition = Partition.RANGE
    """range: a shard is a range of neighbouring keys; hash: keys are spread over the shards. Fixed at
    creation."""
    max_concurrent_migrations: Annotated[int, Field(ge=1), WHOLE_NUMBER] = 4
    """Migrations of shards between servers in flight at once, in the whole job (a server sends one at a
    time, a joining server may receive several). With hundreds of servers a larger value shortens a
    rebalance (docs/scaling.md)."""
    drain_timeout_seconds: Annotated[int, Field(ge=1), WHOLE_NUMBER] = 60
    """How long a leaving node (scale-in, an eviction's SIGTERM, POST /drain) may take to hand its keys away
    before its pod is deleted anyway; also how long a suspension waits for its checkpoint."""
