"""Bodies of control-plane messages (JSON): one pydantic model per message type.

The data plane (pull, push, localize) is binary and lives in :mod:`dynaps.wire.protocol`;
the control plane is rare and benefits more from readable, validated documents.
:data:`BODIES` names the model of every control type: :func:`dynaps.wire.codec.decode`
parses a body into it once, on receipt, and :func:`dynaps.wire.messages.control` refuses
to send a body of another model.  Handlers read typed fields (:func:`body_of`), never
``dict.get``.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dynaps.contract import MAX_NODES, RuntimeConfig
from dynaps.errors import ProtocolError
from dynaps.wire.protocol import Message, MsgType

Role = Literal["server", "worker"]


class Phase(StrEnum):
    """The job's phase as the coordinator announces it in every membership."""

    PREPARE = "prepare"  # the first shard map: nodes load and wait for READY
    RUNNING = "running"
    STOPPING = "stopping"


class CheckpointPhase(StrEnum):
    """The steps of one checkpoint round (the coordinator's orders)."""

    PAUSE = "pause"  # stop relocations, report when quiet
    WRITE = "write"  # write the owned rows to the round's directory
    RESUME = "resume"


class RecoverySource(StrEnum):
    """Where a new home rebuilds a lost server's shards from, best first."""

    REPLICA = "replica"
    CHECKPOINT = "checkpoint"
    INITIAL = "initial"


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
    clock: int = Field(default=0, ge=0)  # a client's first clock: the slowest running worker's


class Refused(_Body):
    """Who it answers is named inside, under the MAC: the message goes to a temporary
    endpoint that any receiver accepts, so a captured one replayed elsewhere must not count."""

    nonce: str  # the refused registration's ("" for a fence)
    reason: str
    node: int | None = Field(default=None, ge=1, le=MAX_NODES)  # the lost node a fence is for


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


LOSS_REPORTS_KEPT = 64  # TOOK_BACK and HANDOFF_LOST a node keeps, to say again to a new coordinator
LOSS_REPORT_SHARDS = 4096  # the shards those name in one REJOIN, at most (the newest reports first)
# the synced replicas one REJOIN names, at most: at a million shards its shard map alone takes
# 6.0 MiB of the 16 a body may have (2 servers, replication 1) to 13.7 (1,000 servers, 2), and
# a backup of 2 to 10 servers holds 300k-500k shards; a backup of more names none (conservative)
REJOIN_REPLICA_SHARDS = 1 << 16
# a member as a node knew it: its id and, for a worker, its rank (None for a server)
_Rank = Annotated[int, Field(ge=0, lt=MAX_NODES)]
KnownMember = tuple[Annotated[int, Field(ge=1, le=MAX_NODES)], _Rank | None]
# a member's pod name as a node knew it (id, name)
KnownName = tuple[Annotated[int, Field(ge=1, le=MAX_NODES)], Annotated[str, Field(max_length=253)]]


class Adopt(_Body):
    """ADOPT (a restarted coordinator to a node it heard): answer with REJOIN.  ``members``:
    with the members and the lost nodes of the node's last membership (asked of the first few
    nodes heard only: from every node, a thousand lists of a thousand would cost the
    coordinator O(N^2))."""

    members: bool = False


