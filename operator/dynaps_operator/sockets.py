"""The operator's outgoing sockets, recorded so that stopping can wait until they are closed.

A closed aiohttp session or response only *starts* closing its connections: the socket is
released a few turns of the event loop later (a TLS connection first exchanges close_notify
with the API server). kopf closes its watch streams that way and returns at once, so an
operator whose loop ends right after kopf does leaves those sockets to the garbage collector
(ResourceWarning, and an fd held until then). Every client session of the operator (its own
and the one it gives kopf at login) opens its sockets here; ``wait_closed`` waits for exactly
those, not a guessed time.
"""

from __future__ import annotations

import asyncio
import socket
import time
import weakref

from aiohappyeyeballs import AddrInfoType


class OpenSockets:
    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def open(self, addr_info: AddrInfoType) -> socket.socket:
        """A ``socket_factory`` for ``aiohttp.TCPConnector``."""
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=kind, proto=proto)
        self._sockets.add(sock)
        return sock

    def still_open(self) -> list[socket.socket]:
        return [s for s in list(self._sockets) if s.fileno() != -1]

    async def wait_closed(self, timeout: float) -> list[socket.socket]:
        """Let the loop run until every recorded socket is closed; returns those still open."""
        deadline = time.monotonic() + timeout
        while (left := self.still_open()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return left
