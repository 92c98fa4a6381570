"""/status built when it is read, on the coordinator's thread, instead of after every turn.

The document (:func:`dynaps.coordinator.http.status_document`) visits every member and shard:
about 2 ms at 1,000 nodes.  Rebuilt after each turn of the coordinator's loop that changed
the job, and after heartbeats alone ten times a second, it cost the coordinator more than
anything but receiving its messages (bench/README.md, issue 15), whether or not anyone read
it.  Now a reader (the HTTP thread serving ``GET /status``, a Prometheus scrape) asks, the
coordinator's loop builds the document at the end of its current turn (at most
``TICK_SECONDS`` later) and the reader gets a document built after it asked: never older
than the read, and nothing is built while nobody reads.

Only the coordinator's thread touches the job; a reader and that thread share nothing but
the numbered requests below and the published document (replaced whole, never changed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

PATIENCE_SECONDS = 1.0  # a reader waits this long for the coordinator's thread, then takes the last


class StatusReads:
    """Reads of ``/status`` waiting for the coordinator's thread to build the document.

    ``current()`` returns the last document published (any thread may call it).
    """

    def __init__(self, current: Callable[[], dict[str, Any]], patience: float = PATIENCE_SECONDS) -> None:
        self._current = current
        self._patience = patience
        self._answered_cond = threading.Condition()
        self._asked = 0  # reads asked for, numbered from 1
        self._answered = 0  # every read up to this number has a document built after it asked
        self._closed = False

    def read(self) -> dict[str, Any]:
        """A document built after this call began, or the last one published when the
        coordinator's thread did not build one within ``patience`` seconds (it is overloaded)
        or no longer will (:meth:`close`)."""
        with self._answered_cond:
            if not self._closed:
                self._asked += 1
                ticket = self._asked
                self._answered_cond.wait_for(lambda: self._answered >= ticket or self._closed, self._patience)
        return self._current()

    def pending(self) -> int:
        """The newest read still waiting (its number), or 0: the coordinator's thread asks on
        each turn, so this is a plain read of two integers, no lock."""
        asked = self._asked
        return asked if asked > self._answered else 0

    def answer(self, ticket: int) -> None:
        """The document published now was built after read number ``ticket`` asked."""
        with self._answered_cond:
            self._answered = max(self._answered, ticket)
            self._answered_cond.notify_all()

    def close(self) -> None:
        """The coordinator's loop ended: the last document is final; nobody waits any more."""
        with self._answered_cond:
            self._closed = True
            self._answered = self._asked
            self._answered_cond.notify_all()
