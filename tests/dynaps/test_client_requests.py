"""The client's request paths without processes: routing around gone nodes, parking,
retries after a loss, and what a restarted coordinator is asked again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaps.client.barriers import Barriers
from dynaps.client.deadlines import Deadline, deadline_after
from dynaps.client.handles import Handle
from dynaps.client.holdings import Holdings
from dynaps.client.membership import Membership
from dynaps.client.request_ids import UNSETTLED_IDS
from dynaps.client.requests import Requests
from dynaps.client.table import Table
from dynaps.contract import (
    Consistency,
    ConsistencyModel,
    FaultTolerance,
    NamedTable,
    Partition,
    RuntimeConfig,
    UpdaterKind,
    UpdaterSpec,
)
from dynaps.errors import Drained, DynapsTimeoutError, KeyRangeError, UsageError
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.wire import control
from dynaps.wire.codec import decode, encode_reply
from dynaps.wire.protocol import (
    COORDINATOR,
    REMEMBERED_REQUESTS,
    RETRY,
    Message,
    MsgType,
    TableLayout,
    client_of,
)

WORKER = 3  # our node; servers 1 and 2 home keys [0, 4) and [4, 8)
NUM_KEYS = 8


class Recorder:
    """A transport that keeps what is sent."""

    def __init__(self, layouts: list[TableLayout] | None = None) -> None:
        self.layouts = LAYOUTS if layouts is None else layouts
        self.endpoint = client_of(WORKER)
        self.address = "sim://client"
        self.rejected = 0
        self.last_rejected = ""
        self.sent: list[tuple[int, Message]] = []
        self.forgotten: set[int] = set()

    def connect(self, endpoint: int, address: str) -> None: ...

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        self.forgotten.add(endpoint)

    def knows(self, endpoint: int) -> bool:
        return True

    def send(self, endpoint: int, frames: Any) -> None:
        self.sent.append((endpoint, decode([bytes(memoryview(f)) for f in frames], self.layouts)))

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        return None

    def close(self, linger: float = 0.0) -> None: ...

    def take(self) -> list[tuple[int, Message]]:
        sent, self.sent = self.sent, []
        return sent


SPEC = NamedTable(name="W", num_keys=NUM_KEYS, dim=1)
LAYOUTS = [
    TableStore.create(0, SPEC, ShardMap.initial(2, Partition.RANGE, [1, 2]), home=None, shared=False).layout
]


def shard_map(epoch: int, homes: list[int]) -> ShardMap:
    return ShardMap(epoch, 2, Partition.RANGE, np.array(homes, dtype=np.int16))


def membership(
    epoch: int, homes: list[int], lost: tuple[int, ...] = (), incarnation: str = "a"
) -> control.Membership:
    return control.Membership(
        version=epoch,
        incarnation=incarnation,
        phase=control.Phase.RUNNING,
        nodes=[],
        shard_map=shard_map(epoch, homes).to_json(),
        num_workers=1,
        lost=list(lost),
    )


class Client:
    """A training process's client on its own, its node's store in this process.

    ``tolerance``: the job's fault tolerance (replication changes what a push does);
    ``transport``: given the store's layouts, the transport (default: a Recorder);
    ``control_block``: what the node shares with its program (default: one byte, no node)."""

    def __init__(
        self,
        spec: NamedTable = SPEC,
        tolerance: FaultTolerance | None = None,
        transport: Callable[[list[TableLayout]], Recorder] = Recorder,
        control_block: npt.NDArray[np.uint8] | None = None,
    ) -> None:
        tolerance = tolerance or FaultTolerance()
        replicated = tolerance.replication > 0  # the node then tracks which keys changed
        self.store = TableStore.create(
            0, spec, shard_map(1, [1, 2]), home=None, shared=False, track_changes=replicated
        )
        self.transport = transport([self.store.layout])
        bsp = Consistency(model=ConsistencyModel.BSP)
        config = RuntimeConfig(
            tables=[spec], servers=2, workers=1, consistency=bsp, fault_tolerance=tolerance
        )
        if control_block is None:
            control_block = np.zeros(1, dtype=np.uint8)
        self.requests = Requests(
            config,
            WORKER,
            0,
            self.transport,
            [self.store],
            NullLock(),
            control_block,
            self.control,
        )
        self.barriers = Barriers(self.requests)
        self.membership = Membership(self.transport, self.requests, 1, self.barriers.repeat)
        self.membership.apply(membership(1, [1, 2]))
        self.holdings = Holdings(self.requests)
        self.table = Table(self.requests, 0, self.store, self.holdings)
        self.controls: list[Message] = []

    def control(self, msg: Message) -> None:
        self.controls.append(msg)


def test_a_pull_from_an_owner_that_left_goes_to_the_home() -> None:
    client = Client()
    client.store.loc[:] = 7  # cached owner: a worker node that has since left
    client.requests.apply_membership(shard_map(2, [1, 2]), gone={7}, lost=set())
    handle = client.table.pull([5], wait=False)
    assert isinstance(handle, Handle)
    [(dest, msg)] = client.transport.take()
    assert (dest, msg.type, msg.keys.tolist()) == (2, MsgType.PULL, [5])  # type: ignore[union-attr]


def test_a_request_for_a_gone_home_is_parked_until_the_next_membership() -> None:
    client = Client()
    client.store.loc[:] = 2
    client.requests.apply_membership(shard_map(1, [1, 2]), gone={2}, lost=set())
    client.table.pull([5, 6], wait=False)
    assert client.transport.take() == []  # its keys have no home yet
    client.membership.apply(membership(2, [1, 1]))  # the keys' shard moved to server 1
    [(dest, msg)] = client.transport.take()
    assert (dest, msg.type, msg.keys.tolist()) == (1, MsgType.PULL, [5, 6])  # type: ignore[union-attr]


def test_a_lost_node_gets_the_unanswered_part_of_requests_sent_again() -> None:
    client = Client()
    client.store.loc[:] = 2
    client.table.pull([4, 5], wait=False)
    [(_, sent)] = client.transport.take()
    answer = Message(
        MsgType.PULL_REPLY, sender=2, req_id=sent.req_id, count=1, positions=np.array([0], np.int32)
    )
    answer.values = np.ones((1, 1), dtype=np.float32)
    client.requests.handles[sent.req_id].absorb(answer)
    client.membership.apply(membership(2, [1, 1], lost=(2,)))
    assert {2, client_of(2)} <= client.transport.forgotten
    [(dest, retry)] = client.transport.take()
    assert dest == 1
    assert retry.flags & RETRY
    assert retry.keys is not None
    assert retry.keys.tolist() == [5]
    assert retry.positions is not None
    assert retry.positions.tolist() == [1]


def test_a_node_that_left_gets_unanswered_requests_sent_again_to_the_new_home() -> None:
    """A localize sent with a shard map from before its home left (a program that read no
    reply meanwhile) may reach it after it stopped forwarding: once the membership says the
    node is gone, unanswered requests go again, marked as retries, to the keys' new home: a
    push too, which the node that applied it (if one did) recorded, and its records went
    with the key (tests/dynaps/test_client_retries.py follows one through real nodes)."""
    client = Client()
    client.store.loc[:] = 2
    client.table.push([4], np.ones((1, 1)), wait=False)
    [(_, push)] = client.transport.take()
    assert push.type is MsgType.PUSH
    client.table.localize([5], wait=False)
    [(_, holding)] = client.transport.take()  # the shard's first localize: the coordinator notes us
    assert holding.type is MsgType.HOLDING
    client.holdings.on_noted(control.body_of(holding, control.Holding))
    [(first, sent)] = client.transport.take()
    assert (first, sent.type) == (2, MsgType.LOCALIZE)
    client.requests.apply_membership(shard_map(2, [1, 1]), gone={2}, lost=set())  # 2 left
    resent = sorted(
        (dest, msg.type.name, msg.req_id, bool(msg.flags & RETRY)) for dest, msg in client.transport.take()
    )
    assert resent == sorted([(1, "PUSH", push.req_id, True), (1, "LOCALIZE", sent.req_id, True)])


def test_a_restarted_coordinator_is_asked_again_for_the_clock() -> None:
    client = Client()
    client.barriers.clock_min(5)
    client.barriers.clock()  # under bsp: the others are ahead, no wait
    assert [m.type for _, m in client.transport.take()] == [MsgType.CLOCK]
    client.membership.apply(membership(1, [1, 2], incarnation="b"))
    [(dest, msg)] = client.transport.take()
    assert (dest, msg.type, msg.body) == (COORDINATOR, MsgType.CLOCK, control.Clock(clock=1))


def test_a_drained_node_stops_the_table() -> None:
    client = Client()
    client.requests.control[0] = 1
    with pytest.raises(Drained):
        client.table.pull([0])


def test_a_reply_of_the_wrong_kind_or_from_a_non_node_is_refused() -> None:
    """An ACK for a pull would complete it with rows never written (NaN from np.empty)."""
    client = Client()
    client.store.loc[:] = 2
    handle = client.table.pull([5], wait=False)
    assert isinstance(handle, Handle)
    [(_, msg)] = client.transport.take()
    ack = encode_reply(MsgType.ACK, 2, msg.requester, msg.req_id, 0, 1, 0, None, None)
    client.requests.receive(ack)
    assert not handle.done()
    rows = np.ones((1, SPEC.dim), np.float32)
    from_a_client = encode_reply(
        MsgType.PULL_REPLY, client_of(2), msg.requester, msg.req_id, 0, 1, 0, None, rows
    )
    client.requests.receive(from_a_client)
    assert not handle.done()
    client.requests.receive(
        encode_reply(MsgType.PULL_REPLY, 2, msg.requester, msg.req_id, 0, 1, 0, None, rows)
    )
    assert handle.done()
    assert handle.result() is not None


def test_request_ids_do_not_start_at_one() -> None:
    ids = {Client().requests.ids.take() for _ in range(4)}
    assert len(ids) == 4
    assert min(ids) > 1 << 20


# ----------------------------------------------------------------------------- one key per call
# A call with one key takes a path of its own (the per-entry hot path); the same key as the
# first of two, with a second key this node owns, takes the general path. Both must leave
# the same values and updater state, send the same requests and count the same.

OWNERS = st.sampled_from([WORKER, 1, 2, INCOMING])  # here, elsewhere, or on its way here
UPDATERS = [
    UpdaterSpec(kind=UpdaterKind.ADD),
    UpdaterSpec(kind=UpdaterKind.SGD, lr=0.5),
    UpdaterSpec(kind=UpdaterKind.ADAGRAD, lr=0.5),
    UpdaterSpec(kind=UpdaterKind.ADAM, lr=0.1),
    UpdaterSpec(kind=UpdaterKind.CUSTOM, name="momentum", lr=0.1),
]
TESTED = 4  # keys 0-3 are tested; keys 4-7, always owned here, ride along in the general calls
OPS = st.lists(
    st.tuples(
        st.sampled_from(["pull", "push", "set", "move"]),
        st.integers(0, TESTED - 1),
        st.floats(-2.0, 2.0, width=32),
        OWNERS,  # a move's new owner
        st.booleans(),  # wait, for a key owned here (a remote one would wait for a reply)
    ),
    max_size=40,
)


def sent_parts(client: Client) -> list[tuple[int, MsgType, list[int], Any]]:
    """What was sent: destination, kind, keys and rows (the general call's rows of key 4+
    stay here, so each message holds the tested key alone)."""
    out = []
    for dest, msg in client.transport.take():
        assert msg.keys is not None
        rows = None if msg.values is None else msg.values.tolist()
        out.append((dest, msg.type, msg.keys.tolist(), rows))
    return out


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(UPDATERS), st.lists(OWNERS, min_size=TESTED, max_size=TESTED), OPS)
def test_one_key_calls_do_what_the_general_path_does(
    updater: UpdaterSpec, owners: list[int], ops: list[tuple[str, int, float, int, bool]]
) -> None:
    spec = NamedTable(name="W", num_keys=2 * TESTED, dim=3, updater=updater)
    one, general = Client(spec), Client(spec)
    start = np.random.default_rng(len(ops)).normal(size=(2 * TESTED, 3)).astype(np.float32)
    for client in (one, general):
        client.store.loc[:TESTED] = owners
        client.store.loc[TESTED:] = WORKER
        client.store.values[:] = start
        client.transport.take()
    for op, key, x, new_owner, wait_if_here in ops:
        here = one.store.loc[key] == WORKER
        wait = wait_if_here and here
        keys, pair = np.array([key]), np.array([key, key + TESTED])
        if op == "move":  # the node moved the key (relocation; under the lock, as the node does)
            one.store.loc[key] = general.store.loc[key] = new_owner
        elif op == "pull":
            got = one.table.pull(keys, wait=wait)
            expected = general.table.pull(pair, wait=wait)
            if here:
                got = got if wait else got.result()
                expected = expected if wait else expected.result()
                assert isinstance(got, np.ndarray)
                assert isinstance(expected, np.ndarray)
                np.testing.assert_array_equal(got, expected[:1])
        else:
            row = np.full((1, 3), x, dtype=np.float32) * np.arange(1, 4, dtype=np.float32)
            rows = np.concatenate([row, np.zeros_like(row)])
            update = one.table.push if op == "push" else one.table.set
            update_general = general.table.push if op == "push" else general.table.set
            done = update(keys, row, wait=wait)
            update_general(pair, rows, wait=wait)
            assert (done is None) == wait
        assert sent_parts(one) == sent_parts(general)
    np.testing.assert_array_equal(one.store.values[:TESTED], general.store.values[:TESTED])
    for mine, theirs in zip(one.store.states, general.store.states, strict=True):
        np.testing.assert_array_equal(mine[:TESTED], theirs[:TESTED])
    counts, general_counts = one.requests.usage.totals(), general.requests.usage.totals()
    calls = {"pulls": 0, "pushes": 0}
    for op, *_ in ops:
        if op != "move":
            calls["pulls" if op == "pull" else "pushes"] += 1
    # the general calls also read or wrote key 4+ here, once per call
    assert counts["keys_pulled_local"] == general_counts["keys_pulled_local"] - calls["pulls"]
    assert counts["keys_pushed_local"] == general_counts["keys_pushed_local"] - calls["pushes"]
    for name in ("pulls", "pushes", "keys_pulled_remote", "keys_pushed_remote"):
        assert counts[name] == general_counts[name], name


def test_a_one_key_pull_returns_a_copy_and_checks_the_key() -> None:
    client = Client()
    client.store.loc[:] = WORKER
    client.store.values[3] = 5.0
    got = client.table.pull(np.array([3]))
    got[:] = 7.0  # the caller's array: the table keeps its value
    np.testing.assert_array_equal(client.table.pull(3), [[5.0]])
    for bad in (np.array([-1]), np.array([NUM_KEYS]), [NUM_KEYS]):
        with pytest.raises(KeyRangeError, match="outside table 'W'"):
            client.table.pull(bad)
    with pytest.raises(KeyRangeError):
        client.table.push(np.array([NUM_KEYS], dtype=np.int32), [[1.0]])
    # an unsigned key of 2**63 is named as it was given, not as the int64 it would wrap to
    with pytest.raises(
        KeyRangeError,
        match=rf"^key 9223372036854775808 is outside table .W., whose keys are \[0, {NUM_KEYS}\)$",
    ):
        client.table.pull(np.array([3, 2**63], dtype=np.uint64))
    client.table.push(np.array([3], dtype=np.int32), [1.0])  # another int dtype, a 1-D row
    np.testing.assert_array_equal(client.table.pull([3]), [[6.0]])


def test_a_timeout_says_how_many_answers_failed_authentication() -> None:
    """An answer dropped on arrival looks like one that never came: the error says so."""
    client = Client()
    client.transport.rejected = 3
    client.transport.last_rejected = "message fails authentication (not from this job, or changed)"
    dropped = r"dropped 3 incoming message\(s\), the latest: message fails"
    with pytest.raises(DynapsTimeoutError, match=dropped):
        client.requests.pump_until(client.requests.deadline(0), lambda: "barrier 1")


class AnsweringRecorder(Recorder):
    """Answers the oldest pull it was sent, each time the client waits for a message."""

    def __init__(self, layouts: list[TableLayout] | None = None) -> None:
        super().__init__(layouts)
        self.answered = 0

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        pulls = [msg for _, msg in self.sent if msg.type is MsgType.PULL]
        if not pulls:
            return None
        oldest = min(pulls, key=lambda msg: msg.req_id)
        self.sent = [(dest, msg) for dest, msg in self.sent if msg is not oldest]
        self.answered += 1
        rows = np.ones((oldest.count, SPEC.dim), np.float32)
        return encode_reply(
            MsgType.PULL_REPLY, 2, oldest.requester, oldest.req_id, 0, oldest.count, 0, None, rows
        )


def test_a_program_never_has_more_requests_unsettled_than_nodes_remember() -> None:
    """Nodes remember the updates of REMEMBERED_REQUESTS requests per requester and drop the
    oldest record for room: a program with more in flight (or sending on while a retried
    request is held) could have a record dropped that a retry still needs, and an update
    applied twice.  So a new request waits while UNSETTLED_IDS ids lie between the oldest
    unsettled request and it."""
    client = Client(transport=AnsweringRecorder)
    transport = client.transport
    assert isinstance(transport, AnsweringRecorder)
    client.store.loc[:] = 2  # every key remote
    first = client.table.pull([5], wait=False)
    for _ in range(UNSETTLED_IDS - 1):
        client.table.pull([5], wait=False)
    assert transport.answered == 0  # room for all of them
    assert isinstance(first, Handle)
    assert not first.done()
    client.table.pull([5], wait=False)  # one more: waits for the oldest one's answer first
    assert transport.answered == 1
    assert first.done()
    assert len(client.requests.handles) == UNSETTLED_IDS
    assert UNSETTLED_IDS * 2 <= REMEMBERED_REQUESTS


def test_an_id_asked_for_while_waiting_for_room_is_not_handed_out_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new id may wait for room, and the wait handles messages: an id asked for from
    there must differ from the one being waited for (review of stop 27, finding 11)."""
    client = Client(transport=AnsweringRecorder)
    client.store.loc[:] = 2  # every key remote
    for _ in range(UNSETTLED_IDS):
        client.table.pull([5], wait=False)
    requests = client.requests
    pump = requests.pump_until
    inner: list[int] = []
    asked: list[bool] = []

    def pump_and_ask(deadline: Deadline, what: Callable[[], str]) -> None:
        if not asked:
            asked.append(True)
            inner.append(requests.ids.take())  # waits in its turn, through this function
        pump(deadline, what)

    monkeypatch.setattr(requests, "pump_until", pump_and_ask)
    outer = requests.ids.take()
    assert len(inner) == 1
    assert inner[0] != outer


