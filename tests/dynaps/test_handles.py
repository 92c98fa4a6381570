"""How replies complete a Handle: split answers, retried duplicates, errors, bad replies."""

from __future__ import annotations

import numpy as np
import pytest

from dynaps.client.handles import Handle
from dynaps.errors import ClusterError, ProtocolError
from dynaps.wire.protocol import Message, MsgType

KEYS = np.array([10, 11, 12, 13], dtype=np.int64)


def pull_handle() -> Handle:
    return Handle(None, 7, MsgType.PULL, "W", KEYS, None, len(KEYS))


def rows(*positions: int) -> np.ndarray:
    return np.array([[float(KEYS[p]), float(-KEYS[p])] for p in positions], dtype=np.float32)


def reply(*positions: int) -> Message:
    return Message(
        MsgType.PULL_REPLY,
        sender=3,
        req_id=7,
        count=len(positions),
        positions=np.array(positions, dtype=np.int32),
        values=rows(*positions),
    )


def test_a_split_pull_is_assembled_in_request_order() -> None:
    handle = pull_handle()
    fresh = handle.absorb(reply(3, 1))
    assert fresh is not None
    assert list(fresh) == [3, 1]
    assert not handle.done()
    handle.absorb(reply(0, 2))
    assert handle.done()
    np.testing.assert_array_equal(handle.result(), rows(0, 1, 2, 3))


def test_a_duplicate_answer_after_a_retry_counts_once() -> None:
    handle = pull_handle()
    handle.absorb(reply(0, 1))
    fresh = handle.absorb(reply(1, 2))  # key 1 answered again by the retried request
    assert fresh is not None
    assert list(fresh) == [2]
    assert handle.remaining == 1
    handle.absorb(reply(3))
    np.testing.assert_array_equal(handle.result(), rows(0, 1, 2, 3))


def test_a_whole_answer_completes_the_pull() -> None:
    handle = pull_handle()
    whole = Message(MsgType.PULL_REPLY, sender=3, req_id=7, count=4, values=rows(0, 1, 2, 3))
    assert handle.absorb(whole) is None
    assert handle.done()
    np.testing.assert_array_equal(handle.result(), rows(0, 1, 2, 3))


def test_an_error_reply_fails_the_operation_with_the_node_named() -> None:
    handle = pull_handle()
    handle.absorb(Message(MsgType.ERROR, sender=5, req_id=7, text="table gone"))
    assert handle.done()
    with pytest.raises(ClusterError, match="node 5: table gone"):
        handle.result()


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (Message(MsgType.ACK, sender=3, req_id=7, count=9), "acknowledges 9 keys, 4 pending"),
        (
            Message(
                MsgType.PULL_REPLY,
                sender=3,
                req_id=7,
                count=1,
                positions=np.array([4], dtype=np.int32),
                values=np.zeros((1, 2), dtype=np.float32),
            ),
            "outside the request",
        ),
    ],
)
def test_an_impossible_reply_is_refused(message: Message, problem: str) -> None:
    handle = pull_handle()
    with pytest.raises(ProtocolError, match=problem):
        handle.absorb(message)
    assert handle.remaining == 4


def test_localized_hints_never_count_past_the_request() -> None:
    handle = Handle(None, 8, MsgType.LOCALIZE, "W", KEYS, None, 4)
    handle.absorb(Message(MsgType.LOCALIZED, sender=2, req_id=8, count=3))
    handle.absorb(Message(MsgType.LOCALIZED, sender=2, req_id=8, count=3))  # after a retry
    assert handle.remaining == 0
    assert handle.done()


def test_steps_given_with_then_run_in_the_order_given() -> None:
    # a layer below (repeats asked once) spreads the values before the layer above (hot
    # keys) merges its replica's rows in: each step sees the one before's result
    handle = pull_handle()
    handle.then(lambda values: values * 2)
    handle.then(lambda values: values + 1)
    assert handle.on_done is not None
    out = handle.on_done(np.ones((1, 2), dtype=np.float32))
    assert out.tolist() == [[3.0, 3.0]]
