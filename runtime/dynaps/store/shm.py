"""Memory that a worker node's server process and its training process share.

A worker node is two processes: the node server (answers other nodes, moves keys) and
the user's training program (the client).  They share the node's parameter store so that
a local pull is a memory access, while the server keeps answering remote requests when
the training program holds the GIL for seconds (which a server *thread* could not).

* Segments are ``memfd`` files: anonymous, sized lazily (pages are committed when
  touched, so a table's full key range costs address space, not memory), gone when the
  last process unmaps them, and not limited by a container's small ``/dev/shm``.
* They reach the client over a Unix socket with ``SCM_RIGHTS`` (:class:`AttachServer`,
  :func:`attach`); the handshake's JSON says what each descriptor holds.
* One process-shared lock guards ownership changes and value updates: a named POSIX
  semaphore (CPython's own ``SemLock``, ~0.1 us per acquire/release).  Its name is
  unlinked as soon as the client holds it.
"""

from __future__ import annotations

import _multiprocessing  # type: ignore[import-not-found]  # CPython's semaphore; no stubs
import contextlib
import hashlib
import hmac
import json
import mmap
import os
import secrets
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from dynaps.contract.secret import derive
from dynaps.errors import ClusterError

_SEMAPHORE = 1  # _multiprocessing.SemLock kind
T = TypeVar("T")


class SharedLock:
    """A lock two processes share, with a timeout so a dead holder cannot wedge the node."""

    def __init__(self, semlock: Any, name: str, owner: bool) -> None:
        self._sem = semlock
        self.name = name
        self._owner = owner
        self.acquire = semlock.acquire
        self.release = semlock.release

    @classmethod
    def create(cls) -> SharedLock:
        name = f"/dynaps-{os.getpid()}-{secrets.token_hex(4)}"
        return cls(_multiprocessing.SemLock(_SEMAPHORE, 1, 1, name, False), name, owner=True)

    @classmethod
    def open(cls, name: str) -> SharedLock:
        try:
            return cls(_multiprocessing.SemLock._rebuild(0, _SEMAPHORE, 1, name), name, owner=False)
        except OSError as exc:
            raise ClusterError(f"cannot open the node's lock {name}: {exc}") from exc

    def recover_when_dead(self, holder_alive: Callable[[], bool], poll: float = 1.0) -> None:
        """Make :meth:`acquire` take the lock over if the other process died holding it."""
        sem = self._sem

        def acquire(block: bool = True, timeout: float | None = None) -> bool:
            while not sem.acquire(True, poll):
                if not holder_alive():
                    return True  # the holder is gone: its critical section ended with it
            return True

        self.acquire = acquire

    def unlink(self) -> None:
        """Remove the name; processes that opened it keep using it."""
        with contextlib.suppress(OSError):
            _multiprocessing.sem_unlink(self.name)

    def __enter__(self) -> SharedLock:
        self.acquire()  # the same path as a plain acquire, with its dead-holder recovery
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class NullLock:
    """For nodes without a client process: nothing to exclude."""

    name = ""

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        return True

    def release(self) -> None:
        return None

    def unlink(self) -> None:
        return None

    def __enter__(self) -> NullLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