def impatient(client: Client, seconds: float = 0.3) -> None:
    """The client's requests time out after ``seconds`` (waiting for room too)."""
    config = client.requests.config.model_copy(update={"request_timeout_seconds": seconds})
    client.requests.config = config


def test_a_request_the_program_was_told_timed_out_no_longer_holds_the_others_back() -> None:
    """A program that catches a timeout and goes on: the timed-out request leaves the ones in
    flight (held below the watermark a few seconds, then released), so 2,048 later requests
    do not wait for it for good (review of stop 27, finding 2)."""
    client = Client()
    impatient(client)
    client.store.loc[:] = 2  # every key remote; nothing will answer
    lost = client.table.pull([5], wait=False)
    assert isinstance(lost, Handle)
    with pytest.raises(DynapsTimeoutError):
        client.requests.wait(lost, timeout=0.05)
    assert lost.req_id not in client.requests.handles
    with pytest.raises(DynapsTimeoutError):
        lost.result()  # still the timeout, at once
    holds = client.requests.retries.resent
    holds.clock = lambda: time.monotonic() + 60  # its hold has ended
    for _ in range(UNSETTLED_IDS):  # would wait for the timed-out one, and time out
        client.table.pull([5], wait=False)
    assert len(client.requests.handles) == UNSETTLED_IDS


