"""The sending side of the TCP transport (:mod:`dynaps.wire.tcp_transport`): a connection per
peer, its password handshake, and the queue of what the kernel has not taken yet (the
receiving side, :mod:`dynaps.wire.tcp_inbound`, reads the same framing and answers the
password).

A process learns every member's address but talks to few of them, so a connection opens on
the first send to its peer (or a watch).  It starts with the job's password, and messages
follow at once, without waiting for the peer's answer (a byte).  Until that answer the peer
has read nothing of ours as a message, so we keep a copy of what we wrote: a peer that
refuses the password (:data:`~dynaps.wire.tcp_inbound.REFUSED`: another job's process took
the address) gets none of it, and it is dropped and counted (:attr:`Outbound.unsent`) with
what waits; a connection that closes with no answer (the peer died with it in its backlog,
or cut it as late) writes it all again, first, on the next one.  What the kernel does not
take waits in the peer's queue: :meth:`Peer.send` goes on writing it for up to
:data:`FLUSH_SECONDS`, and the rest goes out whenever the transport polls.  A connection that
drops is dialled again every :data:`RECONNECT_SECONDS` while messages wait for it or the
peer is watched; what was half written after the answer is lost, as with ZeroMQ, and the
protocol's retries recover it.
"""

from __future__ import annotations

import collections
import errno
import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from dynaps.errors import ConfigError, ProtocolError
from dynaps.throttled_log import ThrottledLog
from dynaps.wire.auth import flat
from dynaps.wire.tcp_inbound import HEADS, MAX_FRAMES, REFUSED, unregister

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 0.1
FLUSH_SECONDS = 0.02
MAX_DEFERRED = 100_000  # messages held for an endpoint whose address is not known yet


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return host.strip("[]"), int(port)


def _unsent(parts: list[Any], sent: int) -> bytes:
    """The bytes of ``parts`` (a message's head and frames) after its first ``sent``, in one copy."""
    for index, part in enumerate(parts):
        if sent < len(part):
            return b"".join([memoryview(part)[sent:], *parts[index + 1 :]])
        sent -= len(part)
    return b""


class Outbound:
    """Our connections to peers and what they share: where each peer listens, which are
    watched, and the transport's selector, password and pump."""

    def __init__(
        self, selector: selectors.BaseSelector, hello: bytes, pump: Callable[[float | None], None]
    ) -> None:
        """``hello``: what a connection sends first (the magic and the job's password);
        ``pump``: the transport's, which handles what is ready (reading included) for up to
        the seconds given."""
        self.selector = selector
        self.hello = hello
        self.pump = pump
        self.addresses: dict[int, str] = {}
        self.peers: dict[int, Peer] = {}
        self.watched: set[int] = set()
        self.events: list[tuple[int, bool]] = []  # (endpoint, up) of watched peers, in order
        self.retrying: set[Peer] = set()  # waiting to dial again
        self.unsent = 0  # messages dropped because their peer refused our password
        self.unsent_log = ThrottledLog(log, "could not send: the peer refused our password")
        self.resend_log = ThrottledLog(log, "a connection closed before the peer answered our password")

    @property
    def open_connections(self) -> int:
        return sum(1 for peer in self.peers.values() if peer.sock is not None)

    def connect(self, endpoint: int, address: str) -> None:
        """Learn where ``endpoint`` listens (its connection opens on the first send)."""
        if self.addresses.get(endpoint) == address:
            return
        held = self.peers.get(endpoint)
        self.forget(endpoint)
        self.addresses[endpoint] = address
        if held is not None and held.sock is None and held.pending:  # sent before the address was known
            peer = self.open(endpoint)
            peer.pending.extend(held.pending)
            peer.flush_soon()

    def open(self, endpoint: int) -> Peer:
        """``endpoint``'s peer, dialled now unless it has a connection, waits to dial again
        or has no known address."""
        peer = self.peers.get(endpoint)
        if peer is None:
            peer = self.peers[endpoint] = Peer(self, endpoint)
        if peer.sock is None and peer.retry_at is None and endpoint in self.addresses:
            peer.dial()
        return peer

    def peer_for(self, endpoint: int) -> Peer | None:
        """The peer a message to ``endpoint`` goes to (opened as :meth:`open` does if it has
        no connection and does not wait to dial again); None if the message is dropped:
        :data:`MAX_DEFERRED` wait already for an address that is not known."""
        peer = self.peers.get(endpoint)
        if peer is None or (peer.sock is None and peer.retry_at is None):
            peer = self.open(endpoint)
        if peer.sock is None and endpoint not in self.addresses and len(peer.pending) >= MAX_DEFERRED:
            log.error("dropping message for endpoint %d: address unknown", endpoint)
            return None
        return peer

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        """Close the connection to ``endpoint`` (after up to ``linger`` seconds of sending
        what waits) and forget its address."""
        peer = self.peers.get(endpoint)
        if peer is not None and linger > 0:
            self.send_waiting([peer], time.monotonic() + linger)
        self.peers.pop(endpoint, None)
        self.addresses.pop(endpoint, None)
        self.watched.discard(endpoint)
        if peer is not None:
            self.retrying.discard(peer)
            peer.close_socket()

    def send_waiting(self, peers: list[Peer], deadline: float) -> None:
        """Keep sending what waits for ``peers``' open connections until it is out or the
        deadline passes (a linger)."""
        while any(p.pending and p.sock is not None for p in peers):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.pump(min(0.01, left))

    def watch(self, endpoint: int) -> None:
        """Report drops and openings of ``endpoint``'s connection in :attr:`events` (its
        connection opens now)."""
        if endpoint in self.addresses and endpoint not in self.watched:
            self.watched.add(endpoint)
            self.open(endpoint)

    def redial(self, timeout: float | None) -> float | None:
        """Dial again the peers whose retry is due; ``timeout`` shortened to when the next
        one is."""
        now = time.monotonic()
        for peer in [p for p in self.retrying if p.retry_at is not None and p.retry_at <= now]:
            self.retrying.discard(peer)
            peer.retry_at = None
            if self.peers.get(peer.endpoint) is peer and peer.endpoint in self.addresses:
                peer.dial()
        if self.retrying:
            soonest = min(p.retry_at or now for p in self.retrying) - now
            timeout = max(0.0, soonest) if timeout is None else min(timeout, max(0.0, soonest))
        return timeout

    def out_of_room(self, exc: OSError) -> Exception:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return ConfigError(
                f"cannot open a connection to another endpoint ({exc}; {self.open_connections} open): "
                "the job grew past this process's open-file limit (dynaps sizes it from the job's "
                "scale ranges at start: set maxReplicas, or raise the hard RLIMIT_NOFILE)"
            )
        return exc


