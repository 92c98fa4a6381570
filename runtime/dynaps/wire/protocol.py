"""The dynaps wire protocol: every message that crosses a socket is defined here.

A message is a ZeroMQ multipart message.  Frame 0 is a fixed 32-byte header; the
frames after it are raw arrays sent without copying (keys, positions, values, optimiser
state), or one UTF-8 JSON body for control messages.  Nothing is ever pickled.

Header (little-endian, 32 bytes)::

     0       1       2               4               6               8
    +-------+-------+---------------+---------------+---------------+
    |version| type  |     flags     |     table     |    sender     |
    +-------+-------+---------------+---------------+---------------+
    8               10              12                              16
    +---------------+---------------+-------------------------------+
    |   requester   |     hops      |             epoch             |
    +---------------+---------------+-------------------------------+
    16                                                              24
    +---------------------------------------------------------------+
    |                          request id                           |
    +---------------------------------------------------------------+
    24                              28                              32
    +-------------------------------+-------------------------------+
    |             count             |              aux              |
    +-------------------------------+-------------------------------+

    version    u8   PROTOCOL_VERSION
    type       u8   a MsgType
    flags      u16  Flag bits (HAS_POSITIONS, ...)
    table      u16  index of the table in the job's configuration
    sender     i16  endpoint that sent this frame (a node, a client, the coordinator)
    requester  i16  endpoint that receives the reply (kept when a request is forwarded)
    hops       u16  how often the request was forwarded (guards against loops)
    epoch      u32  the sender's shard-map epoch
    request id u64  chosen by the requester, echoed in every reply
    count      u32  number of keys in the message (or acknowledged by it)
    aux        u32  type-specific: HANDOFF target node; TRANSFER, REPLICATE, WRITEBACK,
                    SHARD_COPY state-array count; OWNERS held/expected;
                    PUSH, SET the client's watermark (all its requests below are answered)

Payload sections after the header, by type (``[x]`` is present when HAS_POSITIONS is set)::

    PULL        keys [positions]
    PULL_REPLY  [positions] values
    PUSH, SET   keys [positions] values
    ACK         [positions]
    LOCALIZE    keys                       (to the home: make the requester the owner)
    RELEASE     keys                       (to the home: take these keys back, for a drain)
    HANDOFF     keys                       aux = node that receives the keys
    TRANSFER    keys values state*aux [records]   (flag RECORDS: a last JSON frame with
                the applied-request records of these keys; flag RECOVERY: re-sent by a home)
    TRANSFER_DONE keys                     (new owner -> home: the keys arrived)
    SHARD_COPY  keys owner moving values state*aux [records]   (old home -> new home, a
                migration: the directory entries and the home's rows of every key, also of
                keys a worker holds (their write-back copy); req_id = migration id, FINAL on
                the last part; the parts sent at the freeze carry the applied-request
                records of the shards' keys, flag RECORDS)
    OWNERS      keys                       (node -> recovering home; aux 1: held, 2: expected)
    REPLICATE   keys [positions] values state*aux [records]   (home -> backup: rows after
                an update, the backup acknowledges the requester; a replica sync carries
                the applied-request records of its keys, flag RECORDS)
    WRITEBACK   keys [positions] values state*aux [records]   (holder -> home: current rows
                of keys it holds; with a client requester when writing through; flag RECORDS:
                the applied-request records of the keys, as TRANSFER)
    LOCALIZED   (none)
    ERROR       utf-8 text
    control     utf-8 JSON body (REGISTER ... REJOIN), one pydantic model per type
                (:data:`dynaps.wire.control.BODIES`), parsed once on receipt

Each section is its own frame, except that payloads of up to ``INLINE_MAX`` bytes are
appended to the header frame (flag INLINE): one frame costs less than the copy it takes.

keys are int64, positions int32 (indices into the requester's original key array, so a
request split over several owners is reassembled without a lookup), values and state
arrays are C-ordered ``count x dim`` arrays of the table's dtype.

This module holds the types; :mod:`dynaps.wire.codec` turns them into frames and back
(:func:`~dynaps.wire.codec.decode` validates everything a receiver relies on: sizes, key
ranges, position ranges, table index, the control body's model, and raises
:class:`ProtocolError` otherwise; receivers drop such a message, count it and keep
serving), and :mod:`dynaps.wire.messages` has one constructor per message type: nothing
outside the wire package builds a ``Message`` or packs a header.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from dynaps.errors import ProtocolError

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBHHhhHIQII")
HEADER_SIZE = HEADER.size
MAX_HOPS = 16
MAX_BODY_BYTES = 16 << 20

# Endpoint ids: the coordinator is 0, nodes are 1..MAX_NODE, and the client process of
# node n (the user's training program on a worker) is n | CLIENT_BIT.
COORDINATOR = 0
CLIENT_BIT = 0x4000
NO_ENDPOINT = -1

KeyArray = npt.NDArray[np.int64]
PosArray = npt.NDArray[np.int32]
ValueArray = npt.NDArray[Any]


class MsgType(enum.IntEnum):
    """Every message type; data-plane types are binary, control types carry JSON."""

    PULL = 1
    PULL_REPLY = 2
    PUSH = 3
    SET = 4
    ACK = 5
    LOCALIZE = 6
    HANDOFF = 7
    TRANSFER = 8
    LOCALIZED = 9
    ERROR = 10
    RELEASE = 11
    TRANSFER_DONE = 12
    SHARD_COPY = 13
    OWNERS = 14
    REPLICATE = 15
    WRITEBACK = 16
    # control plane: one JSON body frame
    REGISTER = 32
    WELCOME = 33
    MEMBERSHIP = 34
    READY = 35
    BARRIER = 36
    BARRIER_DONE = 37
    WORKER_DONE = 38
    SHUTDOWN = 39
    STATS = 40
    STATS_REPLY = 41
    HEARTBEAT = 42
    PING = 43
    PONG = 44
    CLOCK = 45
    CLOCK_MIN = 46
    REFUSED = 47
    LEAVE = 48
    LEFT = 49
    DRAIN = 50
    MIGRATE_OUT = 52
    MIGRATE_READY = 53
    CHECKPOINT = 54
    CHECKPOINT_DONE = 55
    LEASE = 56
    LEASE_REPLY = 57
    RECOVER = 58
    RECOVERED = 59
    OWNERS_QUERY = 60
    MIGRATE_ABORT = 61
    REPORT = 62
    ADOPT = 64
    REJOIN = 65
    REPLICA_SYNCED = 66
    STAGE = 67
    STAGE_DONE = 68
    # membership deltas (issue 15), numbered apart from the types above
    MEMBERSHIP_DELTA = 70
    MEMBERSHIP_QUERY = 71
    # targeted recovery (issue 15): a training process may hold keys of these shards
    HOLDING = 72
    HOLDING_NOTED = 73
    # a home took back the keys a lost node held (issue 13: the loss is counted)
    TOOK_BACK = 74
    # keys a node was giving back to their home died with it, their arrival unconfirmed (F9)
    HANDOFF_LOST = 75


# Flag bits (plain ints: IntFlag arithmetic is slow on the hot path)
HAS_POSITIONS = 1  # a positions section follows the keys (or starts a reply)
INLINE = 2  # the payload sections follow the header inside frame 0
INLINE_MAX = 16 * 1024  # payloads up to this size are inlined
FINAL = 4  # SHARD_COPY: the last part of a migration's copy
RECOVERY = 8  # TRANSFER: a home re-sends a key whose sender died; apply only if still expected
RETRY = 16  # a request sent again after a node was lost (nodes recognise what they applied)
# Exactly once: a node remembers which updates of each requester it applied, at most this
# many (dynaps.node.applied); a client never has more than half as many request ids between
# its watermark and its next id (dynaps.client.requests), so no record it may still need is
# dropped for room.
REMEMBERED_REQUESTS = 4096
RECORDS = 32  # TRANSFER, REPLICATE, SHARD_COPY, WRITEBACK: a JSON frame follows: applied-request records
DEFLATED = 64  # a control message's JSON body is deflated (zlib): a large one, as the whole membership
DEFLATE_OVER = 16 * 1024  # control bodies larger than this are deflated


def inflate(data: bytes, limit: int, what: str) -> bytes:
    """One deflate stream (zlib) inflated, never past ``limit`` bytes: a deflate bomb stops
    there.  ProtocolError, naming ``what``, for more than that, for what is not deflate, and
    for a stream cut short or followed by other bytes (a DEFLATED body, a shard map column)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"{what} does not inflate: {exc}") from exc
    if len(raw) > limit:
        raise ProtocolError(f"{what} too large")
    if not inflater.eof or inflater.unused_data:
        raise ProtocolError(f"{what} is not one deflate stream")
    return raw


