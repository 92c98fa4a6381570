"""Localize completions a worker node hands its own training process through shared memory.

A localize ends at the requester's node: the keys' rows arrive there (TRANSFER) and the
node tells the requester that they are installed (LOCALIZED).  As a ZeroMQ message that
notice crossed four threads (the node, its I/O thread, TCP, the training process's I/O
thread, the training process) to reach a process on the same host that already shares
the node's tables and lock, and was signed, verified and decoded on the way: 160-250 us
of a 790 us localize on a loaded 2-core machine (``bench/README.md``, issue 18).  Here
the node writes the notice into a small ring in memory both processes map, under the
node's lock, and wakes the training process through an ``eventfd`` that its waits poll
beside the ZeroMQ inbox: one wake-up and no message.

Nothing here crosses a network, so there is nothing to authenticate: the segment and the
eventfd reach only the training process the node attached (``SCM_RIGHTS``, after its
proof of the job secret: :class:`dynaps.store.shm.AttachServer`), which shares the tables
already.  A full ring (a training process that stopped reading) makes the node send the
LOCALIZED message instead, so a notice is never lost.

Layout (int64 words): ``written``, ``read``, then :data:`CAPACITY` entries of
``req_id, table, count``.  The node only advances ``written``, the training process only
``read``, both under the node's lock (which also orders the memory accesses).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dynaps.store.shm import NullLock, Segment, SharedLock

CAPACITY = 256  # notices not yet read; a localize in flight needs one per part
_FIELDS = 3  # req_id, table, count
_HEAD = 2  # words before the entries: written, read
WORDS = _HEAD + CAPACITY * _FIELDS


class Notices:
    """The node's end posts, the training process's end takes; see the module docstring."""

    def __init__(self, segment: Segment, event_fd: int, lock: SharedLock | NullLock) -> None:
        self._segment = segment
        self._words = segment.array
        self.event_fd = event_fd  # readable while notices may wait (poll it beside the inbox)
        self._lock = lock

    @classmethod
    def create(cls, lock: SharedLock | NullLock) -> Notices:
        """A node's, for the training process it will attach."""
        segment = Segment.create("notices", (WORDS,), np.dtype(np.int64))
        return cls(segment, os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK), lock)

    @classmethod
    def attach(cls, segment_fd: int, event_fd: int, lock: SharedLock | NullLock) -> Notices:
        """The training process's, from the descriptors its node passed (see :meth:`fds`)."""
        os.set_blocking(event_fd, False)
        return cls(Segment.from_fd(segment_fd, (WORDS,), np.dtype(np.int64)), event_fd, lock)

    def fds(self) -> list[int]:
        """What the training process needs, in the order :meth:`attach` takes them."""
        return [self._segment.fd, self.event_fd]

    def post(self, req_id: int, table: int, count: int) -> bool:
        """(Node) ``count`` keys of localize ``req_id`` are installed here; False if the ring
        is full (send the LOCALIZED message instead)."""
        words = self._words
        self._lock.acquire()
        try:
            written = int(words[0])
            if written - int(words[1]) >= CAPACITY:
                return False
            at = _HEAD + (written % CAPACITY) * _FIELDS
            words[at : at + _FIELDS] = (req_id, table, count)
            words[0] = written + 1
        finally:
            self._lock.release()
        os.eventfd_write(self.event_fd, 1)
        return True

    def waiting(self) -> bool:
        """(Training process) whether notices may wait: a hint read without the lock, for
        spinning; :meth:`take` reads them under it."""
        words = self._words
        return bool(words[0] != words[1])

    def take(self) -> list[tuple[int, int, int]]:
        """(Training process) the notices posted since the last call: ``(req_id, table,
        count)`` in the order they were posted.  Clears the eventfd, so call it after every
        wake-up (cheap when nothing waits)."""
        words = self._words
        try:
            os.eventfd_read(self.event_fd)  # before reading the ring: a later post wakes us again
        except BlockingIOError:
            if words[0] == words[1]:
                return []  # the common case, without the lock
        self._lock.acquire()
        try:
            written, read = int(words[0]), int(words[1])
            if written == read:
                return []
            taken: list[Any] = []
            for index in range(read, written):
                at = _HEAD + (index % CAPACITY) * _FIELDS
                taken.append(tuple(words[at : at + _FIELDS].tolist()))
            words[1] = written
        finally:
            self._lock.release()
        return taken

    def close(self) -> None:
        self._segment.close()
        os.close(self.event_fd)
