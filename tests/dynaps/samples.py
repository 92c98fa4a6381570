"""Valid bodies of every control message type, for tests that need one of each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from dynaps.contract import Partition
from dynaps.store.shardmap import ShardMap
from dynaps.wire import control
from dynaps.wire.protocol import MsgType

NODE = {"id": 1, "role": "server", "address": "tcp://127.0.0.1:1"}
HEARTBEAT = {"role": "worker", "address": "tcp://127.0.0.1:2", "rank": 0}
SAMPLE_BODIES: dict[MsgType, dict[str, Any]] = {
    MsgType.REGISTER: {"role": "server", "address": "tcp://127.0.0.1:1", "nonce": "n", "config_digest": "d"},
    MsgType.WELCOME: {"node": 1, "nonce": "n", "rank": 0},
    MsgType.MEMBERSHIP: {
        "version": 3,
        "phase": "running",
        "nodes": [NODE],
        "shard_map": {"epoch": 1},
        "num_workers": 1,
    },
    MsgType.READY: {"version": 3},
    MsgType.BARRIER: {"generation": 2},
    MsgType.BARRIER_DONE: {"generation": 2},
    MsgType.WORKER_DONE: {"exit_code": 0},
    MsgType.SHUTDOWN: {"reason": "done", "exit_code": 0},
    MsgType.STATS: {},
    MsgType.STATS_REPLY: {"counters": {"messages": 3, "phase": "running"}},
    MsgType.HEARTBEAT: HEARTBEAT,
    MsgType.PING: {},
    MsgType.PONG: {},
    MsgType.CLOCK: {"clock": 4},
    MsgType.CLOCK_MIN: {"clock": 3},
    MsgType.REFUSED: {"nonce": "n", "reason": "no room"},
    MsgType.LEAVE: {"reason": "scale-in"},
    MsgType.LEFT: {},
    MsgType.DRAIN: {"reason": "drain requested"},
    MsgType.MIGRATE_OUT: {"id": 1, "shards": [0, 5], "target": 2, "epoch": 4},
    MsgType.MIGRATE_READY: {"id": 1},
    MsgType.CHECKPOINT: {"id": 1, "phase": "write", "path": "/ckpt/1"},
    MsgType.CHECKPOINT_DONE: {"id": 1, "phase": "write", "keys": 10},
    MsgType.LEASE: {"epoch": 0, "num_shards": 8},
    MsgType.LEASE_REPLY: {"epoch": 0, "shard": 3},
    MsgType.RECOVER: {"id": 2, "shards": [1], "source": "replica", "holders": [3, 4]},
    MsgType.RECOVERED: {"id": 2, "keys": 120},
    MsgType.OWNERS_QUERY: {"id": 2, "shards": [1]},
    MsgType.MIGRATE_ABORT: {"id": 1},
    MsgType.REPORT: {"metrics": {"rmse": 0.5}},
    MsgType.ADOPT: {},
    MsgType.REJOIN: {"heartbeat": HEARTBEAT, "shard_map": {"epoch": 1}},
    MsgType.REPLICA_SYNCED: {"epoch": 3, "home": 1, "shards": [0, 4]},
    MsgType.STAGE: {"done": 3},
    MsgType.STAGE_DONE: {"done": 3, "index": 1, "leave": True},
    MsgType.MEMBERSHIP_DELTA: {
        "base": 3,
        "version": 4,
        "phase": "running",
        "num_workers": 1,
        "changed": [{**NODE, "id": 2, "ready": True}],
        "removed": [3],
        "lost": [3],
        "epoch": 2,
        "shards": [0, 5],
        "homes": [2, 1],
        "backups": [[1], [-1]],
    },
    MsgType.MEMBERSHIP_QUERY: {"version": 3},
    MsgType.HOLDING: {"id": 1, "shards": [0, 3]},
    MsgType.HOLDING_NOTED: {"id": 1, "shards": [0, 3]},
    MsgType.TOOK_BACK: {"node": 4, "keys": 50, "shards": [0, 1]},
    MsgType.HANDOFF_LOST: {"node": 1, "keys": 3, "shards": [2]},
}


def sample_body(kind: MsgType) -> BaseModel:
    """A valid body of ``kind``, parsed into its model."""
    return control.BODIES[kind].model_validate(SAMPLE_BODIES[kind])


def shard_map_doc(
    homes: Sequence[int],
    backups: Sequence[Sequence[int]] | None = None,
    epoch: int = 1,
    partition: str = "range",
) -> dict[str, Any]:
    """A shard map document as the wire carries it, from its homes and backup rows."""
    rows = None if backups is None else np.asarray(backups, dtype=np.int16).reshape(len(homes), -1)
    return ShardMap(
        epoch, len(homes), Partition(partition), np.asarray(homes, dtype=np.int16), rows
    ).to_json()


def homes_of(doc: dict[str, Any]) -> list[int]:
    """A shard map document's homes, one per shard."""
    return [int(h) for h in ShardMap.from_json(doc).homes]


def backups_of(doc: dict[str, Any]) -> list[list[int]] | None:
    """A shard map document's backup rows (None without replication)."""
    backups = ShardMap.from_json(doc).backups
    return None if backups is None else backups.tolist()
