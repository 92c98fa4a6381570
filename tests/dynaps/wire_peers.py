"""Raw ZeroMQ sockets that take part in a job's handshake (:mod:`dynaps.wire.handshake`):
a test playing a peer, or an attacker who read the job's password off the network, which
the per-message MAC must still stop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from dynaps.wire import handshake

Socket = zmq.Socket[Any]


@contextmanager
def peer_sockets(key: bytes) -> Iterator[Callable[[int], Socket]]:
    """``make(kind)``: a socket of ``kind`` that presents the job's password (PUSH, to
    connect) or admits only it (PULL, to bind); all closed at the end."""
    context: zmq.Context[Any] = zmq.Context()
    made: list[Socket] = []
    guard: handshake.Guard | None = None

    def make(kind: int) -> Socket:
        nonlocal guard
        sock: Socket = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 1000 if kind == zmq.PUSH else 0)
        if kind == zmq.PULL:
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