@dataclass
class Segment:
    """One shared array: a memfd, its mapping and the numpy view of it."""

    fd: int
    mapping: mmap.mmap
    array: npt.NDArray[Any]

    @classmethod
    def create(cls, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Segment:
        size = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        return cls(fd, mapping, _view(mapping, shape, dtype))

    @classmethod
    def from_fd(cls, fd: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Segment:
        size = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        if os.fstat(fd).st_size < size:
            raise ClusterError("shared segment is smaller than its table")
        mapping = mmap.mmap(fd, size)
        return cls(fd, mapping, _view(mapping, shape, dtype))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def watch_process(pid: int) -> Callable[[], bool]:
    """Whether the process that is ``pid`` now still runs, asked later (an exited one does
    not, nor a zombie).

    A pidfd follows the process, not its number: once it has exited, another process (of
    any user) may get the number, and a node that asked ``kill(pid, 0)`` took that newcomer
    for its training program and waited for the shared lock for good."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return lambda: False
    except OSError:  # a seccomp profile without pidfd_open (Linux 5.3): the number, then
        return lambda: _runs_as_us(pid)
    exited = select.poll()
    exited.register(fd, select.POLLIN)  # readable once the process has exited
    return lambda: not exited.poll(0)


def _runs_as_us(pid: int) -> bool:
    """Whether process ``pid`` runs under our user (a zombie does not run; a process of
    another user is not our training process, whatever its number)."""
    try:
        os.kill(pid, 0)
    except OSError:  # ESRCH: gone; EPERM: another user's
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def _view(mapping: mmap.mmap, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(mapping, dtype=dtype, count=count).reshape(shape)


_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_LEN = struct.Struct("<I")


MAX_CHALLENGE = 128  # characters of the client's challenge


def attach_address(token: str) -> str:
    """The node's attach socket for ``token``: an abstract Unix socket, with no file to clean
    up, visible only inside this network namespace (the pod)."""
    return f"\0dynaps-{token}"


def attach_proof(job_secret: bytes, token: str) -> str:
    """What a training process shows to attach: it knows the job secret (for this token)."""
    key = derive(job_secret, "attach")
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def node_answer(job_secret: bytes, token: str, challenge: str) -> str:
    """What the node shows back: it knows the job secret too, for this token and the
    training process's fresh challenge (so an answer seen once is worth nothing again).
    The NUL separators keep it apart from every :func:`attach_proof` (a token has none)."""
    key = derive(job_secret, "attach")
    return hmac.new(key, f"node\0{token}\0{challenge}".encode(), hashlib.sha256).hexdigest()


class AttachServer:
    """The node's side of the attach handshake: hands segments and the lock to a client.

    Only a process of this node's own user (``SO_PEERCRED``, checked before reading a
    byte, so a stranger cannot even hold the node up) that knows the job secret (the
    hello's ``proof``, :func:`attach_proof`) is served: the abstract socket's name can be
    read by anyone in the network namespace from ``/proc/net/unix``.  The node then answers
    the client's challenge (:func:`node_answer`), so that the client knows it maps the
    memory of its own job's node, not of whoever took the name.
    """

    def __init__(self, token: str, job_secret: bytes) -> None:
        self._token = token
        self._secret = job_secret
        self._proof = attach_proof(job_secret, token)
        self.address = attach_address(token)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.address)
        self._sock.listen(4)
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def accept(self, description: dict[str, Any], fds: list[int]) -> dict[str, Any] | None:
        """Serve one waiting client, if any; returns what the client said about itself, but
        its ``pid`` as the kernel says (``SO_PEERCRED``), not as the client claims."""
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:
            return None
        with conn:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
            pid, uid, _gid = _CREDS.unpack(creds)
            if uid != os.getuid():
                raise ClusterError(f"refused an attach from process {pid} of another user (uid {uid})")
            conn.settimeout(10.0)
            hello = _recv_json(conn)
            if not hmac.compare_digest(str(hello.get("proof", "")), self._proof):
                raise ClusterError(f"refused an attach from process {pid}: it does not know the job secret")
            challenge = hello.get("challenge")
            if not isinstance(challenge, str) or not 0 < len(challenge) <= MAX_CHALLENGE:
                raise ClusterError(f"refused an attach from process {pid}: no challenge for the node")
            answer = node_answer(self._secret, self._token, challenge)
            payload = json.dumps({**description, "answer": answer}).encode()
            socket.send_fds(conn, [_LEN.pack(len(payload)) + payload], fds)
            _recv_json(conn)  # the client's ack: it has mapped everything
            return {**hello, "pid": pid}

    def close(self) -> None:
        self._sock.close()


def attach(
    token: str,
    job_secret: bytes,
    prepare: Callable[[dict[str, Any], list[int]], T],
    timeout: float = 30.0,
) -> T:
    """The client's side: receive the description and descriptors, ``prepare`` them, then ack.

    Nothing received is used before the server has shown that it is this job's node: a
    process of our own user (``SO_PEERCRED``) that answers our challenge with the job
    secret (:func:`node_answer`).  Anyone in the network namespace may bind the name first,
    and would otherwise hand us memory, a lock and a configuration of its choosing.
    The node unlinks the lock's name once it has the ack, so ``prepare`` must open the lock.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        try:
            sock.connect(attach_address(token))
        except OSError as exc:
            raise ClusterError(f"cannot attach to the local dynaps node: {exc}") from exc
        pid, uid, _gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
        if uid != os.getuid():
            raise ClusterError(f"the attach socket is held by process {pid} of another user (uid {uid})")
        challenge = secrets.token_hex(16)
        hello = {"pid": os.getpid(), "proof": attach_proof(job_secret, token), "challenge": challenge}
        payload = json.dumps(hello).encode()
        sock.sendall(_LEN.pack(len(payload)) + payload)
        message, fds, _flags, _addr = socket.recv_fds(sock, 1 << 20, 256)
        try:
            description = _description(sock, message)
            expected = node_answer(job_secret, token, challenge)
            if not hmac.compare_digest(str(description.get("answer", "")), expected):
                raise ClusterError(f"the process at the attach socket ({pid}) does not know the job secret")
        except BaseException:
            for fd in fds:  # nothing of an impostor's is kept
                os.close(fd)
            raise
        prepared = prepare(description, fds)
        sock.sendall(_LEN.pack(2) + b"{}")
        return prepared


def _description(sock: socket.socket, message: bytes) -> dict[str, Any]:
    """The node's description: the length-prefixed JSON that came with the descriptors."""
    if len(message) < _LEN.size:
        raise ClusterError("the dynaps node closed the attach connection")
    (length,) = _LEN.unpack_from(message)
    if length > 1 << 20:
        raise ClusterError("attach message too large")
    while len(message) < _LEN.size + length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ClusterError("the dynaps node closed the attach connection")
        message += chunk
    try:
        description = json.loads(message[_LEN.size : _LEN.size + length])
    except ValueError as exc:
        raise ClusterError(f"the dynaps node sent a malformed description: {exc}") from exc
    if not isinstance(description, dict):
        raise ClusterError("the dynaps node sent a malformed description")
    return description


def _recv_json(conn: socket.socket) -> dict[str, Any]:
    head = _recv_exact(conn, _LEN.size)
    (length,) = _LEN.unpack(head)
    if length > 1 << 20:
        raise ClusterError("attach message too large")
    value: dict[str, Any] = json.loads(_recv_exact(conn, length))
    return value


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ClusterError("attach connection closed early")
        data += chunk
    return data
