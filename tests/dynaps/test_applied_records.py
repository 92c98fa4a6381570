"""The records of applied requests that travel with moving keys (dynaps.node.applied): a
retry is recognised at a key's new owner, and only the part about the moved keys travels."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaps.node.applied import AppliedRequests, _marked
from dynaps.wire import messages
from dynaps.wire.protocol import REMEMBERED_REQUESTS, RETRY, Message, MsgType, client_of

CLIENT = client_of(5)


def retry(req_id: int, keys: list[int], positions: list[int]) -> Message:
    return messages.request(
        MsgType.PUSH,
        CLIENT,
        req_id,
        0,
        np.array(keys, dtype=np.int64),
        values=np.zeros((len(keys), 1)),
        positions=np.array(positions, dtype=np.int32),
        flags=RETRY,
    )


def moved(source: AppliedRequests, keys: list[int]) -> tuple[AppliedRequests, dict[str, object] | None]:
    """What a TRANSFER of ``keys`` carries from ``source``, adopted by a fresh node (via JSON,
    as on the wire)."""
    records = source.records_for(np.array(keys, dtype=np.int64))
    target = AppliedRequests()
    target.adopt_records(json.loads(json.dumps(records)) if records else None)
    return target, records


def test_only_the_moved_keys_and_their_positions_travel() -> None:
    home = AppliedRequests()
    # part of a split request: positions 0, 2, 4, 6 of the client's keys landed here
    home.remember(CLIENT, 9, np.array([0, 2, 4, 6], dtype=np.int32), np.array([10, 11, 12, 13]))
    owner, records = moved(home, [11, 13, 40])
    assert records == {"records": [[CLIENT, 9, [2, 6], [11, 13]]]}
    applied = owner.already_applied(retry(9, [11, 13], [2, 6]))
    assert applied is not None
    assert applied.tolist() == [True, True]
    # positions of keys that did not move are the old owner's to recognise
    applied = owner.already_applied(retry(9, [10, 12], [0, 4]))
    assert applied is not None
    assert applied.tolist() == [False, False]
    applied = home.already_applied(retry(9, [10, 12], [0, 4]))
    assert applied is not None
    assert applied.tolist() == [True, True]
    # a move of keys no request touched carries nothing
    assert moved(home, [99])[1] is None


def test_a_whole_request_stays_whole_where_its_keys_travel() -> None:
    home = AppliedRequests()
    home.remember(CLIENT, 3, None, np.array([1, 2, 3]))  # every position was applied here
    owner, records = moved(home, [2])
    assert records == {"records": [[CLIENT, 3, None, [2]]]}
    applied = owner.already_applied(retry(3, [1, 2], [0, 1]))
    assert applied is not None
    assert applied.all()


def test_what_travels_on_stays_as_small_as_the_move() -> None:
    """A node that held many blocks of a request ships only the block that leaves (the
    records used to grow with every block a node ever held, and travel whole)."""
    worker = AppliedRequests()
    blocks = [np.arange(b * 100, (b + 1) * 100) for b in range(8)]
    for _b, keys in enumerate(blocks):  # each block arrives from its home with its record
        home = AppliedRequests()
        home.remember(CLIENT, 1, keys.astype(np.int32), keys)
        worker.adopt_records(home.records_for(keys))
    records = worker.records_for(blocks[3])
    assert records is not None
    shipped = records["records"]
    assert isinstance(shipped, list)
    assert len(shipped) == 1
    assert shipped[0][2] == shipped[0][3] == blocks[3].tolist()  # positions, keys


@settings(max_examples=60, deadline=None)
@given(
    owners=st.lists(st.integers(0, 2), min_size=1, max_size=30),
    path=st.lists(st.integers(0, 2), min_size=1, max_size=6),
)
def test_a_retry_is_recognised_wherever_its_keys_went(owners: list[int], path: list[int]) -> None:
    """Request positions 0..n-1 applied at three nodes by key; then the keys of one node move
    along ``path`` (each hop ships the records the relocation would): at every stop, each
    position whose key is held there is recognised as applied."""
    n = len(owners)
    keys = np.arange(100, 100 + n, dtype=np.int64)
    nodes = [AppliedRequests() for _ in range(3)]
    for node, held in enumerate(nodes):
        mine = np.flatnonzero(np.array(owners) == node)
        if len(mine):
            held.remember(CLIENT, 4, mine.astype(np.int32), keys[mine])
    travelling = np.flatnonzero(np.array(owners) == path[0])
    here = nodes[path[0]]
    for stop in path[1:]:
        records = here.records_for(keys[travelling])
        nodes[stop].adopt_records(json.loads(json.dumps(records)) if records else None)
        here = nodes[stop]
    if len(travelling):
        applied = here.already_applied(retry(4, keys[travelling].tolist(), travelling.tolist()))
        assert applied is not None
        assert applied.all()


@given(
    st.lists(st.integers(0, 2**40), max_size=40),
    st.lists(st.integers(0, 2**40), max_size=40),
    st.integers(1, 2**40),
)
def test_the_bitmap_membership_test_agrees_with_isin(
    values: list[int], chosen: list[int], scale: int
) -> None:
    """``_marked`` stands in for ``np.isin`` on the hot paths (every push, every move)."""
    left = np.asarray([v % scale for v in values], dtype=np.int64)
    right = np.asarray([c % scale for c in chosen], dtype=np.int64)
    np.testing.assert_array_equal(_marked(left, right), np.isin(left, right))


# ------------------------------------------------------------------ room for records


def test_a_needed_record_is_kept_when_older_ones_arrive_after_it() -> None:
    """Records arrive out of order (adopted with keys, forwarded, retried): at the cap the
    one dropped is a settled one, not the first inserted, which may still be needed (review
    of stop 27, finding 3; before, request 5000 was dropped and 1..4096 kept)."""
    applied, keys = AppliedRequests(), np.arange(3, dtype=np.int64)
    applied.remember(CLIENT, 5000, None, keys)  # still unsettled
    applied.forget_before(CLIENT, 5000, 4999)  # the client's watermark: 4999
    for req_id in range(1, REMEMBERED_REQUESTS + 1):  # old requests' records, adopted later
        applied.remember(CLIENT, req_id, None, keys)
    assert 5000 in applied.applied[CLIENT]
    assert applied.evicted_unsettled == 0


def test_records_below_the_watermark_are_not_kept_and_a_new_life_starts_over() -> None:
    applied, keys = AppliedRequests(), np.arange(2, dtype=np.int64)
    applied.remember(CLIENT, 900, None, keys)
    applied.forget_before(CLIENT, 900, 800)
    applied.remember(CLIENT, 700, None, keys)  # settled: no copy of it can come any more
    assert 700 not in applied.applied[CLIENT]
    life = 900 - (1 << 50)  # a restarted process: ids from another random start
    applied.remember(CLIENT, life, None, keys)
    assert life in applied.applied[CLIENT]
    applied.forget_before(CLIENT, life, life & 0xFFFFFFFF)
    applied.remember(CLIENT, life + 1, None, keys)
    assert life + 1 in applied.applied[CLIENT]


def test_the_requester_s_watermark_travels_with_its_records_and_settles_them_there() -> None:
    """A node that adopts records of a requester that never pushes to it learns the
    requester's watermark with them: its records below it are settled there too, instead of
    travelling on with every move of their keys (w2v's bouncing words, issue 18)."""
    home, keys = AppliedRequests(), np.arange(4, dtype=np.int64)
    home.remember(CLIENT, 900, None, keys[:2])
    home.remember(CLIENT, 950, None, keys[2:])
    home.forget_before(CLIENT, 950, 940)  # the requester has every answer below 940
    assert list(home.applied[CLIENT]) == [950]
    elsewhere = AppliedRequests()
    elsewhere.remember(CLIENT, 910, None, keys[2:])  # adopted earlier from another node
    elsewhere.remember(CLIENT, 960, None, keys[2:])
    records = home.records_for(keys)
    assert records is not None
    assert records["settled"] == [[CLIENT, 940]]
    elsewhere.adopt_records(json.loads(json.dumps(records)))
    assert list(elsewhere.applied[CLIENT]) == [960, 950]  # 910 settled by the watermark
    assert elsewhere.settled_below[CLIENT] == 940
    elsewhere.remember(CLIENT, 920, None, keys)  # a settled request's record is not kept
    assert 920 not in elsewhere.applied[CLIENT]
    # an older watermark does not move a newer one back; malformed ones are ignored
    elsewhere.adopt_records({"records": [], "settled": [[CLIENT, 930], [CLIENT, "x"], "junk", [1]]})
    assert elsewhere.settled_below[CLIENT] == 940
    # a retry of an unsettled request is still recognised where the record went
    assert elsewhere.already_applied(retry(950, [2, 3], [0, 1])) is not None


def test_a_program_s_settled_records_end_at_its_own_node() -> None:
    """A program's update that is never followed by another to the same node (an app's
    initial set of a table) left a record that travelled with every later move of its keys
    (MF: every column block's). The program's own node reads the watermark the program
    publishes before each localize, and drops those records when the keys arrive."""
    other = client_of(6)
    home, keys = AppliedRequests(), np.arange(4, dtype=np.int64)
    home.remember(CLIENT, 900, None, keys)  # the program's set: answered long ago
    home.remember(other, 70, None, keys[:1])  # another program's push, not settled
    published = [0]
    own_node = AppliedRequests()
    own_node.own_program = (CLIENT, lambda: published[0])
    records = home.records_for(keys)
    own_node.adopt_records(json.loads(json.dumps(records)))
    assert CLIENT in own_node.applied  # nothing published yet: kept
    published[0] = 901  # every request below 901 answered
    own_node.adopt_records(json.loads(json.dumps(records)))
    records = own_node.records_for(keys)  # what the next move carries
    assert records is not None
    travelling = records["records"]
    assert isinstance(travelling, list)
    assert [r[0] for r in travelling] == [other]  # the other program's goes on
    assert CLIENT not in own_node.applied or not own_node.applied[CLIENT]
    assert own_node.settled_below[CLIENT] == 901


def test_a_requester_with_more_unsettled_requests_than_the_room_is_counted() -> None:
    applied, keys = AppliedRequests(), np.arange(1, dtype=np.int64)
    for req_id in range(1, REMEMBERED_REQUESTS + 2):
        applied.remember(CLIENT, req_id, None, keys)
    assert len(applied.applied[CLIENT]) == REMEMBERED_REQUESTS
    assert 1 not in applied.applied[CLIENT]
    assert applied.evicted_unsettled == 1


@settings(max_examples=60, deadline=None)
@given(
    touched=st.lists(st.lists(st.integers(0, 30), max_size=6), min_size=1, max_size=12),
    keys=st.lists(st.integers(0, 30), max_size=8, unique=True),
)
def test_a_move_carries_exactly_the_records_that_touched_its_keys(
    touched: list[list[int]], keys: list[int]
) -> None:
    home = AppliedRequests()
    for req_id, record in enumerate(touched, start=1):  # empty records too: a push of no key
        home.remember(
            CLIENT, req_id, np.arange(len(record), dtype=np.int32), np.array(record, dtype=np.int64)
        )
    records = home.records_for(np.array(sorted(keys), dtype=np.int64))
    expected = [
        [CLIENT, req_id, [i for i, k in enumerate(record) if k in keys], [k for k in record if k in keys]]
        for req_id, record in enumerate(touched, start=1)
        if set(record) & set(keys)
    ]
    assert (records or {"records": []})["records"] == expected
