"""The job's transport over plain TCP: each message written by the thread that sends it and
read by the thread that receives it.

ZeroMQ, which this replaces, hands every message to an I/O thread on the way out and from
another on the way in: on a virtual machine whose idle cores halt, those two wake-ups per
hop cost more than the rest of a round trip (bench/README.md, "A transport without I/O
threads": a 64-byte round trip of 120 us through pyzmq against 25 us over a plain socket).

* Framing and admission (the receiving side, :mod:`dynaps.wire.tcp_inbound`): a message is
  ``u32`` frame count, ``u64`` length per frame, then the frames; a connection starts with
  the job's password (:func:`dynaps.wire.handshake.password`, derived from the wire key, as
  ZeroMQ's PLAIN mechanism carried it), and nothing else is read from it before.
* Every message carries the MAC of :mod:`dynaps.wire.auth`: one that fails is dropped,
  counted and given to ``on_rejected``, never returned.
* Sends never block for long: what the kernel does not take at once waits in the
  connection's queue and goes out from the next call that polls (every ``recv``), after
  up to :data:`FLUSH_SECONDS` of trying within ``send`` itself (while reading what arrives,
  so two nodes sending each other large messages cannot wait on each other).
* A connection that drops is dialled again every :data:`RECONNECT_SECONDS` while messages
  wait for it; what was half written is lost, as with ZeroMQ, and the protocol's retries
  recover it.  :meth:`watch` reports drops and reconnections of chosen peers.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from dynaps.errors import ConfigError, ProtocolError
from dynaps.throttled_log import ThrottledLog
from dynaps.wire import handshake, limits
from dynaps.wire.arrivals import CheckedArrivals
from dynaps.wire.auth import flat
from dynaps.wire.tcp_inbound import HEADS, MAGIC, MAX_FRAMES, Connection, Inbound, unregister

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 0.1
FLUSH_SECONDS = 0.02
MAX_DEFERRED = 100_000  # messages held for an endpoint whose address is not known yet
MAX_REJECTED_PER_CALL = 256  # forged messages one receive looks at before it returns
YIELDED_SECONDS = 10e-6  # a spin turn longer than this: sched_yield ran another task
_WAKE = object()  # the selector's tag of the descriptor given to wake_on


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return host.strip("[]"), int(port)


class _Outgoing:
    """Our connection to one peer, and what waits to go to it."""

    __slots__ = (
        "admitted",
        "connected",
        "dialed_at",
        "endpoint",
        "partial",
        "pending",
        "retry_at",
        "sock",
        "unconfirmed",
        "writing",
    )

    def __init__(self, endpoint: int) -> None:
        self.endpoint = endpoint
        self.sock: socket.socket | None = None
        self.pending: collections.deque[memoryview] = collections.deque()  # whole messages
        self.partial = False  # the first pending message is partly written
        self.connected = False
        self.admitted = False  # the peer accepted our password
        self.writing = False  # registered for writability
        self.retry_at: float | None = None  # dial again then (None: not waiting to)
        self.unconfirmed = 0  # messages written before the peer accepted our password
        self.dialed_at = 0.0


class TcpTransport(CheckedArrivals):
    """A listening socket and one outgoing connection per peer."""

    def __init__(
        self,
        endpoint: int,
        key: bytes,
        bind_host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        spin: float = 0.0,
        max_message_bytes: int = -1,
        size: limits.JobSize | None = None,
    ) -> None:
        """``key``: the job's wire key (:func:`dynaps.contract.secret.wire_key`); ``spin``:
        seconds ``recv(spin=True)`` polls before it blocks (0: never); ``max_message_bytes``:
        the largest frame accepted (-1: any); ``size``: the job's, to raise the open-file
        limit for its connections (:func:`dynaps.wire.limits.job_size`)."""
        if size is not None:
            limits.raise_file_limit(size)
        self._start_checking(endpoint, key, log)
        self._key = key
        self._hello = MAGIC + handshake.password(key).encode()
        self.unsent = 0  # messages dropped because their peer refused our password
        self._unsent_log = ThrottledLog(log, "could not send: the peer refused our password")
        self._selector = selectors.DefaultSelector()
        self._inbox: collections.deque[list[bytes]] = collections.deque()
        try:
            self._inbound = Inbound(
                self._selector,
                self._hello,
                max_message_bytes if max_message_bytes > 0 else 1 << 62,
                self._inbox,
                bind_host,
                port,
            )
        except ConfigError:
            self._selector.close()
            raise
        self.port = self._inbound.port
        self.address = f"tcp://{advertise_host or bind_host}:{self.port}"
        self._addresses: dict[int, str] = {}
        self._peers: dict[int, _Outgoing] = {}
        self._watched: set[int] = set()
        self._events: list[tuple[int, bool]] = []
        self._retrying: set[_Outgoing] = set()
        self.spin = spin
        self._woken: Callable[[], bool] | None = None
        self._closed = False

    # ------------------------------------------------------------------ peers

    def connect(self, endpoint: int, address: str) -> None:
        """Learn where ``endpoint`` listens; the connection opens on the first send to it (or
        :meth:`watch`): a process learns every member's address but talks to few of them."""
        if self._addresses.get(endpoint) == address:
            return
        held = self._peers.get(endpoint)
        self.forget(endpoint)
        self._addresses[endpoint] = address
        if held is not None and held.sock is None and held.pending:  # sent before the address was known
            peer = self._open(endpoint)
            peer.pending.extend(held.pending)
            self._flush_soon(peer)

    def knows(self, endpoint: int) -> bool:
        return endpoint in self._addresses

    @property
    def open_connections(self) -> int:
        """Connections opened to peers (those sent to or watched; the others are only known)."""
        return sum(1 for peer in self._peers.values() if peer.sock is not None)

    def _open(self, endpoint: int) -> _Outgoing:
        peer = self._peers.get(endpoint)
        if peer is None:
            peer = self._peers[endpoint] = _Outgoing(endpoint)
        if peer.sock is None and peer.retry_at is None and endpoint in self._addresses:
            self._dial(peer)
        return peer

    def _dial(self, peer: _Outgoing) -> None:
        host, port = _host_port(self._addresses[peer.endpoint])
        peer.retry_at = None
        peer.dialed_at = time.monotonic()
        self._retrying.discard(peer)
        try:
            # A name (a Kubernetes Service's) resolves on every dial: a replaced pod behind it
            # has a new address, and while none is behind it the name does not resolve at all.
            family, _, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except OSError:  # not (yet) resolvable: dial again soon, as for a refused connection
            self._lost(peer)
            return
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise self._out_of_room(exc) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        peer.sock, peer.connected, peer.admitted, peer.unconfirmed = sock, False, False, 0
        peer.pending.appendleft(memoryview(self._hello))
        try:
            code = sock.connect_ex(where)
        except OSError:
            code = -1
        if code not in (0, errno.EINPROGRESS):
            self._lost(peer)
            return
        peer.writing = True
        self._selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, peer)

    def _out_of_room(self, exc: OSError) -> Exception:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return ConfigError(
                f"cannot open a connection to another endpoint ({exc}; {self.open_connections} open): "
                "the job grew past this process's open-file limit (dynaps sizes it from the job's "
                "scale ranges at start: set maxReplicas, or raise the hard RLIMIT_NOFILE)"
            )
        return exc

    def _close_peer_socket(self, peer: _Outgoing) -> None:
        sock, peer.sock = peer.sock, None
        if sock is not None:
            unregister(self._selector, sock)
            sock.close()
        was_connected, peer.connected, peer.writing = peer.connected, False, False
        if was_connected and peer.endpoint in self._watched:
            self._events.append((peer.endpoint, False))
        if peer.partial:  # its beginning went out on the connection that dropped
            peer.pending.popleft()
            peer.partial = False
        if peer.pending and peer.pending[0].obj is self._hello:
            peer.pending.popleft()

    def _lost(self, peer: _Outgoing) -> None:
        """The connection dropped or could not open: dial again soon if anything waits or the
        peer is watched."""
        refused = peer.connected and not peer.admitted
        self._close_peer_socket(peer)
        if refused:
            self._refused(peer)
            return
        if peer.pending or peer.endpoint in self._watched:
            peer.retry_at = time.monotonic() + RECONNECT_SECONDS
            self._retrying.add(peer)

    def _refused(self, peer: _Outgoing) -> None:
        """The peer closed the connection before accepting our password: another job's
        process took the address.  What was sent or waits is dropped and counted; the next
        send dials again."""
        dropped = peer.unconfirmed + len(peer.pending)
        peer.pending.clear()
        peer.unconfirmed = 0
        self.unsent += dropped
        self._unsent_log(
            f"endpoint {peer.endpoint} at {self._addresses.get(peer.endpoint)} refused this job's password"
        )
        if peer.endpoint in self._watched:
            peer.retry_at = time.monotonic() + RECONNECT_SECONDS
            self._retrying.add(peer)

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        """Close the connection to ``endpoint`` (after up to ``linger`` seconds of sending
        what waits) and forget its address."""
        peer = self._peers.get(endpoint)
        if peer is not None and linger > 0:
            self._send_waiting([peer], time.monotonic() + linger)
        self._peers.pop(endpoint, None)
        self._addresses.pop(endpoint, None)
        self._watched.discard(endpoint)
        if peer is not None:
            self._retrying.discard(peer)
            self._close_peer_socket(peer)

    def _send_waiting(self, peers: list[_Outgoing], deadline: float) -> None:
        """Keep sending what waits for ``peers``' open connections until it is out or the
        deadline passes (a linger)."""
        while any(p.pending and p.sock is not None for p in peers):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._pump(min(0.01, left))

    def watch(self, endpoint: int) -> None:
        """Report (through :meth:`connection_events`) when the connection to ``endpoint``
        drops or opens: a process that dies closes its connections at once, which reveals a
        crash in milliseconds instead of several missed heartbeats."""
        if endpoint in self._addresses and endpoint not in self._watched:
            self._watched.add(endpoint)
            self._open(endpoint)

    def disconnected(self) -> list[int]:
        """Watched endpoints whose connection dropped since the last call."""
        return [endpoint for endpoint, up in self.connection_events() if not up]

    def connection_events(self) -> list[tuple[int, bool]]:
        """(endpoint, False) when a watched connection dropped, (endpoint, True) when it
        opened, in order, since the last call."""
        self._pump(0.0)
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ sending

    def send(self, endpoint: int, frames: Sequence[Any]) -> None:
        peer = self._peers.get(endpoint)
        if peer is None or (peer.sock is None and peer.retry_at is None):
            peer = self._open(endpoint)
        if peer.sock is None and endpoint not in self._addresses and len(peer.pending) >= MAX_DEFERRED:
            log.error("dropping message for endpoint %d: address unknown", endpoint)
            return
        signed = self.auth.sign(self.endpoint, endpoint, frames)  # signed now: sequence numbers in order
        if len(signed) > MAX_FRAMES:
            raise ProtocolError(f"a message of {len(signed)} frames (at most {MAX_FRAMES})")
        views = [flat(f) for f in signed]
        head = HEADS[len(views)].pack(len(views), *[len(v) for v in views])
        if peer.connected and not peer.pending:
            assert peer.sock is not None
            try:
                sent = peer.sock.sendmsg([head, *views])
            except BlockingIOError:
                sent = 0
            except OSError:  # the connection dropped: the message goes on the next one
                peer.pending.append(memoryview(b"".join([head, *views])))
                self._lost(peer)
                return
            whole = len(head) + sum(len(v) for v in views)
            if sent == whole:
                if not peer.admitted:
                    peer.unconfirmed += 1
                return
            # copied: the caller may change its arrays once send returns
            peer.pending.append(memoryview(b"".join([head, *views]))[sent:])
            peer.partial = sent > 0
            self._want_write(peer)
            self._flush_soon(peer)
            return
        peer.pending.append(memoryview(b"".join([head, *views])))
        if peer.connected:
            self._want_write(peer)
        if peer.sock is not None and (peer.connected or time.monotonic() - peer.dialed_at < FLUSH_SECONDS):
            self._flush_soon(peer)  # a connection being opened (to a peer that is up, at once)

    def _flush_soon(self, peer: _Outgoing) -> None:
        """Keep writing for up to FLUSH_SECONDS (reading meanwhile), so a large message does
        not wait for the sender's next receive (a training process may compute for long)."""
        deadline = time.monotonic() + FLUSH_SECONDS
        while peer.pending and peer.sock is not None and time.monotonic() < deadline:
            self._pump(0.002)

    def _want_write(self, peer: _Outgoing) -> None:
        if not peer.writing and peer.sock is not None:
            peer.writing = True
            self._selector.modify(peer.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, peer)

    def _flush(self, peer: _Outgoing) -> None:
        sock = peer.sock
        assert sock is not None
        pending = peer.pending
        while pending:
            try:
                sent = sock.sendmsg(list(pending) if len(pending) <= 64 else [pending[i] for i in range(64)])
            except BlockingIOError:
                return
            except OSError:
                self._lost(peer)
                return
            while sent:
                first = pending[0]
                if sent >= len(first):
                    sent -= len(first)
                    pending.popleft()
                    peer.partial = False
                    if not peer.admitted and first.obj is not self._hello:
                        peer.unconfirmed += 1
                else:
                    pending[0] = first[sent:]
                    peer.partial = True
                    sent = 0
        peer.writing = False
        self._selector.modify(sock, selectors.EVENT_READ, peer)

    # ------------------------------------------------------------------ receiving

    def _pump(self, timeout: float | None) -> None:
        """Handle what is ready, waiting up to ``timeout`` seconds (None: until something is)."""
        if self._retrying and not self._closed:
            now = time.monotonic()
            for peer in [p for p in self._retrying if p.retry_at is not None and p.retry_at <= now]:
                self._retrying.discard(peer)
                peer.retry_at = None
                if self._peers.get(peer.endpoint) is peer and peer.endpoint in self._addresses:
                    self._dial(peer)
            if self._retrying:
                soonest = min(p.retry_at or now for p in self._retrying) - now
                timeout = max(0.0, soonest) if timeout is None else min(timeout, max(0.0, soonest))
        timeout = self._inbound.wait_limit(timeout)
        for key, mask in self._selector.select(timeout):
            tag = key.data
            if type(tag) is _Outgoing:
                self._outgoing(tag, mask)
            elif type(tag) is Connection:
                self._inbound.read(tag)
            elif tag is self._inbound:
                self._inbound.accept()

    def _outgoing(self, peer: _Outgoing, mask: int) -> None:
        sock = peer.sock
        if sock is None:
            return
        if not peer.connected and mask & (selectors.EVENT_WRITE | selectors.EVENT_READ):
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._lost(peer)
                return
            peer.connected = True
            if peer.endpoint in self._watched:
                self._events.append((peer.endpoint, True))
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(64)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._lost(peer)
                return
            if data:
                peer.admitted, peer.unconfirmed = True, 0
        if mask & selectors.EVENT_WRITE:
            self._flush(peer)

    def _next(self) -> list[Any] | None:
        # Bounded: a flood of forged frames must not keep the caller (the coordinator's turn:
        # HTTP actions, ticks, signals) from going on with its other duties.
        inbox = self._inbox
        for _ in range(min(len(inbox), MAX_REJECTED_PER_CALL)):
            checked = self._checked(inbox.popleft())
            if checked is not None:
                return checked
        return None

    def fileno(self) -> int:
        """A descriptor that is readable while anything of this transport is ready (its
        epoll), for a loop that waits on many transports at once (bench/scale_sim.py); such a
        loop calls :meth:`recv_nowait` when it is, and again while :attr:`has_received`."""
        return self._selector.fileno()

    @property
    def has_received(self) -> bool:
        """Messages arrived and not returned yet (a reader that stopped early looks here)."""
        return bool(self._inbox)

    def wake_on(self, fd: int, woken: Callable[[], bool]) -> None:
        """Make :meth:`recv` return None early once ``fd`` is readable or ``woken()`` is true
        (a training process's localize notices from its node, :mod:`dynaps.store.notices`);
        the caller then looks at what woke it."""
        self._woken = woken
        self._selector.register(fd, selectors.EVENT_READ, _WAKE)

    def recv(self, timeout: float | None = None, spin: bool = False) -> list[Any] | None:
        """The next authentic message, or None after ``timeout`` seconds (or once woken).
        ``spin``: an answer is expected soon; poll briefly before blocking."""
        got = self._next()
        if got is not None:
            return got
        woken = self._woken
        if spin and self.spin and timeout != 0.0:
            got = self._spin()
            if got is not None or (woken is not None and woken()):
                return got
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if woken is not None and woken():
                return None
            self._pump(None if deadline is None else max(0.0, deadline - time.monotonic()))
            got = self._next()
            if got is not None:
                return got
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _spin(self) -> list[Any] | None:
        """Poll for up to ``spin`` seconds, yielding the CPU between polls: the first message,
        or None once the time is up, once a yield let another task run (the CPU is wanted
        elsewhere) or once woken."""
        woken = self._woken
        now = time.perf_counter()
        until = now + self.spin
        while True:
            self._pump(0.0)
            got = self._next()
            if got is not None or (woken is not None and woken()):
                return got
            os.sched_yield()
            last, now = now, time.perf_counter()
            if now >= until or now - last > YIELDED_SECONDS:
                return None

    def recv_nowait(self) -> list[Any] | None:
        if not self._inbox:
            self._pump(0.0)
        return self._next()

    def close(self, linger: float = 0.0) -> None:
        if self._closed:
            return
        self._closed = True  # no dialling from here on (what waited for a peer that is gone is lost)
        # one deadline for all: what waits for open connections goes out in parallel
        self._send_waiting(list(self._peers.values()), time.monotonic() + linger)
        for endpoint in list(self._peers):
            self.forget(endpoint)
        self._inbound.close()
        self._selector.close()