class Rejoin(_Body):
    heartbeat: Heartbeat
    shard_map: dict[str, Any]
    # the highest node id this node has heard of: a restarted coordinator must never give a
    # dead node's id to a new one (the others drop whatever goes to a lost id)
    highest_node_id: int = Field(default=0, ge=0, le=MAX_NODES)
    # the members of the last membership this node received, (id, a worker's rank): a restarted
    # coordinator declares lost those no one heard from, so what they held is taken back as a
    # loss, never forgotten as if they had left, and a worker's rank waits for its replacement
    members: list[KnownMember] = Field(default_factory=list, max_length=MAX_NODES)
    members_version: int = Field(default=0, ge=0)  # that membership's version (a node may lag)
    # the names of those members: a recreated pod's REGISTER under one of them says that member
    # is gone, so the rebuilding need not wait out its silence
    member_names: list[KnownName] = Field(default_factory=list, max_length=MAX_NODES)
    # the nodes that membership lists as lost: lost for good, whatever coordinator asks
    lost: list[Annotated[int, Field(ge=1, le=MAX_NODES)]] = Field(default_factory=list, max_length=MAX_NODES)
    # the losses it reported (its latest, at most LOSS_REPORTS_KEPT and LOSS_REPORT_SHARDS
    # shards): a coordinator that died before it recorded them must not leave them unsaid (the
    # operator knows a loss it saw before)
    took_back: list[TookBack] = Field(default_factory=list, max_length=LOSS_REPORTS_KEPT)
    handoff_lost: list[HandoffLost] = Field(default_factory=list, max_length=LOSS_REPORTS_KEPT)
    # the shards this node holds synced replicas of at the epoch of ``shard_map`` (the
    # REPLICA_SYNCED reports of that epoch it passed on, one per home): a restarted coordinator
    # counts on them as the one before would have, so losing a home while it was away is no
    # loss where a synced backup lives
    replicas: list[ReplicaSynced] = Field(default_factory=list, max_length=MAX_NODES)


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


MAX_SHARDS = 1 << 20  # as the contract's rebalancePolicy.numShards
ShardId = Annotated[int, Field(ge=0, lt=MAX_SHARDS)]
NodeId = Annotated[int, Field(ge=1, le=MAX_NODES)]
BackupId = Annotated[int, Field(ge=-1, le=MAX_NODES)]  # -1: NO_BACKUP, a slot left empty


class MembershipDelta(_Body):
    """What changed from membership ``base`` to ``version`` (MEMBERSHIP_DELTA): a few hundred
    bytes for a join, a leave or a loss, however large the job (MEMBERSHIP, the whole
    document, goes to joiners and to a process that missed a version and asks for it).

    Every field is an absolute value, never an increment: ``changed`` nodes are listed whole
    (joined, or their ready flag or training process changed), the ``shards`` rows are
    their new homes and backups.  :func:`dynaps.wire.membership_deltas.apply` checks it against the
    receiver's own membership (ids known, shards in range)."""

    base: int = Field(ge=0)  # the version it applies to
    version: int = Field(ge=1)
    incarnation: str = Field(default="", max_length=64)
    phase: Phase
    num_workers: int = Field(ge=0, le=MAX_NODES)
    changed: list[NodeInfo] = Field(default_factory=list, max_length=MAX_NODES)
    removed: list[NodeId] = Field(default_factory=list, max_length=MAX_NODES)  # left or lost
    lost: list[NodeId] = Field(default_factory=list, max_length=MAX_NODES)  # newly lost
    epoch: int = Field(ge=0)  # of the shard map
    shards: list[ShardId] = Field(default_factory=list, max_length=MAX_SHARDS)
    homes: list[NodeId] = Field(default_factory=list, max_length=MAX_SHARDS)  # one per shard
    # with replication, each shard's backups in chain order (one row per shard)
    backups: list[list[BackupId]] | None = Field(default=None, max_length=MAX_SHARDS)

    @model_validator(mode="after")
    def _consistent(self) -> MembershipDelta:
        if self.version <= self.base:
            raise ValueError("a delta's version must be above its base")
        if len(self.homes) != len(self.shards):
            raise ValueError("one home per shard")
        if self.backups is not None and len(self.backups) != len(self.shards):
            raise ValueError("one row of backups per shard")
        if len(set(self.shards)) != len(self.shards):
            raise ValueError("a shard listed twice")
        ids = [info.id for info in self.changed]
        if len(set(ids)) != len(ids) or set(ids) & set(self.removed):
            raise ValueError("a node listed twice")
        return self


class MembershipQuery(_Body):
    """A process that missed a membership version asks for the whole document."""

    version: int = Field(ge=0)  # the version it holds (0: none)


class Empty(_Body):
    """The body of PING, PONG, STATS (the request) and LEFT."""


class Ready(_Body):
    version: int


class Clock(_Body):
    """A worker's clock (CLOCK), or the minimum over all workers (CLOCK_MIN)."""

    clock: int = Field(ge=0)


