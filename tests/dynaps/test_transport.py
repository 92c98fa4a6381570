"""Both transports on 127.0.0.1 (plain TCP, the default, and ZeroMQ): FIFO delivery,
held-back frames, timeouts, spinning, watched connections, refused passwords.

Authentication and the size bound have their own tests (test_wire_auth.py)."""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from dynaps.config import SPIN_ENV, TRANSPORTS, spin_seconds
from dynaps.errors import ConfigError
from dynaps.wire import handshake, tcp_inbound, tcp_outbound
from dynaps.wire.auth import Authenticator
from dynaps.wire.tcp_transport import TcpTransport
from dynaps.wire.transport import JobTransport, open_transport
from dynaps.wire.zmq_transport import ZmqTransport
from tests.dynaps.wire_peers import framed, hello

KEY = bytes(range(32))


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pair(kind: str) -> Iterator[tuple[JobTransport, JobTransport]]:
    a, b = open_transport(kind, 1, KEY, spin=100e-6), open_transport(kind, 2, KEY, spin=100e-6)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def receive(t: JobTransport, spin: float = 0.0) -> list[bytes]:
    frames = t.recv(timeout=5.0, spin=spin)
    assert frames is not None, "nothing arrived within 5 s"
    return [bytes(f) for f in frames]


def test_messages_arrive_whole_and_in_order(pair: tuple[JobTransport, JobTransport]) -> None:
    a, b = pair
    a.connect(2, b.address)
    for i in range(200):
        a.send(2, [b"head", i.to_bytes(4, "little")])
    assert [int.from_bytes(receive(b)[1], "little") for _ in range(200)] == list(range(200))


def test_frames_for_an_unknown_address_wait_for_it(pair: tuple[JobTransport, JobTransport]) -> None:
    a, b = pair
    buffer = bytearray(b"first")
    a.send(2, [bytes(buffer)])
    buffer[:] = b"XXXXX"  # the held frame is a copy: the caller may reuse its buffers
    assert b.recv(timeout=0.05) is None
    a.connect(2, b.address)
    a.send(2, [b"second"])
    assert receive(b) == [b"first"]
    assert receive(b) == [b"second"]


def test_recv_times_out_with_and_without_spinning(pair: tuple[JobTransport, JobTransport]) -> None:
    _, b = pair
    for spin in (False, True):
        started = time.monotonic()
        assert b.recv(timeout=0.05, spin=spin) is None
        assert 0.04 <= time.monotonic() - started < 2.0


def test_a_spinning_receiver_gets_what_is_sent(pair: tuple[JobTransport, JobTransport]) -> None:
    a, b = pair
    a.connect(2, b.address)
    b.connect(1, a.address)
    for i in range(100):  # a ping-pong: each answer is awaited with a spin first
        a.send(2, [i.to_bytes(4, "little")])
        request = receive(b, spin=1e-3)
        b.send(1, request)
        assert receive(a, spin=1e-3) == [i.to_bytes(4, "little")]


def test_spin_budget_comes_from_the_environment() -> None:
    assert spin_seconds({}) == pytest.approx(100e-6)
    assert spin_seconds({SPIN_ENV: "0"}) == 0.0
    assert spin_seconds({SPIN_ENV: " 250 "}) == pytest.approx(250e-6)


def test_a_transport_without_a_spin_budget_blocks_at_once(kind: str) -> None:
    a, b = open_transport(kind, 1, KEY), open_transport(kind, 2, KEY)
    try:
        assert b.spin == 0.0
        a.connect(2, b.address)
        a.send(2, [b"x"])
        assert receive(b, spin=1e-3) == [b"x"]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("raw", ["fast", "-1", "1.5", "1000000"])
def test_a_bad_spin_budget_is_refused_by_name(raw: str) -> None:
    with pytest.raises(ConfigError, match=SPIN_ENV):
        spin_seconds({SPIN_ENV: raw})


def watch_connected(watcher: JobTransport, peers: list[JobTransport]) -> None:
    """``watcher`` watches every peer, connected (a message went through to each)."""
    for peer in peers:
        watcher.connect(peer.endpoint, peer.address)
        watcher.watch(peer.endpoint)
        watcher.send(peer.endpoint, [b"hello"])
        assert receive(peer) == [b"hello"]


