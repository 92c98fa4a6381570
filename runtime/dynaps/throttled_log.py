"""A log line for events an outsider can cause at wire speed: at most one per interval.

Frames that fail authentication, malformed messages, refused attach attempts: each is worth
counting, but a line for each lets a flood push the job's real log out of the kubelet's
rotation (10 MiB) within seconds.  :class:`ThrottledLog` writes the first at once, then at
most one line per ``interval`` seconds, saying how many it stands for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

INTERVAL = 5.0  # seconds between two lines of one kind


class ThrottledLog:
    """Counts events and logs a WARNING about them at most once per ``interval`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``what``: the event, as the line names it ("node 3 dropped a malformed message")."""
        self._logger = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._last: float | None = None  # when the last line was written
        self._unlogged = 0  # events since that line
        self.total = 0

    def __call__(self, detail: object) -> None:
        """One more event; ``detail`` (the latest one's) goes into the line if one is due."""
        self.total += 1
        self._unlogged += 1
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return
        self._logger.warning(
            "%s (%d since the last line, %d in all): %s", self._what, self._unlogged, self.total, detail
        )
        self._last = now
        self._unlogged = 0
