"""The ZeroMQ transport: :class:`ZmqTransport` (the :class:`~dynaps.wire.transport.Transport`
the runtime used before plain TCP, kept for comparison: ``DYNAPS_TRANSPORT=zmq``).

ZeroMQ details, and why:

* the inbox is a PULL socket and each peer gets a PUSH socket: one-way messages need no
  routing identity frames, and each peer connection is FIFO, which the key-relocation
  protocol relies on (a forwarded request never overtakes an earlier one on the same path);
* high-water marks are unlimited: dropping or blocking a data-plane message would lose an
  update or deadlock two nodes that send to each other; flow control is the protocol's
  job (bounded windows), not the socket's;
* frames for an endpoint whose address is not yet known are held back and sent when the
  address arrives (membership updates and data can take different paths);
* a peer's socket opens on the first send to it, not when its address is learnt: every
  process learns every member's address, but most talk to a few of them;
* a connection is admitted before it delivers a frame: PLAIN with a password derived from
  the job's key, checked by a ZAP handler (:mod:`dynaps.wire.handshake`), so an outsider
  cannot make an inbox hold an unfinished message;
* every message is authenticated with the job's key (:mod:`dynaps.wire.auth`: a trailer
  with a MAC and a sequence number, inside a small last frame or after it); one that fails
  is dropped, counted and given to ``on_rejected``, never returned: the protocol above only
  sees the job's own messages;
* the inbox refuses a message larger than ``max_message_bytes`` (``ZMQ_MAXMSGSIZE``, from
  the tables' shapes): zmq closes such a connection before it buffers the message, so a
  peer declaring gigabytes costs nothing;
* the context has room for the job (:mod:`dynaps.wire.limits`: zmq's socket limit and the
  process's open-file limit sized from the job's scale ranges); a socket that still cannot
  be opened is a ConfigError that says which limit to raise;
* a receiver that expects an answer soon may *spin* briefly before it blocks: waking a
  blocked thread costs more than the round trip itself on a virtual machine whose idle
  cores halt (measured: a 1-key remote pull of 200 us drops to about 110 us).  The spin
  yields the CPU on each turn and gives up as soon as a yield let another task run, so
  it never competes with busy programs on a full machine (how long: :mod:`dynaps.wire.spin`).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import selectors
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from dynaps.errors import ConfigError
from dynaps.throttled_log import ThrottledLog
from dynaps.wire import handshake, limits
from dynaps.wire.arrivals import CheckedArrivals
from dynaps.wire.spin import YIELDED_SECONDS, longest
from dynaps.wire.tcp_transport import MAX_REJECTED_PER_CALL

log = logging.getLogger(__name__)

MAX_DEFERRED = 100_000
ZERO_COPY_BYTES = 1 << 16
# zmq.POLLIN as a plain int: ``events & zmq.POLLIN`` makes an IntFlag member each time, which
# was a sixth of the coordinator's receive loop at 5,000 heartbeats a second (bench/README.md)
POLLIN = int(zmq.POLLIN)
# What a connection monitor reports: a drop, and a (re)connect that ends a drop's suspicion.
WATCHED_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED
CONNECTED = int(zmq.EVENT_CONNECTED)


def spin_until_readable(
    sock: zmq.Socket[Any], seconds: float, woken: Callable[[], bool] | None = None
) -> bool:
    """Poll ``sock`` (and ``woken``) for up to ``seconds``, yielding the CPU between polls:
    readable (or woken)?

    Gives up early when a yield let another task run: the CPU is wanted elsewhere.
    """
    now = time.perf_counter()
    until = now + seconds
    while True:
        if int(sock.getsockopt(zmq.EVENTS)) & POLLIN or (woken is not None and woken()):
            return True
        os.sched_yield()
        last, now = now, time.perf_counter()
        if now >= until or now - last > YIELDED_SECONDS:
            return False


class ZmqTransport(CheckedArrivals):
    """A PULL inbox bound on ``bind_host`` and one PUSH socket per peer."""

    def __init__(
        self,
        endpoint: int,
        key: bytes,
        bind_host: str = "127.0.0.1",
        port: int = 0,
        advertise_host: str | None = None,
        context: zmq.Context[Any] | None = None,
        spin: float = 0.0,
        max_message_bytes: int = -1,
        size: limits.JobSize | None = None,
    ) -> None:
        """``key``: the job's wire key (:func:`dynaps.contract.secret.wire_key`); ``spin``:
        this process's spin budget (:mod:`dynaps.wire.spin`; 0: never); ``max_message_bytes``:
        the largest message the inbox accepts (-1: any); ``size``: the job's, to make room
        for its connections in a context of our own (:func:`dynaps.wire.limits.job_size`)."""
        self._start_checking(endpoint, key, log)
        self._key = key
        self.unsent = 0  # messages dropped because their peer refused our handshake
        self._unsent_log = ThrottledLog(log, "could not send: the peer refused our password")
        self._owns_context = context is None
        self._context: zmq.Context[Any] = context if context is not None else limits.context_for(size)
        # connections are admitted by the job's password before they deliver a message
        guard = handshake.guard_for(self._context, key)
        inbox: zmq.Socket[Any] | None = None
        try:
            inbox = self._context.socket(zmq.PULL)
            guard.serve(inbox)
            inbox.setsockopt(zmq.RCVHWM, 0)
            inbox.setsockopt(zmq.LINGER, 0)
            inbox.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            if port:
                inbox.bind(f"tcp://{bind_host}:{port}")
                bound_port = port
            else:
                bound_port = inbox.bind_to_random_port(f"tcp://{bind_host}")
        except zmq.ZMQError as exc:
            if inbox is not None:
                inbox.close()
            handshake.release(self._context)
            if self._owns_context:
                self._context.term()
            raise ConfigError(f"cannot listen on {bind_host}:{port}: {exc}") from exc
        self.inbox = inbox
        self._closed = False
        self.port = bound_port
        self.address = f"tcp://{advertise_host or bind_host}:{bound_port}"
        self._peers: dict[int, zmq.Socket[Any]] = {}
        self._monitors: dict[int, zmq.Socket[Any]] = {}
        # The monitors' file descriptors in one selector (epoll): it answers with the ready
        # ones only. Polling every monitor cost 2.3 ms per tick at 1,000 watched nodes one by
        # one, 0.6 ms in one zmq poll (which still visits them all); now a few microseconds.
        self._watching = selectors.DefaultSelector()
        self._watched: dict[int, tuple[zmq.Socket[Any], int]] = {}  # by descriptor: monitor, endpoint
        self._unarmed: set[int] = set()  # monitors not read yet: their descriptor may not signal
        self._addresses: dict[int, str] = {}
        self._deferred: dict[int, list[Sequence[Any]]] = collections.defaultdict(list)
        self._timeout = -1
        self.spin = spin
        self._woken: Callable[[], bool] | None = None  # see wake_on
        self._waits: zmq.Poller | None = None

    def connect(self, endpoint: int, address: str) -> None:
        """Learn where ``endpoint`` receives; the socket opens on the first send to it (or
        :meth:`watch`): a process learns every member's address but talks to few of them,
        and a job of N nodes opening N sockets each on every start cost N^2 connections."""
        if self._addresses.get(endpoint) == address:
            return
        self.forget(endpoint)
        self._addresses[endpoint] = address
        if endpoint in self._deferred:
            self._open(endpoint)

    def _open(self, endpoint: int) -> zmq.Socket[Any]:
        """The socket to ``endpoint``, whose address is known, connected now if it was not."""
        known = self._peers.get(endpoint)
        if known is not None:
            return known
        try:
            sock: zmq.Socket[Any] = self._context.socket(zmq.PUSH)
        except zmq.ZMQError as exc:
            raise self._out_of_room(exc) from exc
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 0)
        # a send never blocks: with no limit on the queue it could only block once the peer
        # refused the handshake (then ZeroMQ drops the connection for good: see send)
        sock.setsockopt(zmq.SNDTIMEO, 0)
        handshake.present(sock, self._key)
        sock.connect(self._addresses[endpoint])
        self._peers[endpoint] = sock
        for frames in self._deferred.pop(endpoint, ()):
            # signed now, not when queued: sequence numbers leave in the order they grow
            sock.send_multipart(self.auth.sign(self.endpoint, endpoint, frames), copy=False)
        return sock

    @property
    def open_connections(self) -> int:
        """Sockets opened to peers (those sent to or watched; the others are only known)."""
        return len(self._peers)

    def _out_of_room(self, exc: zmq.ZMQError) -> Exception:
        """A socket that cannot be opened for want of descriptors or slots: say which limit."""
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return limits.out_of_room(exc, len(self._peers))
        return exc

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        sock = self._peers.pop(endpoint, None)
        self._addresses.pop(endpoint, None)
        monitor = self._monitors.pop(endpoint, None)
        if monitor is not None:
            fd = int(monitor.getsockopt(zmq.FD))
            self._watching.unregister(fd)
            del self._watched[fd]
            self._unarmed.discard(fd)
            if sock is not None:
                sock.disable_monitor()
            monitor.close(linger=0)
        if sock is not None:
            sock.close(linger=int(linger * 1000))

    def watch(self, endpoint: int) -> None:
        """Report (through :meth:`disconnected`) when the connection to ``endpoint`` drops.

        A process that dies closes its TCP connections at once, which reveals a crash in
        milliseconds instead of several missed heartbeats.
        """
        if endpoint in self._addresses and endpoint not in self._monitors:
            sock = self._open(endpoint)
            try:
                monitor = sock.get_monitor_socket(WATCHED_EVENTS)
            except zmq.ZMQError as exc:
                raise self._out_of_room(exc) from exc
            self._monitors[endpoint] = monitor
            fd = int(monitor.getsockopt(zmq.FD))
            self._watched[fd] = (monitor, endpoint)
            self._watching.register(fd, selectors.EVENT_READ)
            self._unarmed.add(fd)

    def disconnected(self) -> list[int]:
        """Watched endpoints whose connection dropped since the last call."""
        return [endpoint for endpoint, up in self.connection_events() if not up]

    def connection_events(self) -> list[tuple[int, bool]]:
        """What happened to the watched connections since the last call, in order per endpoint:
        (endpoint, False) when one dropped, (endpoint, True) when zmq (re)connected it.

        A zmq socket's descriptor signals that the socket has commands to process (a new event
        among them), and only once zmq has seen it with nothing left to do: so a monitor is read
        until zmq says nothing is left, once when it is new and then each time it signals."""
        events = []
        ready = sorted({key.fd for key, _mask in self._watching.select(0)} | self._unarmed)
        self._unarmed = set()
        for fd in ready:
            monitor, endpoint = self._watched[fd]
            while int(monitor.getsockopt(zmq.EVENTS)) & POLLIN:
                event = monitor.recv_multipart()[0]  # event id (uint16), value (uint32)
                events.append((endpoint, int.from_bytes(event[:2], "little") == CONNECTED))
        return events

    def knows(self, endpoint: int) -> bool:
        return endpoint in self._addresses

    def send(self, endpoint: int, frames: Sequence[Any]) -> None:
        sock = self._peers.get(endpoint)
        if sock is None and endpoint in self._addresses:
            sock = self._open(endpoint)
        if sock is None:
            held = self._deferred[endpoint]
            if len(held) >= MAX_DEFERRED:
                log.error("dropping message for endpoint %d: address unknown", endpoint)
                return
            # Copy: the caller may reuse the arrays once send() returns.
            held.append([bytes(memoryview(f)) if not isinstance(f, bytes) else f for f in frames])
            return
        frames = self.auth.sign(self.endpoint, endpoint, frames)
        try:
            if not any(getattr(f, "nbytes", 0) >= ZERO_COPY_BYTES for f in frames):
                sock.send_multipart(frames)
                return
            last = len(frames) - 1
            for i, frame in enumerate(frames):
                # Zero-copy pays only for large frames: below this, pyzmq's Frame bookkeeping
                # costs more than the memcpy it saves.
                big = getattr(frame, "nbytes", 0) >= ZERO_COPY_BYTES
                sock.send(frame, zmq.SNDMORE if i < last else 0, copy=not big)
        except zmq.Again:
            self._refused_by(endpoint)

    def _refused_by(self, endpoint: int) -> None:
        """A send found no connection to ``endpoint``: with no send limit, that happens only
        once the peer refused our password in the handshake (another job's process took the
        address), after which ZeroMQ stops trying and drops what was queued.  The message is
        dropped and counted; the next send opens a new socket and tries again."""
        self.unsent += 1
        self._unsent_log(
            f"endpoint {endpoint} at {self._addresses.get(endpoint)} refused this job's password"
        )
        address, watched = self._addresses[endpoint], endpoint in self._monitors
        self.forget(endpoint)
        self._addresses[endpoint] = address
        if watched:
            self.watch(endpoint)

    def wake_on(self, fd: int, woken: Callable[[], bool]) -> None:
        """Make :meth:`recv` return None early once ``fd`` is readable or ``woken()`` is true
        (a training process's localize notices from its node, :mod:`dynaps.store.notices`);
        the caller then looks at what woke it."""
        self._woken = woken
        self._waits = zmq.Poller()
        self._waits.register(self.inbox, zmq.POLLIN)
        self._waits.register(fd, zmq.POLLIN)

    def _recv_or_woken(self, timeout: float | None, spin: float) -> list[Any] | None:
        """:meth:`recv` for a transport that also wakes on an fd (see :meth:`wake_on`)."""
        woken, waits, inbox = self._woken, self._waits, self.inbox
        assert woken is not None
        assert waits is not None
        if spin > 0.0 and self.spin and timeout != 0.0:
            spin_until_readable(inbox, min(spin, longest(self.spin)), woken)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for _ in range(MAX_REJECTED_PER_CALL):  # then look at the fd and the deadline
                if not int(inbox.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                    break
                checked = self._checked(inbox.recv_multipart())
                if checked is not None:
                    return checked
            else:  # all forged: the inbox stays readable, so the poll below would not wait
                if deadline is not None and time.monotonic() >= deadline:
                    return None
            if woken():
                return None
            left = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not waits.poll(left):
                return None  # timed out
            if not int(inbox.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return None  # the fd woke us

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        if self._woken is not None:
            return self._recv_or_woken(timeout, spin)
        polled = spin > 0.0 and self.spin and timeout != 0.0
        if polled and spin_until_readable(self.inbox, min(spin, longest(self.spin))):
            checked = self._checked(self.inbox.recv_multipart())
            if checked is not None:
                return checked
        deadline = None if timeout is None else time.monotonic() + timeout
        left = timeout
        while True:
            wanted = -1 if left is None else max(0, int(left * 1000))
            if wanted != self._timeout:
                self.inbox.setsockopt(zmq.RCVTIMEO, wanted)
                self._timeout = wanted
            try:
                frames = self.inbox.recv_multipart()
            except zmq.Again:
                return None
            checked = self._checked(frames)
            if checked is not None:
                return checked
            if deadline is not None:  # a rejected message does not restart the wait
                left = deadline - time.monotonic()
                if left <= 0:
                    return None

    def recv_nowait(self) -> list[Any] | None:
        # Bounded: a flood of forged frames must not keep the caller (the coordinator's turn:
        # HTTP actions, ticks, signals) from going on with its other duties.
        for _ in range(MAX_REJECTED_PER_CALL):
            if not int(self.inbox.getsockopt(zmq.EVENTS)) & POLLIN:
                return None
            checked = self._checked(self.inbox.recv_multipart())
            if checked is not None:
                return checked
        return None

    def recv_arrived(self) -> list[Any] | None:
        """:meth:`recv_nowait`: ZeroMQ's I/O thread has read whatever arrived already."""
        return self.recv_nowait()

    def close(self, linger: float = 0.0) -> None:
        if self._closed:  # once: a second release would stop a shared context's guard
            return
        self._closed = True
        for endpoint in list(self._addresses):
            self.forget(endpoint, linger)
        self.inbox.close(linger=0)
        self._watching.close()
        handshake.release(self._context)
        if self._owns_context:
            self._context.term()