WITH_RECORDS = frozenset(  # may carry RECORDS
    {MsgType.TRANSFER, MsgType.REPLICATE, MsgType.SHARD_COPY, MsgType.WRITEBACK}
)
CONTROL_TYPES = frozenset(t for t in MsgType if t >= MsgType.REGISTER)
# Parts of these carry no positions (routing.subset).  A WRITEBACK's parts keep theirs: the
# home's acknowledgement and its record of a written-through update name its positions.
NO_POSITIONS = frozenset(
    {
        MsgType.LOCALIZE,
        MsgType.HANDOFF,
        MsgType.RELEASE,
        MsgType.TRANSFER_DONE,
        MsgType.OWNERS,
    }
)


def client_of(node: int) -> int:
    """The endpoint id of node ``node``'s client process."""
    return node | CLIENT_BIT


def is_client(endpoint: int) -> bool:
    """Whether ``endpoint`` is a training process (not a node, the coordinator or nobody)."""
    return endpoint > 0 and bool(endpoint & CLIENT_BIT)


def node_of(endpoint: int) -> int:
    """The node an endpoint belongs to (a client belongs to its node)."""
    return endpoint & ~CLIENT_BIT


class TableLayout(NamedTuple):
    """What the protocol needs to know of a table to validate a message."""

    num_keys: int
    dim: int
    dtype: np.dtype[Any]
    num_states: int  # optimiser state arrays that move with the values

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize


