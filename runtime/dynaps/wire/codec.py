"""Frames and back: :func:`encode` a :class:`~dynaps.wire.protocol.Message`, :func:`decode`
and validate one.

The layout is drawn in :mod:`dynaps.wire.protocol`.  A control message's JSON body is
parsed here, once, into the pydantic model that :data:`dynaps.wire.control.BODIES` names
for its type; a body that does not fit is a :class:`ProtocolError` like any malformed
frame, so handlers receive typed bodies only.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.errors import ClusterError, ProtocolError
from dynaps.wire import control
from dynaps.wire.protocol import (
    CONTROL_TYPES,
    DEFLATE_OVER,
    DEFLATED,
    HAS_POSITIONS,
    HEADER,
    HEADER_SIZE,
    INLINE,
    INLINE_MAX,
    MAX_BODY_BYTES,
    MAX_HOPS,
    PROTOCOL_VERSION,
    RECORDS,
    WITH_RECORDS,
    Message,
    MsgType,
    PosArray,
    TableLayout,
    ValueArray,
    header,
    inflate,
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

# ----------------------------------------------------------------------------------- encode


def encode(msg: Message) -> list[Any]:
    """The frames of ``msg``.

    Small payloads are appended to the header frame (one frame, one copy: cheaper than
    zmq's per-frame work); large arrays travel as their own frames, passed as buffers.
    """
    kind = msg.type
    if kind in CONTROL_TYPES or kind is MsgType.ERROR:
        flags = 0
        if kind is MsgType.ERROR:
            body = msg.text.encode()
        else:  # defaults stay implicit: the receiver's model fills them in, heartbeats stay small
            body = msg.body.model_dump_json(exclude_defaults=True).encode() if msg.body is not None else b"{}"
            if len(body) > MAX_BODY_BYTES:
                # the receiver would drop it: said here, loudly, and not as a ProtocolError,
                # which receivers take for a malformed message from elsewhere and drop
                raise ClusterError(
                    f"a {kind.name} body of {len(body)} bytes is past the bound of {MAX_BODY_BYTES}"
                )
            if len(body) > DEFLATE_OVER:  # a thousand nodes' membership: 250 KB -> 30 KB
                flags, body = DEFLATED, zlib.compress(body, 1)
        ids = (msg.sender, msg.requester, msg.req_id, msg.table, msg.count, msg.aux)
        return [header(kind, *ids, flags, msg.hops, msg.epoch), body]
    if kind is MsgType.SHARD_COPY:
        parts = [a for a in (msg.keys, msg.dir_owner, msg.dir_moving, msg.values) if a is not None]
    else:
        parts = [a for a in (msg.keys, msg.positions, msg.values) if a is not None]
    parts.extend(msg.states)
    flags = msg.flags & ~(HAS_POSITIONS | INLINE | RECORDS)
    if msg.positions is not None:
        flags |= HAS_POSITIONS
    records = None
    if kind in WITH_RECORDS and msg.records is not None:
        flags |= RECORDS
        records = json.dumps(msg.records, separators=(",", ":")).encode()
    size = 0
    for part in parts:
        size += part.nbytes
    inline = size <= INLINE_MAX and records is None
    head = HEADER.pack(
        PROTOCOL_VERSION,
        kind,
        flags | INLINE if inline else flags,
        msg.table,
        msg.sender,
        msg.requester,
        msg.hops,
        msg.epoch,
        msg.req_id,
        msg.count,
        msg.aux,
    )
    if inline:
        return [b"".join([head, *[_buffer(part) for part in parts]])]
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


# ----------------------------------------------------------------------------------- decode


def peek(frames: Sequence[Any]) -> tuple[MsgType, int] | None:
    """The type and sender of a message, from its header alone; None where the header is not
    well formed (:func:`decode` then says why).  For a receiver that needs nothing more of
    its most frequent message: the coordinator and a member's heartbeat."""
    if not frames or len(frames[0]) < HEADER_SIZE:
        return None
    version, type_code, _flags, _table, sender, *_ = HEADER.unpack_from(frames[0])
    msg_type = _TYPES.get(type_code)
    if version != PROTOCOL_VERSION or msg_type is None:
        return None
    return msg_type, sender


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
        msg.body = control.parse(control.BODIES[msg_type], _json_body(frames[1:], bool(flags & DEFLATED)))
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
    if with_states and aux != layout.num_states:
        raise ProtocolError(f"{msg_type.name} has {aux} state arrays, table has {layout.num_states}")
    if flags & RECORDS:
        if msg_type not in WITH_RECORDS or inline or len(frames) < 2:
            raise ProtocolError(f"{msg_type.name} with records is malformed")
        msg.records = _json_body(frames[-1:], deflated=False)
        frames = frames[:-1]
    if msg_type is MsgType.SHARD_COPY:
        return _decode_shard_copy(msg, frames, layout)
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
    count = msg.count
    rows = count * layout.row_bytes
    sizes = [count * 8, count * 2, count * 2, rows] + [rows] * layout.num_states
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
    if count and (int(keys.min()) < 0 or int(keys.max()) >= layout.num_keys):
        raise ProtocolError(f"SHARD_COPY keys outside [0, {layout.num_keys})")
    msg.keys = keys
    msg.dir_owner = np.frombuffer(buffers[1], np.int16, count, offsets[1])
    msg.dir_moving = np.frombuffer(buffers[2], np.int16, count, offsets[2])
    shape = (count, layout.dim)
    msg.values = np.frombuffer(buffers[3], layout.dtype, count * layout.dim, offsets[3]).reshape(shape)
    msg.states = tuple(
        np.frombuffer(buffers[4 + i], layout.dtype, count * layout.dim, offsets[4 + i]).reshape(shape)
        for i in range(layout.num_states)
    )
    return msg


def _json_body(rest: Sequence[Any], deflated: bool) -> dict[str, Any]:
    if len(rest) != 1:
        raise ProtocolError(f"control message needs one body frame, got {len(rest)}")
    raw = rest[0]
    if len(raw) > MAX_BODY_BYTES:
        raise ProtocolError("control body too large")
    if deflated:
        raw = inflate(bytes(raw), MAX_BODY_BYTES, "control body")
    try:
        body = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"control body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("control body must be a JSON object")
    return body
