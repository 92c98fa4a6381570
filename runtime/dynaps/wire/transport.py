"""Moving frames between endpoints: the interface the protocol layer sees, and its factory.

Every process (coordinator, node, client) has one inbox and sends one-way messages to
other endpoints' inboxes; a reply is just another one-way message.  This is ps-lite's
``Van``: the protocol logic above it never sees a socket, so it can run in-process in
tests (which bring their own in-memory transports).

Two implementations: plain TCP (:mod:`dynaps.wire.tcp_transport`, the default) and ZeroMQ
(:mod:`dynaps.wire.zmq_transport`, for comparison); :func:`open_transport` picks one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from dynaps.wire import limits
from dynaps.wire.auth import TRAILER_SIZE
from dynaps.wire.protocol import HEADER_SIZE, INLINE_MAX, MAX_BODY_BYTES, TableLayout
from dynaps.wire.tcp_transport import TcpTransport
from dynaps.wire.zmq_transport import ZmqTransport


class Transport(Protocol):
    """What the protocol layer needs from the network."""

    endpoint: int
    address: str
    rejected: int  # messages dropped on arrival (authentication, replay)
    last_rejected: str  # why the latest of them was

    def connect(self, endpoint: int, address: str) -> None:
        """Learn (or update) where ``endpoint`` receives."""

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        """Drop the connection to ``endpoint`` (it left the job)."""

    def knows(self, endpoint: int) -> bool:
        """Whether ``endpoint``'s address is known."""

    def send(self, endpoint: int, frames: Sequence[Any]) -> None:
        """Send one message; never blocks on a slow peer."""

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        """The next message in the inbox, or None after ``timeout`` seconds.

        ``spin``: an answer is expected within about that many seconds: poll up to that long
        before blocking (0: block at once; :mod:`dynaps.wire.spin` bounds it).
        """

    def close(self, linger: float = 0.0) -> None:
        """Release the sockets, waiting up to ``linger`` seconds to deliver what is queued."""


def message_bound(tables: Sequence[TableLayout]) -> int:
    """The largest frame a job with these tables sends (``ZMQ_MAXMSGSIZE`` is per frame).

    A payload section is at most one array over a whole table (a TRANSFER or SHARD_COPY of
    every key: rows, or keys at 8 bytes each); a JSON frame at most MAX_BODY_BYTES; an
    inline frame a header and INLINE_MAX bytes. The coordinator, which receives only
    control messages, passes no tables.
    """
    largest = max((t.num_keys * max(t.row_bytes, 8) for t in tables), default=0)
    return max(largest, MAX_BODY_BYTES, HEADER_SIZE + INLINE_MAX, TRAILER_SIZE) + 4096


# a process's transport, whichever kind (both have the whole interface the runtime uses)
JobTransport = ZmqTransport | TcpTransport


def open_transport(
    kind: str,
    endpoint: int,
    key: bytes,
    bind_host: str = "127.0.0.1",
    port: int = 0,
    advertise_host: str | None = None,
    spin: float = 0.0,
    max_message_bytes: int = -1,
    size: limits.JobSize | None = None,
) -> JobTransport:
    """A job process's transport of ``kind`` (:func:`dynaps.config.transport_kind`): plain
    TCP (:mod:`dynaps.wire.tcp_transport`), or ZeroMQ (this module's, for comparison)."""
    maker: type[ZmqTransport] | type[TcpTransport] = ZmqTransport if kind == "zmq" else TcpTransport
    return maker(
        endpoint,
        key,
        bind_host,
        port,
        advertise_host,
        spin=spin,
        max_message_bytes=max_message_bytes,
        size=size,
    )
