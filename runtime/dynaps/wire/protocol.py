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
    aux        u32  type-specific: HANDOFF target node; TRANSFER, REPLICATE, WRITEBACK
                    state-array count; SHARD_COPY owned rows; OWNERS held/expected;
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
    SHARD_COPY  keys owner moving owned values state*S   (old home -> new home, migration;
                aux = number of owned rows, req_id = migration id, FINAL on the last part)
    OWNERS      keys                       (node -> recovering home; aux 1: held, 2: expected)
    REPLICATE   keys [positions] values state*aux   (home -> backup: rows after an update;
                the backup acknowledges the requester)
    WRITEBACK   keys [positions] values state*aux   (worker -> home: current rows of keys it
                holds; with a client requester when writing through)
    LOCALIZED   (none)
    ERROR       utf-8 text
    control     utf-8 JSON body (REGISTER ... HEARTBEAT)

Each section is its own frame, except that payloads of up to ``INLINE_MAX`` bytes are
appended to the header frame (flag INLINE): one frame costs less than the copy it takes.

keys are int64, positions int32 (indices into the requester's original key array, so a
request split over several owners is reassembled without a lookup), values and state
arrays are C-ordered ``count x dim`` arrays of the table's dtype.

:func:`decode` validates everything a receiver relies on (sizes, key ranges, position
ranges, table index) and raises :class:`ProtocolError` otherwise; receivers drop such a
message, count it and keep serving.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

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
    DRAIN_NOTICE = 51
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


# Flag bits (plain ints: IntFlag arithmetic is slow on the hot path)
HAS_POSITIONS = 1  # a positions section follows the keys (or starts a reply)
INLINE = 2  # the payload sections follow the header inside frame 0
INLINE_MAX = 16 * 1024  # payloads up to this size are inlined
FINAL = 4  # SHARD_COPY: the last part of a migration's copy
RECOVERY = 8  # TRANSFER: a home re-sends a key whose sender died; apply only if still expected
RETRY = 16  # a request sent again after a node was lost (nodes recognise what they applied)
RECORDS = 32  # TRANSFER: a JSON frame follows with the applied-request records of these keys


CONTROL_TYPES = frozenset(t for t in MsgType if t >= MsgType.REGISTER)
NO_POSITIONS = frozenset(
    {
        MsgType.LOCALIZE,
        MsgType.HANDOFF,
        MsgType.RELEASE,
        MsgType.TRANSFER_DONE,
        MsgType.OWNERS,
        MsgType.WRITEBACK,
    }
)
# per data type: (keys, positions allowed, values, state arrays)
_SECTIONS: dict[MsgType, tuple[bool, bool, bool, bool]] = {
    MsgType.PULL: (True, True, False, False),
    MsgType.PULL_REPLY: (False, True, True, False),
    MsgType.PUSH: (True, True, True, False),
    MsgType.SET: (True, True, True, False),
    MsgType.ACK: (False, True, False, False),
    MsgType.LOCALIZE: (True, False, False, False),
    MsgType.RELEASE: (True, False, False, False),
    MsgType.HANDOFF: (True, False, False, False),
    MsgType.TRANSFER: (True, False, True, True),
    MsgType.TRANSFER_DONE: (True, False, False, False),
    MsgType.SHARD_COPY: (True, False, False, True),  # and directory sections: see decode
    MsgType.OWNERS: (True, False, False, False),
    MsgType.REPLICATE: (True, True, True, True),
    MsgType.WRITEBACK: (True, True, True, True),
    MsgType.LOCALIZED: (False, False, False, False),
}
_TYPES = {int(t): t for t in MsgType}


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
    owned: KeyArray | None = None  # SHARD_COPY: the keys whose values travel with the shard
    body: dict[str, Any] | None = None
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
            parts.append(f"body={sorted(self.body)}")
        if self.text:
            parts.append(f"text={self.text[:60]!r}")
        return f"<{' '.join(parts)}>"


