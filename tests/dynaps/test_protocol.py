"""Every message type survives encode -> wire bytes -> decode; malformed frames are refused."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from dynaps.errors import ProtocolError
from dynaps.wire import codec, control, messages, routing
from dynaps.wire.codec import decode, encode
from dynaps.wire.protocol import (
    CONTROL_TYPES,
    DEFLATE_OVER,
    DEFLATED,
    FINAL,
    HEADER,
    HEADER_SIZE,
    INLINE,
    INLINE_MAX,
    MAX_BODY_BYTES,
    PROTOCOL_VERSION,
    RECORDS,
    Message,
    MsgType,
    TableLayout,
    client_of,
    node_of,
)
from tests.dynaps.samples import SAMPLE_BODIES, sample_body

LAYOUTS = [
    TableLayout(num_keys=100, dim=3, dtype=np.dtype(np.float32), num_states=0),
    TableLayout(num_keys=50, dim=2, dtype=np.dtype(np.float64), num_states=2),
]
KEYS = np.array([3, 0, 99, 3], dtype=np.int64)
POSITIONS = np.array([0, 2, 1, 3], dtype=np.int32)
VALUES = np.arange(12, dtype=np.float32).reshape(4, 3)


def wire(msg: Message) -> list[bytes]:
    return [bytes(memoryview(frame)) for frame in encode(msg)]


def data_messages() -> list[Message]:
    base: dict[str, Any] = {
        "sender": 2,
        "requester": client_of(3),
        "req_id": 2**40 + 5,
        "epoch": 7,
        "hops": 1,
    }
    state_rows = np.ones((4, 2), dtype=np.float64)
    return [
        Message(MsgType.PULL, count=4, keys=KEYS, **base),
        Message(MsgType.PULL, count=4, keys=KEYS, positions=POSITIONS, **base),
        Message(MsgType.PULL_REPLY, count=4, values=VALUES, **base),
        Message(MsgType.PULL_REPLY, count=4, positions=POSITIONS, values=VALUES, **base),
        Message(MsgType.PUSH, count=4, keys=KEYS, values=VALUES, **base),
        Message(MsgType.PUSH, count=4, keys=KEYS, positions=POSITIONS, values=VALUES, **base),
        Message(MsgType.SET, count=4, keys=KEYS, values=VALUES, **base),
        Message(MsgType.ACK, count=4, **base),
        Message(MsgType.ACK, count=4, positions=POSITIONS, **base),
        Message(MsgType.LOCALIZE, count=4, keys=KEYS, **base),
        Message(MsgType.RELEASE, count=4, keys=KEYS, **base),
        Message(MsgType.HANDOFF, count=4, keys=KEYS, aux=9, **base),
        Message(MsgType.TRANSFER_DONE, count=4, keys=KEYS, **base),
        Message(
            MsgType.TRANSFER,
            table=0,
            count=4,
            keys=KEYS,
            values=VALUES,
            records={"records": [[1, 2, [0], [3]]]},
            **base,
        ),
        Message(
            MsgType.TRANSFER,
            table=1,
            count=4,
            keys=np.array([1, 2, 3, 49]),
            aux=2,
            values=np.zeros((4, 2)),
            states=(state_rows, state_rows * 2),
            **base,
        ),
        Message(
            MsgType.SHARD_COPY,
            table=1,
            count=3,
            aux=2,
            keys=np.array([1, 2, 3]),
            dir_owner=np.array([4, 5, 6], dtype=np.int16),
            dir_moving=np.array([-1, -1, 7], dtype=np.int16),
            values=np.ones((3, 2)),
            states=(state_rows[:3], state_rows[:3] * 3),
            **base,
        ),
        Message(  # a part sent at the freeze: the records of the moved keys go with it
            MsgType.SHARD_COPY,
            table=0,
            count=1,
            flags=FINAL,
            keys=np.array([3]),
            dir_owner=np.array([4], dtype=np.int16),
            dir_moving=np.array([-1], dtype=np.int16),
            values=np.ones((1, 3), dtype=np.float32),
            records={"records": [[client_of(3), 9, None, [3]]]},
            **base,
        ),
        Message(MsgType.OWNERS, count=4, aux=1, keys=KEYS, **base),
        Message(MsgType.REPLICATE, count=4, aux=0, keys=KEYS, positions=POSITIONS, values=VALUES, **base),
        Message(MsgType.WRITEBACK, count=4, aux=0, keys=KEYS, values=VALUES, **base),
        Message(MsgType.LOCALIZED, count=4, **base),
        Message(MsgType.ERROR, text="something went wrong: ünïcode", **base),
    ]


def control_messages() -> list[Message]:
    return [decode(messages.control(kind, 0, sample_body(kind)), []) for kind in sorted(CONTROL_TYPES)]


def test_every_control_type_has_a_body_model_and_a_sample() -> None:
    assert set(control.BODIES) == set(CONTROL_TYPES)
    assert set(SAMPLE_BODIES) == set(CONTROL_TYPES)


def test_control_bodies_are_parsed_once_on_receipt() -> None:
    msg = decode(messages.control(MsgType.CHECKPOINT, 0, sample_body(MsgType.CHECKPOINT)), [])
    order = control.body_of(msg, control.Checkpoint)
    assert order.phase is control.CheckpointPhase.WRITE
    with pytest.raises(ProtocolError, match="carries Checkpoint, not Barrier"):
        control.body_of(msg, control.Barrier)


def test_a_body_of_another_model_is_not_sent() -> None:
    with pytest.raises(TypeError, match="BARRIER carries Barrier, not Clock"):
        messages.control(MsgType.BARRIER, 0, control.Clock(clock=1))


def _delta(**fields: object) -> bytes:
    """The sample MEMBERSHIP_DELTA body with ``fields`` changed."""
    return json.dumps({**SAMPLE_BODIES[MsgType.MEMBERSHIP_DELTA], **fields}).encode()


def _recover(**fields: object) -> bytes:
    """The sample RECOVER body with ``fields`` changed."""
    return json.dumps({**SAMPLE_BODIES[MsgType.RECOVER], **fields}).encode()


@pytest.mark.parametrize(
    ("kind", "body", "problem"),
    [
        (MsgType.CHECKPOINT, b'{"id": 1, "phase": "explode"}', "invalid Checkpoint body"),
        (MsgType.BARRIER, b'{"generation": -1}', "invalid Barrier body"),
        (MsgType.PING, b'{"extra": 1}', "invalid Empty body"),
        (MsgType.WORKER_DONE, b"{}", "invalid WorkerDone body"),
        # membership deltas: bounded and consistent before anything applies them
        (MsgType.MEMBERSHIP_DELTA, _delta(version=3), "version must be above its base"),
        (MsgType.MEMBERSHIP_DELTA, _delta(homes=[1]), "one home per shard"),
        (MsgType.MEMBERSHIP_DELTA, _delta(shards=[0, 0]), "a shard listed twice"),
        (MsgType.MEMBERSHIP_DELTA, _delta(shards=[0, 1 << 20]), "invalid MembershipDelta body"),
        (MsgType.MEMBERSHIP_DELTA, _delta(homes=[2, 0]), "invalid MembershipDelta body"),
        (MsgType.MEMBERSHIP_DELTA, _delta(backups=[[1]]), "one row of backups per shard"),
        (MsgType.MEMBERSHIP_DELTA, _delta(backups=[[1], [-2]]), "invalid MembershipDelta body"),
        (MsgType.MEMBERSHIP_DELTA, _delta(removed=[2]), "a node listed twice"),
        (MsgType.MEMBERSHIP_DELTA, _delta(removed=[16_001]), "invalid MembershipDelta body"),
        (MsgType.MEMBERSHIP_QUERY, b'{"version": -1}', "invalid MembershipQuery body"),
        # targeted recovery: bounded shard and node ids
        (MsgType.HOLDING, b'{"id": 1, "shards": []}', "invalid Holding body"),
        (MsgType.HOLDING, b'{"id": 1, "shards": [1048576]}', "invalid Holding body"),
        (MsgType.HOLDING, b'{"id": 0, "shards": [1]}', "invalid Holding body"),
        (MsgType.HOLDING_NOTED, b'{"id": 1, "shards": [-1]}', "invalid Holding body"),
        (MsgType.RECOVER, _recover(holders=[0]), "invalid Recover body"),
        (MsgType.RECOVER, _recover(holders=[16_001]), "invalid Recover body"),
        (MsgType.RECOVER, _recover(holders=list(range(1, 16_002))), "invalid Recover body"),
    ],
)
def test_a_body_that_does_not_fit_its_model_is_refused(kind: MsgType, body: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode([_header(type=int(kind)), body], [])


def test_a_large_control_body_travels_deflated_and_a_small_one_plain() -> None:
    small = control.Stats(counters={"messages": 3})
    large = control.Stats(counters={f"counter_{i}": i for i in range(2_000)})  # about 40 KB of JSON
    for body, deflated in ((small, False), (large, True)):
        frames = messages.control(MsgType.STATS_REPLY, 4, body)
        flags = HEADER.unpack_from(frames[0])[2]
        assert bool(flags & DEFLATED) is deflated
        assert len(frames[1]) < DEFLATE_OVER  # deflated, the large one shrinks below the threshold
        assert decode([bytes(f) for f in frames], []).body == body


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (zlib.compress(b" " * (MAX_BODY_BYTES + 1) + b"{}", 9), "control body too large"),  # a bomb
        (b"not deflate", "does not inflate"),
        (zlib.compress(b"{}")[:-3], "not one deflate stream"),  # cut short
        (zlib.compress(b"{}") + b"more", "not one deflate stream"),
    ],
)
def test_a_deflated_body_that_is_not_one_bounded_stream_is_refused(body: bytes, problem: str) -> None:
    head = _header(type=int(MsgType.STATS_REPLY), flags=DEFLATED)
    with pytest.raises(ProtocolError, match=problem):
        decode([head, body], [])


def test_constructors_derive_count_and_state_arrays() -> None:
    states = (np.ones((4, 2)), np.ones((4, 2)))
    msg = messages.transfer(2, 3, 9, 1, np.array([1, 2, 3, 4]), np.zeros((4, 2)), states)
    assert (msg.count, msg.aux) == (4, 2)
    decoded = decode(wire(msg), LAYOUTS)
    assert decoded.type is MsgType.TRANSFER
    assert decoded.count == 4
    with pytest.raises(ValueError, match="not a request"):
        messages.request(MsgType.ACK, 1, 1, 0, KEYS)


def test_split_by_destination_keeps_a_whole_message_whole() -> None:
    msg = messages.request(MsgType.PUSH, 5, 7, 0, KEYS, values=VALUES)
    assert routing.split(msg, np.array([2, 2, 2, 2])) == [(2, msg)]
    parts = dict(routing.split(msg, np.array([2, 1, 2, 1]), sender=9))
    assert sorted(parts) == [1, 2]
    assert parts[2].positions is not None
    np.testing.assert_array_equal(parts[2].keys, KEYS[[0, 2]])
    np.testing.assert_array_equal(parts[2].positions, [0, 2])
    np.testing.assert_array_equal(parts[1].values, VALUES[[1, 3]])
    assert all(part.sender == 9 and part.req_id == 7 for part in parts.values())


def test_every_message_type_is_covered() -> None:
    covered = {m.type for m in data_messages() + control_messages()}
    assert covered == set(MsgType)


@pytest.mark.parametrize("msg", data_messages() + control_messages(), ids=repr)
def test_round_trip(msg: Message) -> None:
    decoded = decode(wire(msg), LAYOUTS)
    for name in (
        "type",
        "sender",
        "requester",
        "req_id",
        "table",
        "count",
        "aux",
        "hops",
        "epoch",
        "body",
        "records",
    ):
        assert getattr(decoded, name) == getattr(msg, name), name
    if msg.type is MsgType.ERROR:
        assert decoded.text == msg.text
    for name in ("keys", "positions", "values", "dir_owner", "dir_moving"):
        expected = getattr(msg, name)
        got = getattr(decoded, name)
        if expected is None:
            assert got is None, name
        else:
            np.testing.assert_array_equal(got, expected)
            assert got.dtype == expected.dtype or name == "keys"
    assert len(decoded.states) == len(msg.states)
    for got, expected in zip(decoded.states, msg.states, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_repr_is_readable() -> None:
    text = repr(data_messages()[1])
    assert text.startswith("<PULL from=2")
    assert "keys=[3, 0, 99, 3]" in text
    assert "positions" in text


def test_endpoint_ids() -> None:
    assert node_of(client_of(17)) == 17
    assert client_of(17) != 17


def _header(**fields: int) -> bytes:
    values = {
        "version": PROTOCOL_VERSION,
        "type": int(MsgType.PULL),
        "flags": 0,
        "table": 0,
        "sender": 1,
        "requester": 1,
        "hops": 0,
        "epoch": 0,
        "req_id": 1,
        "count": 1,
        "aux": 0,
    }
    values.update(fields)
    return HEADER.pack(*values.values())


ONE_KEY = np.array([5], dtype=np.int64).tobytes()


@pytest.mark.parametrize(
    ("frames", "problem"),
    [
        ([], "empty"),
        ([b"short"], "header frame has 5 bytes"),
        ([_header(version=9), ONE_KEY], "protocol version 9"),
        ([_header(type=200), ONE_KEY], "unknown message type 200"),
        ([_header(hops=99), ONE_KEY], "forwarded 99 times"),
        ([_header(table=5), ONE_KEY], "table index 5"),
        ([_header(), ONE_KEY, ONE_KEY], "needs 1 payload frames"),
        ([_header(count=2), ONE_KEY], "payload frame has 8 bytes, expected 16"),
        ([_header(), np.array([100], dtype=np.int64).tobytes()], "key 100 outside"),
        ([_header(), np.array([-1], dtype=np.int64).tobytes()], "key -1 outside"),
        ([_header(count=2), np.array([1, 100], dtype=np.int64).tobytes()], "outside"),
        ([_header(flags=1), ONE_KEY, struct.pack("<i", -1)], "negative position"),
        ([_header(type=int(MsgType.PUSH)), ONE_KEY, b"\0" * 8], "payload frame has 8 bytes, expected 12"),
        ([_header(flags=INLINE) + ONE_KEY + b"x"], "frame has 41 bytes, expected 40"),
        ([_header(flags=INLINE) + ONE_KEY, ONE_KEY], "inline PULL has 2 frames"),
        ([_header() + ONE_KEY, ONE_KEY], "header frame has 40 bytes"),
        ([_header(type=int(MsgType.LOCALIZED)), ONE_KEY], "carries no payload"),
        ([_header(type=int(MsgType.TRANSFER), aux=1), ONE_KEY, b"\0" * 12, b"\0" * 12], "state arrays"),
        ([_header(type=int(MsgType.LOCALIZE), flags=1), ONE_KEY, b"\0" * 4], "carries no positions"),
        ([_header(flags=RECORDS), ONE_KEY, b"{}"], "PULL with records is malformed"),
        ([_header(type=int(MsgType.REPLICATE), flags=RECORDS), ONE_KEY, b"not json"], "not JSON"),
        ([_header(type=int(MsgType.REGISTER)), b"not json"], "not JSON"),
        ([_header(type=int(MsgType.REGISTER)), b"[1, 2]"], "JSON object"),
        ([_header(type=int(MsgType.REGISTER))], "one body frame"),
        ([_header(type=int(MsgType.ERROR))], "exactly one text frame"),
    ],
)
def test_malformed_messages_are_refused(frames: list[bytes], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode(frames, LAYOUTS)


def test_small_payloads_travel_inline_and_large_ones_as_frames() -> None:
    small = Message(MsgType.PULL, 1, 1, 1, 0, 3, keys=np.array([1, 2, 3]))
    assert len(encode(small)) == 1
    rows = np.zeros((INLINE_MAX // 12 + 1, 3), dtype=np.float32)
    large = Message(MsgType.PULL_REPLY, 1, 1, 1, 0, len(rows), values=rows)
    frames = encode(large)
    assert len(frames) == 2
    assert frames[1] is rows, "large arrays are passed to zmq as they are (no copy)"
    np.testing.assert_array_equal(decode(wire(large), LAYOUTS).values, rows)


def test_header_is_32_bytes() -> None:
    assert HEADER_SIZE == 32


def test_rows_split_by_destination_keep_exactly_their_sections() -> None:
    states = (VALUES * 2,)
    rows = messages.rows(MsgType.REPLICATE, 2, 5, 7, 0, KEYS, VALUES, states)
    assert routing.split_rows(rows, np.array([3, 3, 3, 3])) == [(3, rows)]
    parts = dict(routing.split_rows(rows, np.array([3, 4, 3, 4])))
    assert parts[3].positions is None  # none invented: a backup acknowledges whole requests
    np.testing.assert_array_equal(parts[4].keys, KEYS[[1, 3]])
    np.testing.assert_array_equal(parts[4].states[0], states[0][[1, 3]])
    with_positions = messages.rows(MsgType.WRITEBACK, 2, 5, 7, 0, KEYS, VALUES, (), positions=POSITIONS)
    parts = dict(routing.split_rows(with_positions, np.array([3, 4, 3, 4])))
    assert parts[3].positions is not None
    np.testing.assert_array_equal(parts[3].positions, POSITIONS[[0, 2]])


def test_peek_reads_the_type_and_sender_of_a_well_formed_header_only() -> None:
    beat = messages.control(MsgType.HEARTBEAT, 7, sample_body(MsgType.HEARTBEAT))
    assert codec.peek(beat) == (MsgType.HEARTBEAT, 7)
    assert codec.peek([]) is None
    assert codec.peek([b"short"]) is None
    assert codec.peek([_header(version=9)]) is None
    assert codec.peek([_header(type=200)]) is None