class Barrier(_Body):
    generation: int = Field(ge=0)


class WorkerDone(_Body):
    exit_code: int


class Shutdown(_Body):
    reason: str = ""
    exit_code: int = 0


class Leave(_Body):
    reason: str = ""


class Drain(_Body):
    """The coordinator asks a node to leave (a scale-in or an operator's drain)."""

    reason: str = ""


class MigrateOut(_Body):
    id: int = Field(ge=1)
    shards: list[int]
    target: int = Field(ge=1, le=MAX_NODES)
    epoch: int = Field(ge=0)
    # a hand-over (target: the home itself): the backup leaving the shards' chains; the
    # home holds their requests until the epoch that takes it out
    leaving: int = Field(default=0, ge=0, le=MAX_NODES)


class MigrateReady(_Body):
    id: int = Field(ge=1)


class MigrateAbort(_Body):
    id: int = Field(ge=1)


class Recover(_Body):
    id: int = Field(ge=1)
    shards: list[int]
    source: RecoverySource
    # the nodes other than the home that may hold or expect keys of ``shards``
    # (:mod:`dynaps.coordinator.holders`); None: not known, the home asks every node
    holders: list[NodeId] | None = Field(default=None, max_length=MAX_NODES)


class Recovered(_Body):
    id: int = Field(ge=1)
    keys: int = Field(default=0, ge=0)  # keys the home rebuilt itself (from its source): held by nobody


class ReplicaSynced(_Body):
    """A home sent its backup every key of ``shards`` (home to backup, after the rows, on the
    same path); the backup, holding them, passes it on to the coordinator."""

    epoch: int = Field(ge=1)  # the home's shard map when it sent the rows
    home: int
    shards: list[int]
    # non-zero: the home froze ``shards`` for this migration and sent nothing after (the
    # coordinator commits the migration once every synced backup has passed this on)
    migration: int = Field(default=0, ge=0)


class Holding(_Body):
    """HOLDING (a training process to the coordinator): its node may hold or expect keys of
    ``shards`` from now on (it is about to localize some); HOLDING_NOTED (the answer, the same
    body): the coordinator counts the node among their possible holders, so a recovery of
    those shards asks it.  The program localizes only after the answer
    (:mod:`dynaps.client.holdings`)."""

    id: int = Field(ge=1)
    shards: list[ShardId] = Field(min_length=1, max_length=MAX_SHARDS)


class TookBack(_Body):
    """TOOK_BACK (a home to the coordinator): it took back ``keys`` keys that lost node
    ``node`` held (or was handing on), in ``shards``, with its own copy of their values (the
    last write-back under replication): the updates since are lost."""

    node: int = Field(ge=1, le=MAX_NODES)
    keys: int = Field(ge=1)
    shards: list[ShardId] = Field(min_length=1, max_length=MAX_SHARDS)
    epoch: int = Field(default=0, ge=0)  # the home's shard map when it took them back


class HandoffLost(_Body):
    """HANDOFF_LOST (a draining node to the coordinator): it gave ``keys`` keys of ``shards``
    back to their home, lost node ``node``, which died before it confirmed their arrival:
    the shards' new home rebuilt them from their last write-back, without what the sender
    changed since its last flush."""

    node: int = Field(ge=1, le=MAX_NODES)
    keys: int = Field(ge=1)
    shards: list[ShardId] = Field(min_length=1, max_length=MAX_SHARDS)
    epoch: int = Field(default=0, ge=0)  # the sender's shard map when it found them lost


class OwnersQuery(_Body):
    id: int = Field(ge=1)
    shards: list[int]


class Checkpoint(_Body):
    id: int = Field(ge=1)
    phase: CheckpointPhase
    path: str = ""


class CheckpointDone(_Body):
    id: int = Field(ge=1)
    phase: Literal[CheckpointPhase.PAUSE, CheckpointPhase.WRITE]
    keys: int = 0
    failed: str = Field(default="", max_length=500)  # why this node could not write: the round is abandoned


