"""Requests sent more than once, held below the watermark until no copy can still arrive.

A client tells nodes, with every push and set, the oldest request it has not had answered
(the watermark, in ``aux``); nodes then forget their records of older requests
(:mod:`dynaps.node.applied`).  A request sent twice has two copies on their way, and the
answer to one says nothing about the other: a retry may wait at a node for the shard map it
was sent with, and an original may be forwarded by a node that left, during its linger.
If the watermark passed such a request once it was answered, the node holding its record
could forget it before the other copy arrived, and apply that copy a second time.  So a
request sent again stays below the watermark for a while after its last send or its
answer, whichever is later, and late answers to it are known as duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# How long a request sent more than once stays below the watermark.  Its other copy takes
# at most: a node that left forwards stragglers for LEAVE_LINGER (1 s, in
# dynaps.node.drain), then a hop or two more; or a retry waits at a node until the
# membership it was sent under reaches that node.
RESENT_HOLD_SECONDS = 5.0


class RetryHolds:
    """Ids of requests sent more than once, each with when its hold began."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # a test's own clock, or the monotonic one
        self._since: dict[int, float] = {}  # in the order holds began: the oldest end first

    def __bool__(self) -> bool:
        return bool(self._since)

    def __contains__(self, req_id: int) -> bool:
        """Whether ``req_id`` was sent more than once and is still held (its hold may have
        ended since the last :meth:`oldest`)."""
        return req_id in self._since

    def hold(self, req_id: int) -> None:
        """``req_id`` was sent again, or answered after it was: hold it from now."""
        self._since.pop(req_id, None)
        self._since[req_id] = self.clock()

    def renew(self, req_id: int) -> None:
        """``req_id`` was answered: a copy sent before may still be on its way."""
        if req_id in self._since:
            self.hold(req_id)

    def oldest(self) -> int | None:
        """The oldest id still held (None: none), after releasing the holds that ended."""
        since = self._since
        ended = self.clock() - RESENT_HOLD_SECONDS
        while since:
            req_id, began = next(iter(since.items()))
            if began > ended:
                break
            del since[req_id]
        return min(since) if since else None
