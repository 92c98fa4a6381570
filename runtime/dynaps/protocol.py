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
    aux        u32  type-specific: HANDOFF target node; TRANSFER state-array count

Frames after the header, by type (``[x]`` is present when the HAS_POSITIONS flag is set)::

    PULL        keys [positions]
    PULL_REPLY  [positions] values
    PUSH, SET   keys [positions] values
    ACK         [positions]
    LOCALIZE    keys                       (to the home: make the requester the owner)
    RELEASE     keys                       (to the home: take these keys back, for a drain)
    HANDOFF     keys                       aux = node that receives the keys
    TRANSFER    keys values state*aux
    LOCALIZED   (none)
    ERROR       utf-8 text
    control     utf-8 JSON body (REGISTER ... HEARTBEAT)

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


class Flag(enum.IntFlag):
    NONE = 0
    HAS_POSITIONS = 1


CONTROL_TYPES = frozenset(t for t in MsgType if t >= MsgType.REGISTER)
NO_POSITIONS = frozenset({MsgType.LOCALIZE, MsgType.HANDOFF, MsgType.RELEASE})
_KEYED = frozenset({MsgType.PULL, MsgType.PUSH, MsgType.SET} | NO_POSITIONS)
_TYPES = {int(t): t for t in MsgType}


def client_of(node: int) -> int:
    """The endpoint id of node ``node``'s client process."""
    return node | CLIENT_BIT


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
    """The frames of ``msg``; arrays are passed as buffers, never copied here."""
    flags = msg.flags
    if msg.positions is not None:
        flags |= Flag.HAS_POSITIONS
    else:
        flags &= ~Flag.HAS_POSITIONS
    frames: list[Any] = [
        header(
            msg.type,
            msg.sender,
            msg.requester,
            msg.req_id,
            msg.table,
            msg.count,
            msg.aux,
            flags,
            msg.hops,
            msg.epoch,
        )
    ]
    kind = msg.type
    if kind in CONTROL_TYPES:
        frames.append(json.dumps(msg.body or {}, separators=(",", ":")).encode())
        return frames
    if kind is MsgType.ERROR:
        frames.append(msg.text.encode())
        return frames
    if msg.keys is not None:
        frames.append(_buffer(msg.keys))
    if msg.positions is not None:
        frames.append(_buffer(msg.positions))
    if msg.values is not None:
        frames.append(_buffer(msg.values))
    frames.extend(_buffer(state) for state in msg.states)
    return frames


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
    head = _bytes(frames[0])
    if len(head) != HEADER_SIZE:
        raise ProtocolError(f"header frame has {len(head)} bytes, expected {HEADER_SIZE}")
    (version, type_code, flags, table, sender, requester, hops, epoch, req_id, count, aux) = HEADER.unpack(
        head
    )
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    msg_type = _TYPES.get(type_code)
    if msg_type is None:
        raise ProtocolError(f"unknown message type {type_code}")
    if hops > MAX_HOPS:
        raise ProtocolError(f"message forwarded {hops} times (loop?)")
    msg = Message(
        type=msg_type,
        sender=sender,
        requester=requester,
        req_id=req_id,
        table=table,
        count=count,
        aux=aux,
        flags=flags,
        hops=hops,
        epoch=epoch,
    )
    rest = frames[1:]
    if msg_type in CONTROL_TYPES:
        msg.body = _json_body(rest)
        return msg
    if msg_type is MsgType.ERROR:
        if len(rest) != 1:
            raise ProtocolError("ERROR needs exactly one text frame")
        msg.text = _bytes(rest[0]).decode("utf-8", errors="replace")[:4096]
        return msg
    if msg_type is MsgType.LOCALIZED:
        _expect_frames(msg, rest, 0)
        return msg
    if table >= len(tables):
        raise ProtocolError(f"table index {table} out of range ({len(tables)} tables)")
    layout = tables[table]
    has_positions = bool(flags & Flag.HAS_POSITIONS)
    index = 0

    def take() -> Any:
        nonlocal index
        frame = rest[index]
        index += 1
        return frame

    if msg_type in _KEYED:
        expected = 1 + has_positions + (msg_type in (MsgType.PUSH, MsgType.SET))
        _expect_frames(msg, rest, expected)
        msg.keys = _keys(take(), count, layout.num_keys)
        if has_positions:
            if msg_type in NO_POSITIONS:
                raise ProtocolError(f"{msg_type.name} carries no positions")
            msg.positions = _positions(take(), count)
        if msg_type in (MsgType.PUSH, MsgType.SET):
            msg.values = _rows(take(), count, layout)
        return msg
    if msg_type is MsgType.PULL_REPLY:
        _expect_frames(msg, rest, 1 + has_positions)
        if has_positions:
            msg.positions = _positions(take(), count)
        msg.values = _rows(take(), count, layout)
        return msg
    if msg_type is MsgType.ACK:
        _expect_frames(msg, rest, int(has_positions))
        if has_positions:
            msg.positions = _positions(take(), count)
        return msg
    if msg_type is MsgType.TRANSFER:
        if aux != layout.num_states:
            raise ProtocolError(f"TRANSFER has {aux} state arrays, table has {layout.num_states}")
        if has_positions:
            raise ProtocolError("TRANSFER carries no positions")
        _expect_frames(msg, rest, 2 + aux)
        msg.keys = _keys(take(), count, layout.num_keys)
        msg.values = _rows(take(), count, layout)
        msg.states = tuple(_rows(take(), count, layout) for _ in range(aux))
        return msg
    raise ProtocolError(f"no decoder for {msg_type.name}")  # pragma: no cover - enum is closed