def test_a_watched_peer_that_goes_away_is_reported_once_and_a_forgotten_one_never(kind: str) -> None:
    watcher, peers = open_transport(kind, 1, KEY), [open_transport(kind, n, KEY) for n in (2, 3, 4)]
    try:
        watch_connected(watcher, peers)
        assert watcher.disconnected() == []
        watcher.forget(4)
        peers[0].close()
        peers[2].close()
        deadline = time.monotonic() + 5.0
        dropped: list[int] = []
        while not dropped and time.monotonic() < deadline:
            time.sleep(0.01)
            dropped += watcher.disconnected()
        time.sleep(0.2)  # nothing more comes: not 4 (forgotten), not 2 twice
        assert dropped + watcher.disconnected() == [2]
    finally:
        watcher.close()
        for peer in peers:
            peer.close()


def dropped_within(watcher: JobTransport, expected: int, seconds: float = 5.0) -> list[int]:
    """What ``disconnected`` reports until ``expected`` endpoints dropped (or ``seconds`` passed)."""
    deadline = time.monotonic() + seconds
    dropped: list[int] = []
    while len(dropped) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
        dropped += watcher.disconnected()
    return dropped


def test_a_peer_back_at_its_address_is_reported_connected_again() -> None:
    """A drop and zmq's reconnect to the same address come in order: the coordinator ends a
    dropped member's suspicion on the reconnect, not on a message that may predate the drop."""
    context: zmq.Context[Any] = zmq.Context()
    guard = handshake.guard_for(context, KEY)  # the peer admits the job's connections
    watcher = ZmqTransport(1, KEY)
    first = second = None
    try:
        first = context.socket(zmq.PULL)
        guard.serve(first)
        port = first.bind_to_random_port("tcp://127.0.0.1")
        watcher.connect(2, f"tcp://127.0.0.1:{port}")
        watcher.watch(2)
        watcher.send(2, [b"hello"])
        assert first.poll(5000), "nothing arrived within 5 s"
        first.close(linger=0)
        events: list[tuple[int, bool]] = []
        deadline = time.monotonic() + 5.0
        while (2, False) not in events and time.monotonic() < deadline:
            time.sleep(0.01)
            events += watcher.connection_events()
        second = context.socket(zmq.PULL)
        guard.serve(second)
        second.bind(f"tcp://127.0.0.1:{port}")
        deadline = time.monotonic() + 5.0
        while events[-1:] != [(2, True)] and time.monotonic() < deadline:
            time.sleep(0.01)
            events += watcher.connection_events()
        assert (2, False) in events
        assert events[-1] == (2, True), events  # back, and reported after the drop
        assert events.index((2, False)) < len(events) - 1
    finally:
        watcher.close()
        for sock in (first, second):
            if sock is not None:
                sock.close(linger=0)
        handshake.release(context)
        context.term()


def test_disconnects_are_reported_before_the_first_look_and_after_an_earlier_one(kind: str) -> None:
    """The monitors' descriptors signal only once zmq saw them idle: a peer that drops before
    the watcher ever looked, and a second one after a first was reported, are both seen."""
    watcher, peers = open_transport(kind, 1, KEY), [open_transport(kind, n, KEY) for n in (2, 3, 4)]
    try:
        watch_connected(watcher, peers)
        peers[1].close()  # before the first call to disconnected()
        assert dropped_within(watcher, 1) == [3]
        peers[0].close()
        assert dropped_within(watcher, 1) == [2]
        assert watcher.disconnected() == []
    finally:
        watcher.close()
        for peer in peers:
            peer.close()


def test_a_peer_is_connected_on_the_first_send_not_when_its_address_is_learnt(
    pair: tuple[JobTransport, JobTransport],
) -> None:
    a, b = pair
    for peer in range(10, 60):  # every member's address: no socket yet
        a.connect(peer, "tcp://127.0.0.1:9")
    a.connect(2, b.address)
    assert a.knows(2)
    assert a.open_connections == 0
    a.send(2, [b"first"])
    a.send(2, [b"second"])
    assert (receive(b), receive(b)) == ([b"first"], [b"second"])
    assert a.open_connections == 1
    a.forget(2)
    assert not a.knows(2)
    assert a.open_connections == 0