def test_no_room_for_a_localize_leaves_its_keys_as_they_were() -> None:
    """Waiting for room comes before an operation changes anything: a localize that gets no
    room raises with its keys not marked incoming (else they would wait for ever)."""
    client = Client()
    impatient(client)
    client.store.loc[:] = 2
    for _ in range(UNSETTLED_IDS):  # unanswered
        client.table.pull([5], wait=False)
    before = client.store.loc.copy()
    with pytest.raises(DynapsTimeoutError, match="room for a new request"):
        client.table.localize([1, 2], wait=False)
    np.testing.assert_array_equal(client.store.loc, before)


def test_the_sockets_to_a_node_that_left_are_closed() -> None:
    """ZeroMQ reconnects to a closed address for ever: a socket kept to a node that left
    would hand the job's password to whoever listens there next (review of stop 27, 5)."""
    client = Client()
    client.requests.apply_membership(shard_map(2, [1, 1]), gone={2}, lost=set())  # 2 left
    assert {2, client_of(2)} <= client.transport.forgotten
    assert 1 not in client.transport.forgotten


def test_a_timeout_names_what_set_it() -> None:
    """A program that passed ``timeout=`` is told about that, not the job's default."""
    client = Client()
    client.store.loc[:] = 2  # every key remote: nobody answers here
    handle = client.table.pull([5], wait=False)
    assert isinstance(handle, Handle)
    with pytest.raises(DynapsTimeoutError, match=r"did not complete within 0\.01 s \(timeout=0\.01\)"):
        client.requests.wait(handle, timeout=0.01)
    default = client.requests.config.request_timeout_seconds
    described = deadline_after(None, default).describe()
    assert described == f"within {default:g} s (request_timeout_seconds={default:g})"
    assert deadline_after(np.int64(3), default).seconds == 3.0  # numpy's numbers are numbers


@pytest.mark.parametrize("timeout", [-1, float("nan"), "5", True])
def test_a_timeout_that_is_not_seconds_is_a_usage_error(timeout: object) -> None:
    client = Client()
    client.store.loc[:] = 2
    handle = client.table.pull([5], wait=False)
    assert isinstance(handle, Handle)
    with pytest.raises(UsageError, match="timeout must be seconds >= 0, or None for the default"):
        client.requests.wait(handle, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="timeout must be seconds"):
        client.requests.wait_all(timeout=timeout)  # type: ignore[arg-type]
