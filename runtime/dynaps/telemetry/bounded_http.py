"""A threaded HTTP server that bounds what its clients can take: connections, time, memory.

Anyone on the pod network can reach a job's HTTP ports, so the coordinator's endpoint and
every ``/metrics`` listener run on this server: at most ``max_connections`` connections at
once, each cut after ``deadline`` seconds whatever it does (a slow trickle cannot hold a
slot); handlers (:class:`BoundedHandler`) set their own socket read timeout and read at
most :data:`MAX_HEAD` bytes of request line and headers.  A real server library would do
this too, but none is a dependency of the runtime.

When every slot is taken, a new connection takes the slot of the oldest one that has not
shown the job's token (:meth:`BoundedHandler.trust`): holding slots with connections that
trickle, and taking each freed slot back with fresh connects, no longer keeps the token's
holder (the operator) out.  It is refused only when every open connection is trusted.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

# Bytes of request line and headers together. The standard library alone reads 100 lines
# of 64 KiB and keeps them until the head ends: 6.5 MB per connection before any token is
# checked. What this job's clients send (the operator, Prometheus, a probe) is a few hundred.
MAX_HEAD = 16 << 10
# Seconds a new connection waits for the slot of the one it cut: that handler's blocked read
# returns at once, so this is a bound, not a delay.
CUT_WAIT = 1.0


class _HeadBudget(io.BufferedIOBase):
    """A request's reader for the standard library's parser, which reads the head line by
    line: the lines together may hold at most ``budget`` bytes. A body is read whole
    (``read``), its size checked by the handler from its Content-Length."""

    def __init__(self, inner: io.BufferedIOBase, budget: int) -> None:
        super().__init__()
        self._inner = inner
        self._left = budget

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1, /) -> bytes:
        cap = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        line = self._inner.readline(cap)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong(f"a request head over {MAX_HEAD} bytes")
        return line

    def read(self, size: int | None = -1, /) -> bytes:
        return self._inner.read(size)

    def close(self) -> None:
        self._inner.close()
        super().close()


class BoundedHandler(BaseHTTPRequestHandler):
    """A request handler whose head may hold at most :data:`MAX_HEAD` bytes: more headers are
    answered 431 by the standard library's own parser, a longer request line 414."""

    def setup(self) -> None:
        super().setup()
        self.rfile = _HeadBudget(self.rfile, MAX_HEAD)

    def trust(self) -> None:
        """This connection showed the job's token: a newcomer never takes its slot."""
        server = self.server
        if isinstance(server, BoundedServer):
            server.trust(self.request)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except http.client.LineTooLong:  # the request line alone (the headers' is caught inside)
            self.requestline = self.request_version = self.command = ""
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            self.close_connection = True


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, but at most ``max_connections`` of them, each cut after
    ``deadline`` seconds (checked on every turn of the serving loop)."""

    daemon_threads = True
    block_on_close = False  # closing must not wait for a connection that hangs
    # A long accept queue: a burst beyond the cap is refused at once rather than left to
    # the client's SYN retries (seconds), which would also delay the operator behind it.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
        deadline: float,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._opened: dict[socket.socket, float] = {}  # open connection -> when it was accepted
        self._trusted: set[socket.socket] = set()  # open connections that showed the token
        self._cutting: set[socket.socket] = set()  # cut for a newcomer, their handler not yet done
        self._deadline = deadline
        self.refused = 0  # connections closed unanswered: every slot was trusted
        self.cut = 0  # connections closed to make room for a newer one
        super().__init__(address, handler)

    @property
    def trusted(self) -> int:
        """Open connections that showed the token."""
        with self._lock:
            return len(self._trusted)

    def trust(self, request: socket.socket) -> None:
        with self._lock:
            if request in self._opened:
                self._trusted.add(request)

    def _room(self) -> bool:
        """A slot for a new connection: a free one, or the oldest untrusted connection's."""
        if self._slots.acquire(blocking=False):
            return True
        with self._lock:
            # not one cut before: a handler busy off its socket (a /metrics render waiting
            # for the coordinator) frees its slot only when done, and cutting it again
            # frees nothing
            untrusted = [
                (since, id(sock), sock)
                for sock, since in self._opened.items()
                if sock not in self._trusted and sock not in self._cutting
            ]
            victim = min(untrusted)[2] if untrusted else None
            if victim is not None:
                self._cutting.add(victim)
            waiting = bool(self._cutting)
        if victim is None:
            # a cut one may still free its slot; else every open connection is trusted
            return waiting and self._slots.acquire(timeout=CUT_WAIT)
        self.cut += 1
        with contextlib.suppress(OSError):
            victim.shutdown(socket.SHUT_RDWR)  # its handler's read returns: the slot frees
        return self._slots.acquire(timeout=CUT_WAIT)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._room():
            # Answering would take a thread, which is what the cap protects: close at once.
            self.refused += 1
            self.shutdown_request(request)
            return
        with self._lock:
            self._opened[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: socket.socket) -> None:
        with self._lock:
            self._trusted.discard(request)
            self._cutting.discard(request)
            if self._opened.pop(request, None) is None:
                return
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up or was cut (the deadline) is no server error: no traceback.
        log.debug("http: connection from %s ended early", client_address, exc_info=True)

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [sock for sock, since in self._opened.items() if now - since > self._deadline]
        for sock in late:
            # Wakes the handler's blocked read, which then ends its connection.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Listener:
    """A :class:`BoundedServer` serving on its own daemon thread until :meth:`close`."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
        deadline: float,
        name: str,
    ) -> None:
        self.server = BoundedServer(address, handler, max_connections, deadline)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.25,), name=name, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
