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
* Sends (the sending side, :mod:`dynaps.wire.tcp_outbound`: a connection per peer, opened
  on the first send to it) never block for long: what the kernel does not take at once
  waits in the connection's queue and goes out from the next call that polls (every
  ``recv``), after up to :data:`~dynaps.wire.tcp_outbound.FLUSH_SECONDS` of trying within
  ``send`` itself (while reading what arrives, so two nodes sending each other large
  messages cannot wait on each other).
* A connection that drops is dialled again every
  :data:`~dynaps.wire.tcp_outbound.RECONNECT_SECONDS` while messages wait for it; what was
  half written is lost, as with ZeroMQ, and the protocol's retries recover it.
  :meth:`watch` reports drops and reconnections of chosen peers.

This module joins the two sides: it is the interface the runtime uses
(:class:`~dynaps.wire.transport.Transport`), and its pump waits on both sides' sockets in one
selector, so that a send reads what arrives while it waits and a receive writes what waits.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import time
from collections.abc import Callable, Sequence
from typing import Any

from dynaps.errors import ConfigError
from dynaps.wire import handshake, limits
from dynaps.wire.arrivals import CheckedArrivals
from dynaps.wire.spin import YIELDED_SECONDS, longest
from dynaps.wire.tcp_inbound import MAGIC, Connection, Inbound
from dynaps.wire.tcp_outbound import Outbound, Peer

log = logging.getLogger(__name__)

MAX_REJECTED_PER_CALL = 256  # forged messages one receive looks at before it returns
_WAKE = object()  # the selector's tag of the descriptor given to wake_on


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
        this process's spin budget (:mod:`dynaps.wire.spin`; 0: never); ``max_message_bytes``:
        the largest frame accepted (-1: any); ``size``: the job's, to raise the open-file
        limit for its connections (:func:`dynaps.wire.limits.job_size`)."""
        if size is not None:
            limits.raise_file_limit(size)
        self._start_checking(endpoint, key, log)
        self._key = key
        self._hello = MAGIC + handshake.password(key).encode()
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
        self._outbound = Outbound(self._selector, self._hello, self._pump)
        self.spin = spin
        self._woken: Callable[[], bool] | None = None
        self._closed = False

    # ------------------------------------------------------------------ peers

    def connect(self, endpoint: int, address: str) -> None:
        """Learn where ``endpoint`` listens; the connection opens on the first send to it (or
        :meth:`watch`): a process learns every member's address but talks to few of them."""
        self._outbound.connect(endpoint, address)

    def knows(self, endpoint: int) -> bool:
        return endpoint in self._outbound.addresses

    @property
    def open_connections(self) -> int:
        """Connections opened to peers (those sent to or watched; the others are only known)."""
        return self._outbound.open_connections

    @property
    def unsent(self) -> int:
        """Messages dropped because their peer refused our password."""
        return self._outbound.unsent

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        """Close the connection to ``endpoint`` (after up to ``linger`` seconds of sending
        what waits) and forget its address."""
        self._outbound.forget(endpoint, linger)

    def watch(self, endpoint: int) -> None:
        """Report (through :meth:`connection_events`) when the connection to ``endpoint``
        drops or opens: a process that dies closes its connections at once, which reveals a
        crash in milliseconds instead of several missed heartbeats."""
        self._outbound.watch(endpoint)

    def disconnected(self) -> list[int]:
        """Watched endpoints whose connection dropped since the last call."""
        return [endpoint for endpoint, up in self.connection_events() if not up]

    def connection_events(self) -> list[tuple[int, bool]]:
        """(endpoint, False) when a watched connection dropped, (endpoint, True) when it
        opened, in order, since the last call."""
        self._pump(0.0)
        events, self._outbound.events = self._outbound.events, []
        return events

    # ------------------------------------------------------------------ sending

    def send(self, endpoint: int, frames: Sequence[Any]) -> None:
        peer = self._outbound.peer_for(endpoint)
        if peer is not None:  # signed now: sequence numbers in order
            peer.send(self.auth.sign(self.endpoint, endpoint, frames))

    # ------------------------------------------------------------------ receiving

    def _pump(self, timeout: float | None) -> None:
        """Handle what is ready, waiting up to ``timeout`` seconds (None: until something is)."""
        if self._outbound.retrying and not self._closed:
            timeout = self._outbound.redial(timeout)
        timeout = self._inbound.wait_limit(timeout)
        for key, mask in self._selector.select(timeout):
            tag = key.data
            if type(tag) is Peer:
                tag.ready(mask)
            elif type(tag) is Connection:
                self._inbound.read(tag)
            elif tag is self._inbound:
                self._inbound.accept()

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

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        """The next authentic message, or None after ``timeout`` seconds (or once woken).
        ``spin``: an answer is expected within about that many seconds; poll up to that long
        (at most :func:`dynaps.wire.spin.longest` of the budget) before blocking."""
        got = self._next()
        if got is not None:
            return got
        woken = self._woken
        if spin > 0.0 and self.spin and timeout != 0.0:
            got = self._spin(min(spin, longest(self.spin)))
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

    def _spin(self, seconds: float) -> list[Any] | None:
        """Poll for up to ``seconds``, yielding the CPU between polls: the first message, or
        None once the time is up, once a yield let another task run (the CPU is wanted
        elsewhere) or once woken."""
        woken = self._woken
        now = time.perf_counter()
        until = now + seconds
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

    def recv_arrived(self) -> list[Any] | None:
        """The next authentic message among those already read, without reading more: a
        loop that drains them and calls :meth:`recv` next saves a poll per turn (a system
        call and the selector's work, about 3 us: per message, when they come one at a
        time, as a node's requests and the coordinator's heartbeats do)."""
        return self._next()

    def close(self, linger: float = 0.0) -> None:
        if self._closed:
            return
        self._closed = True  # no dialling from here on (what waited for a peer that is gone is lost)
        # one deadline for all: what waits for open connections goes out in parallel
        self._outbound.send_waiting(list(self._outbound.peers.values()), time.monotonic() + linger)
        for endpoint in list(self._outbound.peers):
            self.forget(endpoint)
        self._inbound.close()
        self._selector.close()
