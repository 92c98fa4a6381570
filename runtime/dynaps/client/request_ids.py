"""A training process's request ids, and the watermark below which nodes forget them.

Nodes keep a record of the updates of the last REMEMBERED_REQUESTS request ids of each
program (exactly-once: a push sent again is not applied twice), and forget the records
below the watermark a push carries.  So at most :data:`UNSETTLED_IDS` ids may lie between
the oldest request not yet settled and the next id: a program with thousands of requests
in flight, or one that keeps sending while a retried request is held, waits for room.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

from dynaps.wire.protocol import REMEMBERED_REQUESTS

# Request ids between the watermark and the next id, at most: nodes remember the updates of
# REMEMBERED_REQUESTS of them, and the watermark a node knows may be older than ours.
UNSETTLED_IDS = REMEMBERED_REQUESTS // 2


class RequestIds:
    """Hands out request ids; keeps the room between the oldest unsettled one and the next.

    ``in_flight``: the unanswered requests by id; ``oldest_held``: the oldest request sent
    again that may still be answered or copied (None: none); ``wait_for_room(req_id)``
    handles incoming messages until :meth:`oldest_unsettled` is within UNSETTLED_IDS of
    ``req_id``, or raises.
    """

    def __init__(
        self,
        in_flight: Mapping[int, Any],
        oldest_held: Callable[[], int | None],
        wait_for_room: Callable[[int], None],
    ) -> None:
        self._in_flight = in_flight
        self._oldest_held = oldest_held
        self._wait_for_room = wait_for_room
        # A random start: ids say nothing about this process to an outsider. Forging a
        # reply needs the job secret anyway (every frame is authenticated), so this only
        # has to be unpredictable, not secret; 62 bits never wrap the u64 field.
        self.next = secrets.randbits(62) + 1
        self._room_until = self.next + UNSETTLED_IDS  # new ids need no look before this one

    def make_room(self) -> None:
        """Room for the next id: called by every operation before it changes anything, so that
        waiting here, or raising after the wait, leaves no half-done operation (keys marked
        incoming, a local part applied)."""
        if self.next >= self._room_until:
            self._make_room(self.next)

    def take(self) -> int:
        req_id = self.next
        # taken before any wait, so that no id is handed out twice even if something run
        # while waiting asks for one; an id left unused by a wait that raises is harmless
        self.next += 1
        if req_id >= self._room_until:  # only a caller that did not make room first
            self._make_room(req_id)
        return req_id

    def oldest_unsettled(self) -> int:
        """Every request below this id is answered and no copy of it can still arrive."""
        oldest = min(self._in_flight) if self._in_flight else self.next
        held = self._oldest_held()
        if held is not None:
            oldest = min(oldest, held)
        return oldest

    def watermark(self) -> int:
        """:meth:`oldest_unsettled`'s 32 low bits: nodes forget their records of requests below it."""
        return self.oldest_unsettled() & 0xFFFFFFFF

    def _make_room(self, req_id: int) -> None:
        """The oldest id only grows, so ids up to it + UNSETTLED_IDS need no look (the look
        costs a pass over the requests in flight)."""
        oldest = self.oldest_unsettled()
        if req_id - oldest >= UNSETTLED_IDS:
            self._wait_for_room(req_id)
            oldest = self.oldest_unsettled()
        self._room_until = oldest + UNSETTLED_IDS