# ----------------------------------------------------------------------------------- encode


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
    """Pack a header frame."""
    return HEADER.pack(
        PROTOCOL_VERSION, msg_type, flags, table, sender, requester, hops, epoch, req_id, count, aux
    )


def encode(msg: Message) -> list[Any]:
    """The frames of ``msg``.

    Small payloads are appended to the header frame (one frame, one copy: cheaper than
    zmq's per-frame work); large arrays travel as their own frames, passed as buffers.
    """
    kind = msg.type
    if kind in CONTROL_TYPES or kind is MsgType.ERROR:
        head = header(
            kind, msg.sender, msg.requester, msg.req_id, msg.table, msg.count, msg.aux, 0, msg.hops, msg.epoch
        )
        if kind is MsgType.ERROR:
            return [head, msg.text.encode()]
        return [head, json.dumps(msg.body or {}, separators=(",", ":")).encode()]
    if kind is MsgType.SHARD_COPY:
        parts = [a for a in (msg.keys, msg.dir_owner, msg.dir_moving, msg.owned, msg.values) if a is not None]
    else:
        parts = [a for a in (msg.keys, msg.positions, msg.values) if a is not None]
    parts.extend(msg.states)
    flags = msg.flags & ~(HAS_POSITIONS | INLINE | RECORDS)
    if msg.positions is not None:
        flags |= HAS_POSITIONS
    records = None
    if kind is MsgType.TRANSFER and msg.body is not None:
        flags |= RECORDS
        records = json.dumps(msg.body, separators=(",", ":")).encode()
    size = 0
    for part in parts:
        size += part.nbytes
    if size <= INLINE_MAX and records is None:
        head = HEADER.pack(
            PROTOCOL_VERSION,
            kind,
            flags | INLINE,
            msg.table,
            msg.sender,
            msg.requester,
            msg.hops,
            msg.epoch,
            msg.req_id,
            msg.count,
            msg.aux,
        )
        return [b"".join([head, *[_buffer(part) for part in parts]])]
    head = HEADER.pack(
        PROTOCOL_VERSION,
        kind,
        flags,
        msg.table,
        msg.sender,
        msg.requester,
        msg.hops,
        msg.epoch,
        msg.req_id,
        msg.count,
        msg.aux,
    )
    frames = [head, *[_buffer(part) for part in parts]]
    if records is not None:
        frames.append(records)
    return frames


def encode_reply(
    kind: MsgType,
    sender: int,
    requester: int,
    req_id: int,
    table: int,
    count: int,
    hops: int,
    positions: PosArray | None,
    values: ValueArray | None,
    epoch: int = 0,
) -> list[Any]:
    """A PULL_REPLY or ACK: what :func:`encode` makes of it, without building a Message."""
    size = 0 if values is None else values.nbytes
    if positions is not None:
        size += positions.nbytes
    if size > INLINE_MAX:
        msg = Message(
            kind, sender, requester, req_id, table, count, hops=hops, positions=positions, values=values
        )
        return encode(msg)
    flags = INLINE if positions is None else INLINE | HAS_POSITIONS
    parts = [HEADER.pack(PROTOCOL_VERSION, kind, flags, table, sender, requester, hops, 0, req_id, count, 0)]
    if positions is not None:
        parts.append(_buffer(positions))
    if values is not None:
        parts.append(_buffer(values))
    return [b"".join(parts)]


def _buffer(array: npt.NDArray[Any]) -> Any:
    # zmq sends any object with the buffer protocol; it must be C-contiguous.
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def control_frames(msg_type: MsgType, sender: int, body: dict[str, Any], req_id: int = 0) -> list[Any]:
    """Frames of a control message with a JSON body."""
    return [
        header(msg_type, sender, sender, req_id),
        json.dumps(body, separators=(",", ":")).encode(),
    ]


# ----------------------------------------------------------------------------------- decode


