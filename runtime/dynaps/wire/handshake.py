"""Admitting a connection before it delivers anything, with a password derived from the
job's wire key (:func:`password`): the TCP transport (:mod:`dynaps.wire.tcp_transport`, the
default) reads it first on every connection; for the ZeroMQ transport it is the password of
ZeroMQ's PLAIN handshake, checked by a ZAP handler (the rest of this module).

The MAC of :mod:`dynaps.wire.auth` is checked on a whole message, after libzmq has
received it; libzmq holds the frames of a message that has not ended, and partial frames
up to ``ZMQ_MAXMSGSIZE``, without limit (security audit of issue 12, finding 1: 2 bytes
on the wire per 64-byte frame held, an inbox OOM-killed in seconds).  So every inbox is a
PLAIN server and every connection a PLAIN client: a peer that does not present the job's
password is refused in the handshake, before libzmq takes a message frame from it, and a
handshake that does not finish within :data:`HANDSHAKE_SECONDS` is cut (libzmq reads the
HELLO command whole, up to ``ZMQ_MAXMSGSIZE``, before the password is checked: an outsider
holds at most that per connection, for that long).

PLAIN sends the password in clear: someone who reads the pod network can connect (and
then hold memory as above), but still cannot forge, change or replay a message (the MAC,
keyed differently).  It costs nothing per message: the check runs once per connection,
in pyzmq's authenticator thread.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

import zmq
from zmq.auth.base import Authenticator
from zmq.auth.thread import ThreadAuthenticator

# pyzmq's authenticator logs each admitted password at DEBUG: its own logger, never below INFO
_ZAP_LOG = logging.getLogger(__name__ + ".zap")
_ZAP_LOG.setLevel(logging.INFO)

DOMAIN = "dynaps"  # the ZAP domain of every inbox: no domain, no admission
USER = "dynaps"
# A connection that has not finished its handshake by then is cut (a client reconnects and
# tries again).  A handshake takes about 0.5 ms here (300 fresh connections to one inbox in
# 148 ms), but every one waits for the ZAP thread, which shares the GIL with a busy loop: a
# thousand nodes registering at once must not be cut and start over, so this stays generous.
HANDSHAKE_SECONDS = 10
GUARD_SOCKETS = 3  # what a Guard takes of its context: the ZAP socket and its thread's pipe pair


def password(key: bytes) -> str:
    """The job's connection password: derived from its wire key (it reveals nothing of it)."""
    return hashlib.blake2b(key, digest_size=24, person=b"dynaps-plain").hexdigest()


def present(sock: zmq.Socket[Any], key: bytes) -> None:
    """Make ``sock`` (a connection to an inbox of the job keyed ``key``, before it connects)
    present the job's password."""
    sock.setsockopt(zmq.PLAIN_USERNAME, USER.encode())
    sock.setsockopt(zmq.PLAIN_PASSWORD, password(key).encode())
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_SECONDS * 1000)


class Guard:
    """The ZAP handler of one ZeroMQ context, admitting PLAIN clients with one password."""

    def __init__(self, context: zmq.Context[Any], key: bytes) -> None:
        self.password = password(key)
        self._authenticator = ThreadAuthenticator(context, log=_ZAP_LOG)
        self._authenticator.start()
        self._authenticator.configure_plain(domain=DOMAIN, passwords={USER: self.password})
        self.users = 1  # transports of this context that use it (see guard_for)

    def serve(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` (an inbox, before it binds) admit only the job's PLAIN clients."""
        sock.setsockopt(zmq.PLAIN_SERVER, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_SECONDS * 1000)

    def stop(self) -> None:
        authenticator = self._authenticator
        if authenticator.thread is not None and not authenticator.thread.is_alive():
            # its thread died (it closed its end of the pipe): stop() would send to a pipe
            # nobody reads and wait for ever; close our end and the ZAP socket ourselves
            if authenticator.pipe is not None:
                authenticator.pipe.close(linger=0)
            Authenticator.stop(authenticator)
            return
        authenticator.stop()


_guards: dict[int, Guard] = {}  # by id of the context: ZeroMQ admits one ZAP handler per context
_lock = threading.Lock()


def guard_for(context: zmq.Context[Any], key: bytes) -> Guard:
    """The guard of ``context``, started by its first transport; :func:`release` when done."""
    with _lock:
        guard = _guards.get(id(context))
        if guard is None:
            guard = _guards[id(context)] = Guard(context, key)
        elif guard.password != password(key):
            raise ValueError("one ZeroMQ context serves one job: another key was given")
        else:
            guard.users += 1
        return guard


def release(context: zmq.Context[Any]) -> None:
    """A transport of ``context`` closed its sockets: the last one stops the guard."""
    with _lock:
        guard = _guards.get(id(context))
        if guard is None:
            return
        guard.users -= 1
        if guard.users == 0:
            del _guards[id(context)]
            guard.stop()