class Lease(_Body):
    epoch: int = Field(ge=0)
    num_shards: int = Field(ge=1, le=10_000_000)
    finished: int | None = Field(default=None, ge=0)


class LeaseReply(_Body):
    epoch: int
    shard: int | None


class Stage(_Body):
    """STAGE (client to coordinator): the program completed ``done`` units (epochs or steps) of
    the job's stages, counted over all stages; None: it starts and asks where the job is."""

    done: int | None = Field(default=None, ge=0)


class StageDone(_Body):
    """STAGE_DONE (coordinator to client): the job has completed ``done`` units over all stages,
    which puts it in stage ``index`` (== the number of stages once all ran); ``leave``: this
    worker is not in that stage, its program ends (its node drains)."""

    done: int = Field(ge=0)
    index: int = Field(ge=0)
    leave: bool = False


class Report(_Body):
    metrics: dict[str, float]


class Stats(_Body):
    counters: dict[str, int | float | str]


Rejoin.model_rebuild()  # it names TookBack, HandoffLost and ReplicaSynced, defined after it

BODIES: dict[MsgType, type[BaseModel]] = {
    MsgType.REGISTER: Register,
    MsgType.WELCOME: Welcome,
    MsgType.MEMBERSHIP: Membership,
    MsgType.READY: Ready,
    MsgType.BARRIER: Barrier,
    MsgType.BARRIER_DONE: Barrier,
    MsgType.WORKER_DONE: WorkerDone,
    MsgType.SHUTDOWN: Shutdown,
    MsgType.STATS: Empty,
    MsgType.STATS_REPLY: Stats,
    MsgType.HEARTBEAT: Heartbeat,
    MsgType.PING: Empty,
    MsgType.PONG: Empty,
    MsgType.CLOCK: Clock,
    MsgType.CLOCK_MIN: Clock,
    MsgType.REFUSED: Refused,
    MsgType.LEAVE: Leave,
    MsgType.LEFT: Empty,
    MsgType.DRAIN: Drain,
    MsgType.MIGRATE_OUT: MigrateOut,
    MsgType.MIGRATE_READY: MigrateReady,
    MsgType.CHECKPOINT: Checkpoint,
    MsgType.CHECKPOINT_DONE: CheckpointDone,
    MsgType.LEASE: Lease,
    MsgType.LEASE_REPLY: LeaseReply,
    MsgType.RECOVER: Recover,
    MsgType.RECOVERED: Recovered,
    MsgType.OWNERS_QUERY: OwnersQuery,
    MsgType.MIGRATE_ABORT: MigrateAbort,
    MsgType.REPORT: Report,
    MsgType.ADOPT: Adopt,
    MsgType.REJOIN: Rejoin,
    MsgType.REPLICA_SYNCED: ReplicaSynced,
    MsgType.STAGE: Stage,
    MsgType.STAGE_DONE: StageDone,
    MsgType.MEMBERSHIP_DELTA: MembershipDelta,
    MsgType.MEMBERSHIP_QUERY: MembershipQuery,
    MsgType.HOLDING: Holding,
    MsgType.HOLDING_NOTED: Holding,
    MsgType.TOOK_BACK: TookBack,
    MsgType.HANDOFF_LOST: HandoffLost,
}

Body = TypeVar("Body", bound=BaseModel)


def parse(model: type[Body], body: dict[str, Any]) -> Body:
    """Validate a control body; a bad one is a ProtocolError like any malformed frame."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ProtocolError(f"invalid {model.__name__} body: {exc.errors()[:2]}") from exc


def body_of(msg: Message, model: type[Body]) -> Body:
    """The body of ``msg``, already parsed on receipt, as the ``model`` its type has."""
    if not isinstance(msg.body, model):
        raise ProtocolError(f"{msg.type.name} carries {type(msg.body).__name__}, not {model.__name__}")
    return msg.body


def config_digest(config: RuntimeConfig) -> str:
    """A short digest of what must be identical across a job's processes (the tables)."""
    tables = [t.to_wire() for t in config.tables]
    text = repr((tables, config.rebalance_policy.num_shards, str(config.rebalance_policy.partition)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