def test_a_send_to_an_address_that_refuses_our_password_never_blocks(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another job's process took a peer's address: it refuses our password, ZeroMQ drops
    the connection for good, and a blocking send would then wait for ever (review of stop
    27, finding 1).  The message is dropped and counted; the next send tries again."""
    foreign = open_transport(kind, 2, bytes(range(1, 33)))  # another job's key
    sender = open_transport(kind, 1, KEY)
    try:
        sender.connect(2, foreign.address)
        sender.send(2, [b"first"])  # connects; the handshake is refused
        deadline = time.monotonic() + 10

        def send_more(done: threading.Event) -> None:
            sender.send(2, [b"more"])
            done.set()

        while sender.unsent == 0:
            assert time.monotonic() < deadline, "no send noticed the refusal"
            done = threading.Event()
            threading.Thread(target=send_more, args=(done,), daemon=True).start()
            assert done.wait(5), "a send blocked"
            assert foreign.recv(timeout=0.05) is None  # the other job's process runs its loop
        assert foreign.recv(timeout=0.2) is None  # nothing of ours got in
        assert sender.knows(2)  # the address is kept: the next send tries again
        assert "go again" not in caplog.text  # refused, not taken for a peer that died
    finally:
        sender.close()
        foreign.close()


def test_the_password_is_never_logged(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """pyzmq's authenticator logs every admitted password at DEBUG (review of stop 27)."""
    caplog.set_level(logging.DEBUG)
    a, b = open_transport(kind, 1, KEY), open_transport(kind, 2, KEY)
    try:
        a.connect(2, b.address)
        a.send(2, [b"hello"])
        assert b.recv(timeout=5) is not None
    finally:
        a.close()
        b.close()
    assert handshake.password(KEY) not in caplog.text


def test_closing_a_transport_twice_leaves_its_context_s_other_transports_admitting() -> None:
    """Transports may share a context (bench/scale_sim.py), and with it one ZAP handler: a
    second close must not stop it under the others (review of stop 27, finding 8)."""
    context: zmq.Context[Any] = zmq.Context()
    first, second = ZmqTransport(1, KEY, context=context), ZmqTransport(2, KEY, context=context)
    sender = ZmqTransport(3, KEY)
    try:
        first.close()
        first.close()
        sender.connect(2, second.address)
        sender.send(2, [b"in"])  # under a header's size: no sender field to check
        assert second.recv(timeout=5) == [b"in"]
    finally:
        sender.close()
        second.close()
        context.term()


def test_a_tcp_peer_back_at_its_address_is_reported_connected_again() -> None:
    """The plain-TCP transport's drop and redial come in order, as ZeroMQ's (above)."""
    watcher = TcpTransport(1, KEY)
    first = TcpTransport(2, KEY)
    port = first.port
    second = None
    try:
        watcher.connect(2, first.address)
        watcher.watch(2)
        watcher.send(2, [b"hello"])
        assert receive(first) == [b"hello"]
        first.close()
        events: list[tuple[int, bool]] = []
        deadline = time.monotonic() + 5.0
        while (2, False) not in events and time.monotonic() < deadline:
            time.sleep(0.01)
            events += watcher.connection_events()
        second = TcpTransport(2, KEY, port=port)
        deadline = time.monotonic() + 5.0
        while events[-1:] != [(2, True)] and time.monotonic() < deadline:
            time.sleep(0.01)
            events += watcher.connection_events()
        assert events.index((2, False)) < len(events) - 1
        assert events[-1] == (2, True), events
        watcher.send(2, [b"again"])
        assert receive(second) == [b"again"]
    finally:
        watcher.close()
        first.close()
        if second is not None:
            second.close()


def test_a_tcp_message_larger_than_the_socket_buffers_arrives_while_both_send() -> None:
    """Two transports sending each other 8 MB at once: neither send waits for the other's
    receive for ever (each reads while it writes), and both messages arrive whole."""
    a, b = TcpTransport(1, KEY), TcpTransport(2, KEY)
    try:
        a.connect(2, b.address)
        b.connect(1, a.address)
        big_a, big_b = np.full(2 << 20, 1, np.float32), np.full(2 << 20, 2, np.float32)
        a.send(2, [b"from a", big_a])
        b.send(1, [b"from b", big_b])
        got: dict[int, list[bytes]] = {}
        deadline = time.monotonic() + 10.0
        while len(got) < 2:  # each process runs its own loop
            assert time.monotonic() < deadline, f"only {sorted(got)} received"
            for t in (a, b):
                frames = t.recv(timeout=0.01)
                if frames is not None:
                    got[t.endpoint] = [bytes(f) for f in frames]
        got_b, got_a = got[2], got[1]
        assert got_b[0] == b"from a"
        assert np.array_equal(np.frombuffer(got_b[1], np.float32), big_a)
        assert got_a[0] == b"from b"
        assert np.array_equal(np.frombuffer(got_a[1], np.float32), big_b)
    finally:
        a.close()
        b.close()


def test_a_large_tcp_message_the_kernel_takes_in_part_is_copied_and_arrives_whole() -> None:
    """Once the peer admitted us, what the kernel does not take of a large message is copied
    (only that part: a block's TRANSFER is megabytes): the caller may reuse its array at once."""
    a, b = TcpTransport(1, KEY), TcpTransport(2, KEY)
    try:
        a.connect(2, b.address)
        a.send(2, [b"hello"])
        deadline = time.monotonic() + 10.0
        got: list[list[bytes]] = []
        peer = a._outbound.peers[2]
        while not (got and peer.admitted):  # b reads the password and the message, a the answer
            assert time.monotonic() < deadline
            frames = b.recv(timeout=0.01)
            if frames is not None:
                got.append([bytes(f) for f in frames])
            a.recv(timeout=0.001)
        big = np.arange(4 << 20, dtype=np.float32)  # 16 MB: more than a socket buffer takes
        expected = big.copy()
        a.send(2, [b"big", big])
        big[:] = -1  # reused at once
        while len(got) < 2:
            assert time.monotonic() < deadline, "the large message did not arrive"
            frames = b.recv(timeout=0.01)
            if frames is not None:
                got.append([bytes(f) for f in frames])
            a.recv(timeout=0.001)
        assert got[1][0] == b"big"
        assert np.array_equal(np.frombuffer(got[1][1], np.float32), expected)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("piece", [997, 4096, 300_001, 1 << 20])
def test_a_large_message_in_pieces_and_what_follows_it_are_cut_exactly(piece: int) -> None:
    """A message larger than a read, arriving in pieces of any size: it and the small
    messages before and after it in the same stream come out whole and in order."""
    selector = selectors.DefaultSelector()
    inbox: collections.deque[list[bytes]] = collections.deque()
    inbound = tcp_inbound.Inbound(selector, tcp_inbound.MAGIC + b"password", 1 << 24, inbox, "127.0.0.1", 0)
    sender = socket.create_connection(("127.0.0.1", inbound.port))
    receiving, _ = inbound._listener.accept()
    receiving.setblocking(False)
    conn = tcp_inbound.Connection(receiving, 0.0)
    conn.admitted = True
    big = np.random.default_rng(piece).integers(0, 255, 3_000_017, dtype=np.uint8).tobytes()
    messages = [[b"before"], [b"head", big, b"tail"], [b"after", b"x" * 10]]
    stream = b"".join(
        tcp_inbound.HEADS[len(m)].pack(len(m), *[len(f) for f in m]) + b"".join(m) for m in messages
    )

    def send() -> None:
        for first in range(0, len(stream), piece):
            sender.sendall(stream[first : first + piece])

    writer = threading.Thread(target=send)
    writer.start()
    try:
        deadline = time.monotonic() + 20.0
        while len(inbox) < len(messages):
            assert time.monotonic() < deadline, f"{len(inbox)} of {len(messages)} messages"
            inbound.read(conn)
        assert [list(m) for m in inbox] == messages
        assert not conn.buf
    finally:
        writer.join()
        sender.close()
        receiving.close()
        inbound.close()
        selector.close()


@pytest.mark.parametrize("sent", [0, 1, 3, 4, 5, 9, 10])
def test_the_unsent_part_of_a_message_is_its_bytes_after_what_was_sent(sent: int) -> None:
    parts: list[Any] = [b"head", memoryview(b"abc"), np.frombuffer(b"xyz", np.uint8)]
    assert tcp_outbound._unsent(parts, sent) == b"headabcxyz"[sent:]


def _raw(address: str) -> socket.socket:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _closed_by_peer(sock: socket.socket, seconds: float = 5.0) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize(
    "opening",
    [
        b"GET / HTTP/1.1\r\n\r\n" + bytes(60),  # not the job's password
        tcp_inbound.MAGIC + b"0" * 48,  # the form, another password
    ],
)
def test_a_tcp_connection_without_the_password_is_closed_and_delivers_nothing(opening: bytes) -> None:
    b = TcpTransport(2, KEY)
    try:
        with _raw(b.address) as sock:
            sock.sendall(opening + framed(Authenticator(KEY).sign(1, 2, [b"x" * 64])))
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and b.recv(timeout=0.02) is None:
                if _closed_by_peer(sock, 0.01):
                    break
            assert _closed_by_peer(sock)
        assert b.recv(timeout=0.1) is None
        assert b.rejected == 0  # nothing of it was even read as a message
    finally:
        b.close()


def test_a_wrong_tcp_password_is_answered_refused_before_the_close() -> None:
    """So that a dialler tells another job's process from a peer that died (next test)."""
    b = TcpTransport(2, KEY)
    try:
        with _raw(b.address) as sock:
            sock.sendall(tcp_inbound.MAGIC + b"0" * 48)
            answer = b""
            deadline = time.monotonic() + 5.0
            while not answer and time.monotonic() < deadline:
                assert b.recv(timeout=0.02) is None
                sock.settimeout(0.01)
                with contextlib.suppress(TimeoutError):
                    answer = sock.recv(16)
            assert answer == tcp_inbound.REFUSED
            assert _closed_by_peer(sock)
    finally:
        b.close()


def test_what_a_tcp_peer_died_with_unanswered_goes_again_on_the_next_connection() -> None:
    """A peer killed with our connection in its backlog (it never read our password) closes
    it without an answer: that is no refusal, and what we wrote on it reaches the peer's
    replacement, in order (a node lost its heartbeats and REJOIN to a coordinator restarted
    that way, and the new one never adopted it: chaos seed 114993)."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(8)  # never accepts: our connection waits in its backlog
    port = dead.getsockname()[1]
    sender = TcpTransport(1, KEY)
    replacement = None
    try:
        sender.connect(2, f"tcp://127.0.0.1:{port}")
        sender.send(2, [b"first"])
        sender.send(2, [b"second"])
        peer = sender._outbound.peers[2]
        deadline = time.monotonic() + 5.0
        while len(peer.unconfirmed) < 2:  # both written, unanswered
            assert time.monotonic() < deadline, "the sends were not written"
            assert sender.recv(timeout=0.01) is None
        dead.close()  # the backlog's connections are reset
        deadline = time.monotonic() + 5.0
        while peer.sock is not None and peer.unconfirmed:
            assert time.monotonic() < deadline, "the reset was not noticed"
            assert sender.recv(timeout=0.01) is None
        replacement = TcpTransport(2, KEY, port=port)
        got: list[list[bytes]] = []
        deadline = time.monotonic() + 5.0
        while len(got) < 2:
            assert time.monotonic() < deadline, f"only {got} arrived"
            assert sender.recv(timeout=0.01) is None
            frames = replacement.recv(timeout=0.01)
            if frames is not None:
                got.append([bytes(f) for f in frames])
        assert got == [[b"first"], [b"second"]]
        assert sender.unsent == 0
    finally:
        sender.close()
        dead.close()
        if replacement is not None:
            replacement.close()


def test_a_tcp_connection_that_never_presents_a_password_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp_inbound, "HANDSHAKE_SECONDS", 0.2)
    b = TcpTransport(2, KEY)
    try:
        with _raw(b.address) as sock:
            sock.sendall(tcp_inbound.MAGIC[:4])  # and then nothing
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not _closed_by_peer(sock, 0.01):
                b.recv(timeout=0.05)
            assert time.monotonic() < deadline, "a silent connection was kept"
    finally:
        b.close()


def test_at_most_so_many_tcp_connections_wait_for_their_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp_inbound, "MAX_UNADMITTED", 4)
    b = TcpTransport(2, KEY)
    socks = [_raw(b.address) for _ in range(10)]
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and len(b._inbound.unadmitted) < 4:
            b.recv(timeout=0.02)
        for _ in range(20):
            b.recv(timeout=0.02)
        assert len(b._inbound.unadmitted) <= 4
        assert sum(_closed_by_peer(sock, 0.2) for sock in socks) >= 6  # the oldest were cut
    finally:
        for sock in socks:
            sock.close()
        b.close()


@pytest.mark.parametrize(("count", "size"), [(0, 1), (tcp_inbound.MAX_FRAMES + 1, 1), (1, (1 << 16) + 1)])
def test_a_tcp_message_out_of_bounds_closes_its_connection(count: int, size: int) -> None:
    """A frame over ``max_message_bytes`` or a frame count out of range: the connection is
    closed before anything of the message is kept; other connections go on."""
    a, b = TcpTransport(1, KEY), TcpTransport(2, KEY, max_message_bytes=1 << 16)
    try:
        with _raw(b.address) as sock:
            sock.sendall(hello(KEY))
            sock.sendall(struct.pack("<I", count) + struct.pack("<Q", size) * max(count, 1))
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not _closed_by_peer(sock, 0.01):
                b.recv(timeout=0.02)
            assert time.monotonic() < deadline, "the connection was kept"
        a.connect(2, b.address)
        a.send(2, [b"after"])
        assert receive(b) == [b"after"]
    finally:
        a.close()
        b.close()


def test_a_tcp_peer_named_by_a_name_that_does_not_resolve_yet_is_dialled_again() -> None:
    """A headless Service's name resolves only while a pod is behind it (a replaced
    coordinator): a send to it must not raise; what waits goes once the address works."""
    a, b = TcpTransport(1, KEY), TcpTransport(2, KEY)
    try:
        a.connect(2, "tcp://no-such-peer.invalid:7100")
        a.send(2, [b"waits"])
        assert a.recv(timeout=0.3) is None  # dials again every RECONNECT_SECONDS, no exception
        a.connect(2, b.address)  # the name resolves now (here: the address itself)
        assert receive(b) == [b"waits"]
    finally:
        a.close()
        b.close()


def test_a_zeromq_peer_of_a_tcp_transport_is_refused_with_a_hint(caplog: pytest.LogCaptureFixture) -> None:
    """A job whose processes disagree on DYNAPS_TRANSPORT never connects: the TCP side says
    why instead of leaving only a start-up timeout."""
    caplog.set_level(logging.WARNING, logger="dynaps.wire.tcp_inbound")
    zmq_side, tcp_side = ZmqTransport(1, KEY), TcpTransport(2, KEY)
    try:
        zmq_side.connect(2, tcp_side.address)
        zmq_side.send(2, [b"hello"])
        deadline = time.monotonic() + 5.0
        while "DYNAPS_TRANSPORT" not in caplog.text:
            assert time.monotonic() < deadline, "no hint logged"
            assert tcp_side.recv(timeout=0.05) is None
    finally:
        zmq_side.close()
        tcp_side.close()


def test_closing_a_tcp_transport_lingers_once_for_all_its_peers() -> None:
    """What waits for several peers that do not read is given ``linger`` seconds in all, not
    per peer (a node's exit at the job's end waited 0.5 s for each)."""
    stalled = [socket.create_server(("127.0.0.1", 0)) for _ in range(4)]  # accept, never read
    a = TcpTransport(1, KEY)
    try:
        for n, server in enumerate(stalled, start=2):
            a.connect(n, f"tcp://127.0.0.1:{server.getsockname()[1]}")
            for _ in range(8):  # more than the kernel's buffers take
                a.send(n, [b"head", np.zeros(1 << 20, np.uint8)])
        started = time.monotonic()
        a.close(linger=0.5)
        assert time.monotonic() - started < 1.5
    finally:
        for server in stalled:
            server.close()
