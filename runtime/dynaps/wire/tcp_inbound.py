"""The receiving side of the TCP transport (:mod:`dynaps.wire.tcp_transport`): the listening
socket, each connection's admission (the job's password first), and the framing that cuts
what arrives into messages (the sending side, :mod:`dynaps.wire.tcp_outbound`, writes the
same framing).

A message is ``u32`` frame count, ``u64`` length per frame, then the frames.  Before its
password a connection is read no further than the password's length and, at its first wrong
byte, answered :data:`REFUSED` and closed (a dialler tells that from a peer that died); at
most :data:`MAX_UNADMITTED` wait for theirs, none longer than :data:`HANDSHAKE_SECONDS`.
After it, a frame count out of range or a frame over the bound closes the connection before
anything of the message is kept.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import struct
import time

from dynaps.errors import ConfigError
from dynaps.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

MAGIC = b"DYNAPS-TCP-1\0\0\0\0"  # then the job's password: what a connection sends first
ADMITTED = b"\x01"  # the acceptor's answer to the right password
REFUSED = b"\x00"  # its answer to a wrong one, before it closes the connection
MAX_FRAMES = 64  # a job's messages have a header, a body, a few arrays and the trailer
HANDSHAKE_SECONDS = 10.0
MAX_UNADMITTED = 256
READ_BYTES = 1 << 18  # per recv call; a readable connection is read up to READS_PER_TURN times
READS_PER_TURN = 8
COUNT = struct.Struct("<I")
HEADS = [struct.Struct(f"<I{n}Q") for n in range(MAX_FRAMES + 1)]  # count and lengths, by count


def unregister(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    with contextlib.suppress(KeyError, ValueError):  # not registered (a failed dial)
        selector.unregister(sock)


class Connection:
    """A connection into the listening socket."""

    __slots__ = ("admitted", "buf", "since", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.admitted = False
        self.since = now


class Inbound:
    """The listening socket and its connections; whole messages go to ``inbox``."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        hello: bytes,
        max_frame: int,
        inbox: collections.deque[list[bytes]],
        bind_host: str,
        port: int,
    ) -> None:
        self._selector = selector
        self._hello = hello
        self._max_frame = max_frame
        self._inbox = inbox
        # what one recv reads into: messages that arrive whole are cut out of it, and only
        # the part of one still on its way is copied to its connection's own buffer (a
        # recv of new bytes, then a copy into the connection's, cost a copy and an
        # allocation more per read)
        self._arrived = memoryview(bytearray(READ_BYTES))
        self.unadmitted: dict[Connection, None] = {}  # in arrival order
        self._zmq_peer_log = ThrottledLog(log, "refused a connection")
        listener = socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((bind_host, port))
            listener.listen(1024)
        except OSError as exc:
            listener.close()
            raise ConfigError(f"cannot listen on {bind_host}:{port}: {exc}") from exc
        listener.setblocking(False)
        self._listener = listener
        selector.register(listener, selectors.EVENT_READ, self)
        self.port = int(listener.getsockname()[1])

    def wait_limit(self, timeout: float | None) -> float | None:
        """Cut the oldest connection whose password is late; ``timeout`` shortened to when
        the next one is due."""
        if not self.unadmitted:
            return timeout
        oldest = next(iter(self.unadmitted))
        late = oldest.since + HANDSHAKE_SECONDS - time.monotonic()
        if late <= 0:
            self.close_connection(oldest)
            return timeout
        return late if timeout is None or timeout > late else timeout

    def accept(self) -> None:
        now = time.monotonic()
        for _ in range(64):
            try:
                sock, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the connection waits in the backlog
                log.warning("cannot accept a connection: %s", exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, now)
            if len(self.unadmitted) >= MAX_UNADMITTED:
                self.close_connection(next(iter(self.unadmitted)))
            self.unadmitted[conn] = None
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def close_connection(self, conn: Connection) -> None:
        self.unadmitted.pop(conn, None)
        unregister(self._selector, conn.sock)
        conn.sock.close()
        conn.buf = bytearray()

    def read(self, conn: Connection) -> None:
        for _ in range(READS_PER_TURN):
            try:
                if not conn.admitted:
                    # before the password, read no more than it: nothing of an outsider's is kept
                    if not self._admit(conn):
                        return
                    continue
                got = conn.sock.recv_into(self._arrived)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close_connection(conn)
                return
            if not got:
                self.close_connection(conn)
                return
            if conn.buf:  # the rest of a message begun in an earlier read
                conn.buf += self._arrived[:got]
                used = self._split(conn, conn.buf, len(conn.buf))
                if used < 0:
                    return
                del conn.buf[:used]
            else:
                used = self._split(conn, self._arrived, got)
                if used < 0:
                    return
                if used < got:
                    conn.buf = bytearray(self._arrived[used:got])
            if got < READ_BYTES:
                return

    def _admit(self, conn: Connection) -> bool:
        """Read what ``conn`` sent of the password; False once there is nothing more to read
        now or the connection is closed (the first wrong byte closes it)."""
        data = conn.sock.recv(len(self._hello) - len(conn.buf))
        if not data:
            self.close_connection(conn)
            return False
        conn.buf += data
        if not self._hello.startswith(conn.buf):
            if len(conn.buf) >= 10 and conn.buf[0] == 0xFF and conn.buf[9] == 0x7F:
                # ZMTP's signature, which a ZeroMQ peer sends and then waits
                self._zmq_peer_log("a ZeroMQ peer (is DYNAPS_TRANSPORT the same in every process?)")
            with contextlib.suppress(OSError):  # gone already: nothing to tell
                conn.sock.send(REFUSED)
            self.close_connection(conn)
            return False
        if len(conn.buf) < len(self._hello):
            return True
        conn.admitted = True
        conn.buf = bytearray()
        self.unadmitted.pop(conn, None)
        try:
            conn.sock.send(ADMITTED)
        except OSError:
            self.close_connection(conn)
            return False
        return True

    def _split(self, conn: Connection, buf: bytearray | memoryview, end: int) -> int:
        """Move the whole messages at the start of ``buf[:end]`` (what came from ``conn``) to
        the inbox; how many bytes they took, or -1 if the connection broke the framing (it
        is closed)."""
        off = 0
        while end - off >= 4:
            (count,) = COUNT.unpack_from(buf, off)
            if not 0 < count <= MAX_FRAMES:
                self.close_connection(conn)
                return -1
            head = HEADS[count]
            if end - off < head.size:
                break
            sizes = head.unpack_from(buf, off)[1:]
            if max(sizes) > self._max_frame:
                self.close_connection(conn)
                return -1
            whole = head.size + sum(sizes)
            if end - off < whole:
                break
            pos = off + head.size
            with memoryview(buf) as view:
                frames = []
                for size in sizes:
                    frames.append(bytes(view[pos : pos + size]))
                    pos += size
            self._inbox.append(frames)
            off += whole
        return off

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            if type(key.data) is Connection:
                key.data.sock.close()
        self.unadmitted.clear()
        self._listener.close()
