"""Bodies of control-plane messages (JSON), validated by pydantic on receipt.

The data plane (pull, push, localize) is binary and lives in :mod:`dynaps.wire.protocol`;
the control plane is rare and benefits more from readable, validated documents.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynaps.contract import MAX_NODES, RuntimeConfig
from dynaps.errors import ClusterError, ProtocolError
from dynaps.wire.protocol import COORDINATOR, Message, MsgType, client_of, decode
from dynaps.wire.transport import Transport

log = logging.getLogger(__name__)

Role = Literal["server", "worker"]
Phase = Literal["prepare", "running", "stopping"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Register(_Body):
    role: Literal["server", "worker", "client"]
    address: str = Field(max_length=300)
    nonce: str = Field(max_length=64)
    config_digest: str = Field(max_length=64)
    pid: int = 0
    name: str = Field(default="", max_length=253)
    rank: int | None = Field(default=None, ge=0, lt=MAX_NODES)
    node: int | None = Field(default=None, ge=1, le=MAX_NODES)  # a client's node


class Welcome(_Body):
    node: int = Field(ge=1, le=MAX_NODES)
    nonce: str
    rank: int | None = None
    barrier: int = 0  # a client's first barrier generation (it may join a running job)


class Refused(_Body):
    nonce: str
    reason: str


class NodeInfo(_Body):
    id: int = Field(ge=1, le=MAX_NODES)
    role: Role
    address: str
    client: str | None = None  # the address of the worker's training process
    rank: int | None = None
    name: str = ""
    ready: bool = False


class Heartbeat(_Body):
    """A node's periodic sign of life; enough to rebuild the job after a coordinator restart."""

    role: Role
    address: str = Field(max_length=300)
    name: str = ""
    rank: int | None = None
    client: str | None = None
    epoch: int = 0
    exit_code: int | None = None
    draining: bool = False


class Rejoin(_Body):
    heartbeat: Heartbeat
    shard_map: dict[str, Any]


class Membership(_Body):
    version: int = Field(ge=0)
    incarnation: str = ""  # changes when the coordinator restarts: clients repeat what waits
    phase: Phase
    nodes: list[NodeInfo]
    shard_map: dict[str, Any]
    num_workers: int = Field(ge=0)
    lost: list[int] = Field(default_factory=list)  # nodes that died: their keys are recovered

    def node(self, node_id: int) -> NodeInfo | None:
        for info in self.nodes:
            if info.id == node_id:
                return info
        return None


class Ready(_Body):
    version: int


class Barrier(_Body):
    generation: int = Field(ge=0)


class WorkerDone(_Body):
    exit_code: int


class Shutdown(_Body):
    reason: str = ""
    exit_code: int = 0


class Leave(_Body):
    reason: str = ""


class MigrateOut(_Body):
    id: int = Field(ge=1)
    shards: list[int]
    target: int = Field(ge=1, le=MAX_NODES)
    epoch: int = Field(ge=0)


class MigrateReady(_Body):
    id: int = Field(ge=1)


class Recover(_Body):
    id: int = Field(ge=1)
    shards: list[int]
    source: Literal["replica", "checkpoint", "initial"]


class OwnersQuery(_Body):
    id: int = Field(ge=1)
    shards: list[int]


class Checkpoint(_Body):
    id: int = Field(ge=1)
    phase: Literal["pause", "write", "resume"]
    path: str = ""


class CheckpointDone(_Body):
    id: int = Field(ge=1)
    phase: Literal["pause", "write"]
    keys: int = 0


class Lease(_Body):
    epoch: int = Field(ge=0)
    num_shards: int = Field(ge=1, le=10_000_000)
    finished: int | None = Field(default=None, ge=0)


class LeaseReply(_Body):
    epoch: int
    shard: int | None


class Report(_Body):
    metrics: dict[str, float]


class Stats(_Body):
    counters: dict[str, int | float | str]


Body = TypeVar("Body", bound=BaseModel)


def parse(model: type[Body], body: dict[str, Any] | None) -> Body:
    """Validate a control body; a bad one is a ProtocolError like any malformed frame."""
    try:
        return model.model_validate(body or {})
    except ValidationError as exc:
        raise ProtocolError(f"invalid {model.__name__} body: {exc.errors()[:2]}") from exc


def config_digest(config: RuntimeConfig) -> str:
    """A short digest of what must be identical across a job's processes (the tables)."""
    tables = [t.to_wire() for t in config.tables]
    text = repr((tables, config.rebalance_policy.num_shards, str(config.rebalance_policy.partition)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def connect_members(transport: Transport, membership: Membership) -> set[int]:
    """Point the transport at every node and client of the membership; returns their ids."""
    endpoints: set[int] = set()
    for info in membership.nodes:
        if info.id != transport.endpoint:
            transport.connect(info.id, info.address)
        endpoints.add(info.id)
        if info.client is not None:
            if client_of(info.id) != transport.endpoint:
                transport.connect(client_of(info.id), info.client)
            endpoints.add(client_of(info.id))
    return endpoints


def await_coordinator(transport: Transport, kinds: set[MsgType], deadline: float, what: str) -> Message:
    """Wait for one of ``kinds`` from the coordinator; other messages are dropped."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClusterError(f"timed out waiting for {what} from the coordinator")
        frames = transport.recv(timeout=min(remaining, 0.5))
        if frames is None:
            continue
        try:
            msg = decode(frames, [])
        except ProtocolError as exc:
            log.debug("ignored before start-up: %s", exc)
            continue
        if msg.sender != COORDINATOR:
            continue
        if msg.type is MsgType.REFUSED:
            raise ClusterError(f"the coordinator refused this process: {(msg.body or {}).get('reason')}")
        if msg.type is MsgType.SHUTDOWN:
            raise ClusterError(f"the job ended before this node started: {(msg.body or {}).get('reason')}")
        if msg.type in kinds:
            return msg
