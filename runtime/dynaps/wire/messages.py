"""One constructor per message type: the only place a :class:`Message` is built.

Each function documents which header fields its type uses (the frame layout is drawn in
:mod:`dynaps.wire.protocol`); ``count`` and, for types that carry optimiser state, the
number of state arrays (``aux``) are derived from the arrays, so they cannot disagree.
Control messages are built by :func:`control` from the pydantic model that
:data:`dynaps.wire.control.BODIES` names for their type.  Frames for the hottest
request (a small keys-only one to one node) are made by :func:`request_frames` without an
intermediate ``Message``; replies by :func:`dynaps.wire.codec.encode_reply`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from dynaps.wire import codec
from dynaps.wire.control import BODIES
from dynaps.wire.protocol import (
    FINAL,
    INLINE,
    INLINE_MAX,
    KeyArray,
    Message,
    MsgType,
    PosArray,
    ValueArray,
    header,
)

# requests a training process (or a node, for itself) sends to the keys' owners or homes
REQUEST_TYPES = frozenset({MsgType.PULL, MsgType.PUSH, MsgType.SET, MsgType.LOCALIZE, MsgType.RELEASE})

OWNERS_HELD = 1  # OWNERS aux: keys the sender holds (their values live there)
OWNERS_EXPECTED = 2  # OWNERS aux: keys the sender waits for (on their way to it)


def request(
    kind: MsgType,
    sender: int,
    req_id: int,
    table: int,
    keys: KeyArray,
    *,
    values: ValueArray | None = None,
    positions: PosArray | None = None,
    epoch: int = 0,
    flags: int = 0,
    watermark: int = 0,
) -> Message:
    """PULL, PUSH, SET, LOCALIZE or RELEASE of ``keys``, answered to ``sender``.

    ``positions`` index the caller's original key array when this is part of a split
    request; ``watermark`` (aux of PUSH and SET) says that every request of the sender
    below it has been answered; ``flags`` may carry RETRY.
    """
    if kind not in REQUEST_TYPES:
        raise ValueError(f"{kind.name} is not a request")
    return Message(
        kind,
        sender,
        sender,
        req_id,
        table,
        len(keys),
        aux=watermark,
        flags=flags,
        epoch=epoch,
        keys=keys,
        positions=positions,
        values=values,
    )


def request_frames(
    kind: MsgType, sender: int, req_id: int, table: int, keys: KeyArray, epoch: int
) -> list[Any]:
    """The frames of a keys-only request (PULL, LOCALIZE) small enough to inline: the
    common remote pull, made without building a Message."""
    if keys.nbytes > INLINE_MAX:
        return codec.encode(request(kind, sender, req_id, table, keys, epoch=epoch))
    head = header(kind, sender, sender, req_id, table, len(keys), 0, INLINE, 0, epoch)
    return [head + keys.tobytes()]


def handoff(
    sender: int, requester: int, req_id: int, table: int, keys: KeyArray, target: int, *, hops: int = 0
) -> Message:
    """HANDOFF (home -> owner): ship ``keys`` to node ``target`` (aux)."""
    count = len(keys)
    return Message(MsgType.HANDOFF, sender, requester, req_id, table, count, aux=target, hops=hops, keys=keys)


def transfer(
    sender: int,
    requester: int,
    req_id: int,
    table: int,
    keys: KeyArray,
    values: ValueArray,
    states: tuple[ValueArray, ...],
    *,
    records: dict[str, Any] | None = None,
    flags: int = 0,
) -> Message:
    """TRANSFER (old owner -> new owner): the keys' rows and optimiser state, with the
    applied-request records that travel with them; ``flags`` RECOVERY for a home's
    re-send of keys whose sender died."""
    msg = _rows(MsgType.TRANSFER, sender, requester, req_id, table, keys, values, states, None)
    msg.flags = flags
    msg.records = records
    return msg


def transfer_done(sender: int, req_id: int, table: int, keys: KeyArray) -> Message:
    """TRANSFER_DONE (new owner -> home): ``keys`` arrived."""
    return Message(MsgType.TRANSFER_DONE, sender, sender, req_id, table, len(keys), keys=keys)


def localized(
    sender: int, requester: int, req_id: int, table: int, count: int, acks: bool = False
) -> Message:
    """LOCALIZED (new owner -> requester): ``count`` keys now live at the requester's node;
    or (to a node that gave them back) they are home, and with ``acks`` (aux 1) the tails of
    their chains acknowledge them once every backup has them."""
    return Message(MsgType.LOCALIZED, sender, requester, req_id, table, count, int(acks))


def shard_copy(
    sender: int,
    migration_id: int,
    table: int,
    keys: KeyArray,
    dir_owner: Any,
    dir_moving: Any,
    values: ValueArray,
    states: tuple[ValueArray, ...],
    *,
    final: bool,
    records: dict[str, Any] | None = None,
) -> Message:
    """SHARD_COPY (old home -> new home, a migration): the directory entries and the rows
    of ``keys`` (of every key: for a key a worker holds, the home's write-back copy), with
    the applied-request records of the moved keys when it is sent at the freeze;
    ``final`` marks the migration's last part."""
    msg = _rows(MsgType.SHARD_COPY, sender, sender, migration_id, table, keys, values, states, None)
    msg.flags = FINAL if final else 0
    msg.dir_owner = dir_owner
    msg.dir_moving = dir_moving
    msg.records = records
    return msg


def owners(sender: int, recovery_id: int, table: int, keys: KeyArray, which: int) -> Message:
    """OWNERS (node -> recovering home): keys it holds (OWNERS_HELD) or waits for
    (OWNERS_EXPECTED)."""
    return Message(MsgType.OWNERS, sender, sender, recovery_id, table, len(keys), aux=which, keys=keys)


def rows(
    kind: MsgType,
    sender: int,
    requester: int,
    req_id: int,
    table: int,
    keys: KeyArray,
    values: ValueArray,
    states: tuple[ValueArray, ...],
    *,
    positions: PosArray | None = None,
) -> Message:
    """REPLICATE (home -> backup) or WRITEBACK (holder -> home): current rows of ``keys``;
    the receiver acknowledges ``requester``."""
    if kind not in (MsgType.REPLICATE, MsgType.WRITEBACK):
        raise ValueError(f"{kind.name} does not carry rows")
    return _rows(kind, sender, requester, req_id, table, keys, values, states, positions)


def _rows(
    kind: MsgType,
    sender: int,
    requester: int,
    req_id: int,
    table: int,
    keys: KeyArray,
    values: ValueArray,
    states: tuple[ValueArray, ...],
    positions: PosArray | None,
) -> Message:
    # the state arrays' count travels in aux: derived here, so it cannot disagree
    return Message(
        kind,
        sender,
        requester,
        req_id,
        table,
        len(keys),
        aux=len(states),
        keys=keys,
        positions=positions,
        values=values,
        states=states,
    )


def error(sender: int, requester: int, req_id: int, table: int, text: str) -> Message:
    """ERROR: a request that cannot be served, with a reason for the requester."""
    return Message(MsgType.ERROR, sender, requester, req_id, table, text=text)


def with_keys(msg: Message, keys: KeyArray, *, target: int | None = None) -> Message:
    """A copy of a keys-only message (LOCALIZE, RELEASE, HANDOFF, TRANSFER_DONE) for some
    of its keys, optionally with a new target (HANDOFF's aux)."""
    return Message(
        msg.type,
        msg.sender,
        msg.requester,
        msg.req_id,
        msg.table,
        len(keys),
        aux=msg.aux if target is None else target,
        flags=msg.flags,
        hops=msg.hops,
        epoch=msg.epoch,
        keys=keys,
    )


def control(kind: MsgType, sender: int, body: BaseModel, req_id: int = 0) -> list[Any]:
    """The frames of a control message; ``body`` must be the model its type names."""
    model = BODIES[kind]
    if type(body) is not model:
        raise TypeError(f"{kind.name} carries {model.__name__}, not {type(body).__name__}")
    return codec.encode(Message(kind, sender, sender, req_id, body=body))