def _bytes(frame: Any) -> Any:
    # zmq.Frame exposes .buffer; bytes and memoryviews pass through.
    buffer = getattr(frame, "buffer", None)
    return buffer if buffer is not None else frame


def _expect_frames(msg: Message, rest: Sequence[Any], expected: int) -> None:
    if len(rest) != expected:
        raise ProtocolError(f"{msg.type.name} needs {expected} payload frames, got {len(rest)}")


def _keys(frame: Any, count: int, num_keys: int) -> KeyArray:
    data = _bytes(frame)
    if len(data) != count * 8:
        raise ProtocolError(f"keys frame has {len(data)} bytes for {count} keys")
    keys = np.frombuffer(data, dtype=np.int64)
    if count == 1:
        key = int(keys[0])
        if key < 0 or key >= num_keys:
            raise ProtocolError(f"key {key} outside [0, {num_keys})")
    elif count and (int(keys.min()) < 0 or int(keys.max()) >= num_keys):
        raise ProtocolError(f"keys outside [0, {num_keys})")
    return keys


def _positions(frame: Any, count: int) -> PosArray:
    data = _bytes(frame)
    if len(data) != count * 4:
        raise ProtocolError(f"positions frame has {len(data)} bytes for {count} keys")
    positions = np.frombuffer(data, dtype=np.int32)
    if count and int(positions.min()) < 0:
        raise ProtocolError("negative position")
    return positions


def _rows(frame: Any, count: int, layout: TableLayout) -> ValueArray:
    data = _bytes(frame)
    if len(data) != count * layout.row_bytes:
        raise ProtocolError(f"values frame has {len(data)} bytes for {count} rows of {layout.row_bytes}")
    return np.frombuffer(data, dtype=layout.dtype).reshape(count, layout.dim)


def _json_body(rest: Sequence[Any]) -> dict[str, Any]:
    if len(rest) != 1:
        raise ProtocolError(f"control message needs one body frame, got {len(rest)}")
    raw = _bytes(rest[0])
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
    "HEADER_SIZE",
    "NO_ENDPOINT",
    "PROTOCOL_VERSION",
    "Flag",
    "Message",
    "MsgType",
    "TableLayout",
    "client_of",
    "control_frames",
    "decode",
    "encode",
    "header",
    "node_of",
]