@dataclass(slots=True)
class Message:
    """One decoded (or to-be-encoded) message.  ``repr`` shows it without the payload."""

    type: MsgType
    sender: int
    requester: int = NO_ENDPOINT
    req_id: int = 0
    table: int = 0
    count: int = 0
    aux: int = 0
    flags: int = 0
    hops: int = 0
    epoch: int = 0
    keys: KeyArray | None = None
    positions: PosArray | None = None
    values: ValueArray | None = None
    states: tuple[ValueArray, ...] = ()
    dir_owner: npt.NDArray[np.int16] | None = None  # SHARD_COPY: the home's directory entries
    dir_moving: npt.NDArray[np.int16] | None = None
    body: BaseModel | None = None  # control types: the parsed body (dynaps.wire.control.BODIES)
    # TRANSFER, REPLICATE, SHARD_COPY, WRITEBACK: applied-request records of its keys
    records: dict[str, Any] | None = None
    text: str = ""

    def __repr__(self) -> str:
        parts = [
            f"{self.type.name}",
            f"from={self.sender}",
            f"req={self.requester}#{self.req_id}",
            f"table={self.table}",
            f"n={self.count}",
        ]
        if self.aux:
            parts.append(f"aux={self.aux}")
        if self.hops:
            parts.append(f"hops={self.hops}")
        if self.epoch:
            parts.append(f"epoch={self.epoch}")
        if self.keys is not None:
            shown = self.keys[:4].tolist()
            parts.append(f"keys={shown}{'...' if len(self.keys) > 4 else ''}")
        if self.positions is not None:
            parts.append("positions")
        if self.values is not None:
            parts.append(f"values={self.values.shape}")
        if self.body is not None:
            parts.append(f"body={self.body!r}")
        if self.records is not None:
            parts.append("records")
        if self.text:
            parts.append(f"text={self.text[:60]!r}")
        return f"<{' '.join(parts)}>"


def header(
    msg_type: MsgType,
    sender: int,
    requester: int,
    req_id: int,
    table: int = 0,
    count: int = 0,
    aux: int = 0,
    flags: int = 0,
    hops: int = 0,
    epoch: int = 0,
) -> bytes:
    """Pack a header frame (the layout drawn above)."""
    return HEADER.pack(
        PROTOCOL_VERSION, msg_type, flags, table, sender, requester, hops, epoch, req_id, count, aux
    )