def decode(frames: Sequence[Any], tables: Sequence[TableLayout]) -> Message:
    """Parse and validate one message.  Raises ProtocolError; never returns garbage."""
    if not frames:
        raise ProtocolError("empty message")
    head = frames[0]
    if len(head) < HEADER_SIZE:
        raise ProtocolError(f"header frame has {len(head)} bytes, expected {HEADER_SIZE}")
    (version, type_code, flags, table, sender, requester, hops, epoch, req_id, count, aux) = (
        HEADER.unpack_from(head)
    )
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    msg_type = _TYPES.get(type_code)
    if msg_type is None:
        raise ProtocolError(f"unknown message type {type_code}")
    if hops > MAX_HOPS:
        raise ProtocolError(f"message forwarded {hops} times (loop?)")
    inline = flags & INLINE
    if not inline and len(head) != HEADER_SIZE:
        raise ProtocolError(f"header frame has {len(head)} bytes, expected {HEADER_SIZE}")
    msg = Message(msg_type, sender, requester, req_id, table, count, aux, flags, hops, epoch)
    if msg_type in CONTROL_TYPES:
        msg.body = _json_body(frames[1:])
        return msg
    if msg_type is MsgType.ERROR:
        if len(frames) != 2:
            raise ProtocolError("ERROR needs exactly one text frame")
        msg.text = bytes(frames[1]).decode("utf-8", errors="replace")[:4096]
        return msg
    with_keys, positions_allowed, with_values, with_states = _SECTIONS[msg_type]
    with_positions = bool(flags & HAS_POSITIONS)
    if with_positions and not positions_allowed:
        raise ProtocolError(f"{msg_type.name} carries no positions")
    if msg_type is MsgType.LOCALIZED:
        if len(frames) != 1 or len(head) != HEADER_SIZE:
            raise ProtocolError("LOCALIZED carries no payload")
        return msg
    if table >= len(tables):
        raise ProtocolError(f"table index {table} out of range ({len(tables)} tables)")
    layout = tables[table]
    if msg_type is MsgType.SHARD_COPY:
        return _decode_shard_copy(msg, frames, layout)
    if with_states and aux != layout.num_states:
        raise ProtocolError(f"{msg_type.name} has {aux} state arrays, table has {layout.num_states}")
    row_bytes = count * layout.row_bytes
    sizes = []
    if with_keys:
        sizes.append(count * 8)
    if with_positions:
        sizes.append(count * 4)
    if with_values:
        sizes.append(row_bytes)
    if with_states:
        sizes.extend([row_bytes] * aux)
    if flags & RECORDS:
        if msg_type is not MsgType.TRANSFER or inline or len(frames) < 2:
            raise ProtocolError(f"{msg_type.name} with records is malformed")
        msg.body = _json_body(frames[-1:])
        frames = frames[:-1]
    if inline:
        if len(frames) != 1:
            raise ProtocolError(f"inline {msg_type.name} has {len(frames)} frames")
        expected = HEADER_SIZE + sum(sizes)
        if len(head) != expected:
            raise ProtocolError(f"{msg_type.name} frame has {len(head)} bytes, expected {expected}")
        buffers = [head] * len(sizes)
        offsets = []
        offset = HEADER_SIZE
        for size in sizes:
            offsets.append(offset)
            offset += size
    else:
        if len(frames) - 1 != len(sizes):
            raise ProtocolError(f"{msg_type.name} needs {len(sizes)} payload frames, got {len(frames) - 1}")
        buffers = list(frames[1:])
        offsets = [0] * len(sizes)
        for buffer, size in zip(buffers, sizes, strict=True):
            if len(buffer) != size:
                raise ProtocolError(f"{msg_type.name} payload frame has {len(buffer)} bytes, expected {size}")
    at = 0
    if with_keys:
        keys = np.frombuffer(buffers[0], np.int64, count, offsets[0])
        if count == 1:
            key = int(keys[0])
            if key < 0 or key >= layout.num_keys:
                raise ProtocolError(f"key {key} outside [0, {layout.num_keys})")
        elif count and (int(keys.min()) < 0 or int(keys.max()) >= layout.num_keys):
            raise ProtocolError(f"keys outside [0, {layout.num_keys})")
        msg.keys = keys
        at = 1
    if with_positions:
        positions = np.frombuffer(buffers[at], np.int32, count, offsets[at])
        if count and int(positions.min()) < 0:
            raise ProtocolError("negative position")
        msg.positions = positions
        at += 1
    if with_values:
        msg.values = np.frombuffer(buffers[at], layout.dtype, count * layout.dim, offsets[at]).reshape(
            count, layout.dim
        )
        at += 1
    if with_states:
        msg.states = tuple(
            np.frombuffer(buffers[at + i], layout.dtype, count * layout.dim, offsets[at + i]).reshape(
                count, layout.dim
            )
            for i in range(aux)
        )
    return msg