class Peer:
    """Our connection to one peer, and what waits to go to it."""

    __slots__ = (
        "admitted",
        "connected",
        "dialed_at",
        "endpoint",
        "out",
        "partial",
        "pending",
        "retry_at",
        "sock",
        "unconfirmed",
        "writing",
    )

    def __init__(self, out: Outbound, endpoint: int) -> None:
        self.out = out
        self.endpoint = endpoint
        self.sock: socket.socket | None = None
        self.pending: collections.deque[memoryview] = collections.deque()  # whole messages
        self.partial = False  # the first pending message is partly written
        self.connected = False
        self.admitted = False  # the peer accepted our password
        self.writing = False  # registered for writability
        self.retry_at: float | None = None  # dial again then (None: not waiting to)
        # copies of the messages written before the peer answered our password: sent again
        # on the next connection if this one closes unanswered
        self.unconfirmed: list[memoryview] = []
        self.dialed_at = 0.0

    def dial(self) -> None:
        """Open a new connection, our password first in its queue."""
        out = self.out
        host, port = _host_port(out.addresses[self.endpoint])
        self.retry_at = None
        self.dialed_at = time.monotonic()
        out.retrying.discard(self)
        try:
            # A name (a Kubernetes Service's) resolves on every dial: a replaced pod behind it
            # has a new address, and while none is behind it the name does not resolve at all.
            family, _, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except OSError:  # not (yet) resolvable: dial again soon, as for a refused connection
            self.lost()
            return
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise out.out_of_room(exc) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock, self.connected, self.admitted, self.unconfirmed = sock, False, False, []
        self.pending.appendleft(memoryview(out.hello))
        try:
            code = sock.connect_ex(where)
        except OSError:
            code = -1
        if code not in (0, errno.EINPROGRESS):
            self.lost()
            return
        self.writing = True
        out.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def ready(self, mask: int) -> None:
        """The connection is readable or writable (``mask``): opened, answered our password,
        closed, or has room for what waits."""
        sock = self.sock
        if sock is None:
            return
        if not self.connected and mask & (selectors.EVENT_WRITE | selectors.EVENT_READ):
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.lost()
                return
            self.connected = True
            if self.endpoint in self.out.watched:
                self.out.events.append((self.endpoint, True))
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(64)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data in (b"", REFUSED):
                self.lost(refused=data == REFUSED)
                return
            if data:
                self.admitted, self.unconfirmed = True, []
        if mask & selectors.EVENT_WRITE:
            self.flush()

    def send(self, frames: list[Any]) -> None:
        """Write a message (its signed ``frames``) now if nothing waits before it, else, or
        what of it the kernel does not take, queue it."""
        if len(frames) > MAX_FRAMES:
            raise ProtocolError(f"a message of {len(frames)} frames (at most {MAX_FRAMES})")
        views = [flat(f) for f in frames]
        head = HEADS[len(views)].pack(len(views), *[len(v) for v in views])
        if self.connected and not self.pending:
            assert self.sock is not None
            try:
                sent = self.sock.sendmsg([head, *views])
            except BlockingIOError:
                sent = 0
            except OSError:  # the connection dropped: the message goes on the next one
                self.pending.append(memoryview(b"".join([head, *views])))
                self.lost()
                return
            whole = len(head) + sum(len(v) for v in views)
            if sent == whole:
                if not self.admitted:  # a copy: the caller may change its arrays
                    self.unconfirmed.append(memoryview(b"".join([head, *views])))
                return
            # copied: the caller may change its arrays once send returns.  Only what the
            # kernel did not take, once the peer admitted us (a block's TRANSFER is megabytes,
            # most of them sent at once); before that the whole message is kept, to be sent
            # again on another connection (``unconfirmed``).
            if self.admitted:
                self.pending.append(memoryview(_unsent([head, *views], sent)))
            else:
                self.pending.append(memoryview(b"".join([head, *views]))[sent:])
            self.partial = sent > 0
            self.want_write()
            self.flush_soon()
            return
        self.pending.append(memoryview(b"".join([head, *views])))
        if self.connected:
            self.want_write()
        if self.sock is not None and (self.connected or time.monotonic() - self.dialed_at < FLUSH_SECONDS):
            self.flush_soon()  # a connection being opened (to a peer that is up, at once)

    def flush_soon(self) -> None:
        """Keep writing for up to FLUSH_SECONDS (reading meanwhile), so a large message does
        not wait for the sender's next receive (a training process may compute for long)."""
        deadline = time.monotonic() + FLUSH_SECONDS
        while self.pending and self.sock is not None and time.monotonic() < deadline:
            self.out.pump(0.002)

    def want_write(self) -> None:
        if not self.writing and self.sock is not None:
            self.writing = True
            self.out.selector.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def flush(self) -> None:
        """Write what waits until it is out or the kernel takes no more."""
        sock = self.sock
        assert sock is not None
        pending = self.pending
        while pending:
            try:
                sent = sock.sendmsg(list(pending) if len(pending) <= 64 else [pending[i] for i in range(64)])
            except BlockingIOError:
                return
            except OSError:
                self.lost()
                return
            while sent:
                first = pending[0]
                if sent >= len(first):
                    sent -= len(first)
                    pending.popleft()
                    self.partial = False
                    if not self.admitted and first.obj is not self.out.hello:
                        self.unconfirmed.append(memoryview(first.obj))
                else:
                    pending[0] = first[sent:]
                    self.partial = True
                    sent = 0
        self.writing = False
        self.out.selector.modify(sock, selectors.EVENT_READ, self)

    def close_socket(self) -> None:
        """Close the connection, if any; the message it half wrote and our password, if
        still queued, go with it."""
        sock, self.sock = self.sock, None
        if sock is not None:
            unregister(self.out.selector, sock)
            sock.close()
        was_connected, self.connected, self.writing = self.connected, False, False
        if was_connected and self.endpoint in self.out.watched:
            self.out.events.append((self.endpoint, False))
        if self.partial:  # its beginning went out on the connection that dropped
            self.pending.popleft()
            self.partial = False
        if self.pending and self.pending[0].obj is self.out.hello:
            self.pending.popleft()

    def lost(self, refused: bool = False) -> None:
        """The connection dropped or could not open (``refused``: the peer said it refused
        our password): dial again soon if anything waits or the peer is watched."""
        if self.connected and not self.admitted and not refused:
            refused = self._read_answer() == REFUSED  # sent before it closed, not read yet
        if not self.admitted and self._take_back() and not refused:
            self.out.resend_log(f"messages to endpoint {self.endpoint} go again on the next one")
        self.close_socket()
        if refused:
            self.refused()
            return
        if self.pending or self.endpoint in self.out.watched:
            self._retry_soon()

    def _read_answer(self) -> bytes:
        """The peer's answer to our password, if it came (and was not read yet): admitted
        from here on if it is that."""
        assert self.sock is not None
        try:
            data = self.sock.recv(64)
        except OSError:  # nothing came before the connection broke (or nothing yet)
            return b""
        if data and data != REFUSED:
            self.admitted, self.unconfirmed = True, []
        return data

    def _take_back(self) -> int:
        """The peer read nothing of ours as a message: what was written (whole, or in part)
        waits again, first, for the next connection.  How many messages were written."""
        taken = len(self.unconfirmed)
        if self.partial:
            first = self.pending.popleft()
            self.partial = False
            if first.obj is not self.out.hello:
                self.pending.appendleft(memoryview(first.obj))
                taken += 1
        self.pending.extendleft(reversed(self.unconfirmed))
        self.unconfirmed = []
        return taken

    def refused(self) -> None:
        """The peer refused our password: another job's process took the address.  What was
        sent or waits is dropped and counted; the next send dials again."""
        out = self.out
        dropped = len(self.pending)
        self.pending.clear()
        out.unsent += dropped
        out.unsent_log(
            f"endpoint {self.endpoint} at {out.addresses.get(self.endpoint)} refused this job's password"
        )
        if self.endpoint in out.watched:
            self._retry_soon()

    def _retry_soon(self) -> None:
        self.retry_at = time.monotonic() + RECONNECT_SECONDS
        self.out.retrying.add(self)
