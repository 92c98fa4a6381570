"""Raw sockets that take part in a job's handshake: a test playing a peer, or an attacker who
read the job's password off the network, which the per-message MAC must still stop.

For the plain-TCP transport (the default, :mod:`dynaps.wire.tcp_transport`) they speak its
framing with the job's password first; for ZeroMQ (``DYNAPS_TRANSPORT=zmq``) they are
ZeroMQ sockets that present the password through PLAIN (:mod:`dynaps.wire.handshake`).
Either way ``make(zmq.PUSH)`` connects and sends, ``make(zmq.PULL)`` binds and receives
raw frames (no MAC checked), with the few zmq-style methods the tests use.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import zmq

from dynaps.config import transport_kind
from dynaps.wire import handshake, tcp_inbound

Socket = Any  # a zmq socket or one of the classes below


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def framed(frames: Sequence[Any]) -> bytes:
    """``frames`` as the TCP transport writes a message."""
    parts = [bytes(memoryview(f)) for f in frames]
    return struct.pack(f"<I{len(parts)}Q", len(parts), *[len(p) for p in parts]) + b"".join(parts)


def hello(key: bytes) -> bytes:
    """What a TCP connection of the job keyed ``key`` sends first."""
    return tcp_inbound.MAGIC + handshake.password(key).encode()


class TcpPush:
    """A connection that presents the job's password and writes framed messages."""

    def __init__(self, key: bytes) -> None:
        self._hello = hello(key)
        self._sock: socket.socket | None = None

    def setsockopt(self, option: int, value: Any) -> None:
        pass  # LINGER: every send here is complete when it returns

    def connect(self, address: str) -> None:
        self._sock = socket.create_connection(_host_port(address), timeout=10)
        self._sock.sendall(self._hello)

    def send_multipart(self, frames: Sequence[Any]) -> None:
        assert self._sock is not None
        self._sock.sendall(framed(frames))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


class TcpPull:
    """A listening socket that admits the job's password and reads framed messages."""

    def __init__(self, key: bytes) -> None:
        self._hello = hello(key)
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._buffers: dict[socket.socket, bytearray] = {}
        self._messages: list[list[bytes]] = []
        self._admitted: set[socket.socket] = set()

    def bind_to_random_port(self, address: str) -> int:
        self._listener = socket.create_server((address.removeprefix("tcp://"), 0))
        self._selector.register(self._listener, selectors.EVENT_READ)
        return int(self._listener.getsockname()[1])

    def poll(self, timeout_ms: int) -> bool:
        """Whether a message arrived within ``timeout_ms``."""
        deadline = time.monotonic() + timeout_ms / 1000
        while not self._messages and time.monotonic() < deadline:
            self._take(deadline - time.monotonic())
        return bool(self._messages)

    def _take(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is self._listener:
                conn, _ = sock.accept()
                self._buffers[conn] = bytearray()
                self._selector.register(conn, selectors.EVENT_READ)
                continue
            data = sock.recv(1 << 20)
            if not data:
                self._selector.unregister(sock)
                sock.close()
                continue
            buf = self._buffers[sock]
            buf += data
            if sock not in self._admitted:
                if len(buf) < len(self._hello):
                    continue
                if not buf.startswith(self._hello):
                    raise AssertionError("a connection without the job's password")
                del buf[: len(self._hello)]
                self._admitted.add(sock)
                sock.sendall(tcp_inbound.ADMITTED)
            while len(buf) >= 4:
                (count,) = struct.unpack_from("<I", buf)
                sizes = struct.unpack_from(f"<{count}Q", buf, 4)
                start = 4 + 8 * count
                if len(buf) < start + sum(sizes):
                    break
                frames = []
                for size in sizes:
                    frames.append(bytes(buf[start : start + size]))
                    start += size
                del buf[:start]
                self._messages.append(frames)

    def recv_multipart(self) -> list[bytes]:
        while not self._messages:
            self.poll(1000)
        return self._messages.pop(0)

    def close(self) -> None:
        for sock in self._buffers:
            sock.close()
        if self._listener is not None:
            self._listener.close()
        self._selector.close()


@contextmanager
def peer_sockets(key: bytes, kind: str | None = None) -> Iterator[Callable[[int], Socket]]:
    """``make(zmq.PUSH)`` (to connect) or ``make(zmq.PULL)`` (to bind): a socket that
    presents the job's password or admits only it, for the transport ``kind`` (default:
    this process's, :func:`dynaps.config.transport_kind`); all closed at the end."""
    kind = kind or transport_kind()
    made: list[Any] = []
    if kind == "tcp":

        def make_tcp(socket_type: int) -> Socket:
            made.append(TcpPull(key) if socket_type == zmq.PULL else TcpPush(key))
            return made[-1]

        try:
            yield make_tcp
        finally:
            for peer in made:
                peer.close()
        return
    context: zmq.Context[Any] = zmq.Context()
    guard: handshake.Guard | None = None

    def make(socket_type: int) -> Socket:
        nonlocal guard
        sock: zmq.Socket[Any] = context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 1000 if socket_type == zmq.PUSH else 0)
        if socket_type == zmq.PULL:
            guard = guard or handshake.guard_for(context, key)
            guard.serve(sock)
        else:
            handshake.present(sock, key)
        made.append(sock)
        return sock

    try:
        yield make
    finally:
        for sock in made:
            sock.close()
        if guard is not None:
            handshake.release(context)
        context.term()
