"""The /status document the coordinator publishes, and when it is rebuilt.

Rebuilding it for every heartbeat took three quarters of the coordinator's time at 1,000
nodes, and ten times a second after heartbeats alone still a tenth (bench/README.md).  So
the coordinator marks it stale when something it shows may have changed (a message that is
not a member's heartbeat, a command, a loss), and its loop rebuilds it only for a reader
(:mod:`dynaps.coordinator.status_reads`): when stale, or :data:`STATUS_SECONDS` old.  What
goes into it is the coordinator's to say (``build``); this module only keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# how old /status may be when read, if no message but heartbeats came since it was built (what
# only time changes in it: timers of the tick, how long a silent node has been silent)
STATUS_SECONDS = 0.1


class PublishedStatus:
    """The last /status document built (``doc``, replaced whole: any thread may read it)."""

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build
        self.doc: dict[str, Any] = {}
        self.stale = False  # a message (not a member's heartbeat), a command or a loss came since
        self.built = 0.0  # when publish last rebuilt it (the loop's clock)

    def publish(self, now: float | None = None) -> None:
        """Rebuild the document for a reader if it is stale or :data:`STATUS_SECONDS` old
        (``now``: the loop's monotonic clock; None: rebuild at once)."""
        if not self.stale and now is not None and now - self.built < STATUS_SECONDS:
            return
        self.refresh()
        self.built = now if now is not None else 0.0

    def refresh(self) -> None:
        """Rebuild the document now."""
        self.doc = self._build()  # published whole: the HTTP thread reads it
        self.stale = False