def _decode_shard_copy(msg: Message, frames: Sequence[Any], layout: TableLayout) -> Message:
    count, owned = msg.count, msg.aux
    rows = owned * layout.row_bytes
    sizes = [count * 8, count * 2, count * 2, owned * 8, rows] + [rows] * layout.num_states
    if msg.flags & INLINE:
        if len(frames) != 1 or len(frames[0]) != HEADER_SIZE + sum(sizes):
            raise ProtocolError("SHARD_COPY has the wrong size")
        buffers = [frames[0]] * len(sizes)
        offsets = list(np.cumsum([HEADER_SIZE, *sizes[:-1]]).tolist())
    else:
        if len(frames) - 1 != len(sizes) or any(len(f) != n for f, n in zip(frames[1:], sizes, strict=True)):
            raise ProtocolError("SHARD_COPY has the wrong frames")
        buffers = list(frames[1:])
        offsets = [0] * len(sizes)
    keys = np.frombuffer(buffers[0], np.int64, count, offsets[0])
    owned_keys = np.frombuffer(buffers[3], np.int64, owned, offsets[3])
    for array in (keys, owned_keys):
        if len(array) and (int(array.min()) < 0 or int(array.max()) >= layout.num_keys):
            raise ProtocolError(f"SHARD_COPY keys outside [0, {layout.num_keys})")
    msg.keys = keys
    msg.dir_owner = np.frombuffer(buffers[1], np.int16, count, offsets[1])
    msg.dir_moving = np.frombuffer(buffers[2], np.int16, count, offsets[2])
    msg.owned = owned_keys
    shape = (owned, layout.dim)
    msg.values = np.frombuffer(buffers[4], layout.dtype, owned * layout.dim, offsets[4]).reshape(shape)
    msg.states = tuple(
        np.frombuffer(buffers[5 + i], layout.dtype, owned * layout.dim, offsets[5 + i]).reshape(shape)
        for i in range(layout.num_states)
    )
    return msg


def _json_body(rest: Sequence[Any]) -> dict[str, Any]:
    if len(rest) != 1:
        raise ProtocolError(f"control message needs one body frame, got {len(rest)}")
    raw = rest[0]
    if len(raw) > MAX_BODY_BYTES:
        raise ProtocolError("control body too large")
    try:
        body = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"control body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("control body must be a JSON object")
    return body


__all__ = [
    "CLIENT_BIT",
    "CONTROL_TYPES",
    "COORDINATOR",
    "FINAL",
    "HAS_POSITIONS",
    "HEADER_SIZE",
    "INLINE",
    "NO_ENDPOINT",
    "PROTOCOL_VERSION",
    "RECORDS",
    "RECOVERY",
    "RETRY",
    "Message",
    "MsgType",
    "TableLayout",
    "client_of",
    "control_frames",
    "decode",
    "encode",
    "encode_reply",
    "header",
    "is_client",
    "node_of",
]
