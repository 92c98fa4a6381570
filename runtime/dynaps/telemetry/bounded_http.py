"""A threaded HTTP server that bounds what its clients can take: connections and time.

Anyone on the pod network can reach a job's HTTP ports, so the coordinator's endpoint and
every ``/metrics`` listener run on this server: at most ``max_connections`` connections at
once (more are closed at once), each cut after ``deadline`` seconds whatever it does (a slow
trickle cannot hold a slot); handlers set their own socket read timeout.  A real server
library would do this too, but none is a dependency of the runtime.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


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
        self._deadline = deadline
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
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
