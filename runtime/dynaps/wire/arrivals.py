"""What every transport does with a message that arrives: its MAC checked
(:mod:`dynaps.wire.auth`), or the message dropped, counted and reported, never returned."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dynaps.errors import ProtocolError
from dynaps.throttled_log import ThrottledLog
from dynaps.wire.auth import Authenticator


class CheckedArrivals:
    """The part of a transport that checks what arrives (both transports derive from it)."""

    def _start_checking(self, endpoint: int, key: bytes, log: logging.Logger) -> None:
        self.endpoint = endpoint
        self.auth = Authenticator(key)
        self.rejected = 0  # messages dropped on arrival (authentication, replay)
        self.last_rejected = ""  # why the latest dropped message was dropped (for errors)
        # the node points this at its counter of malformed messages; throttled either way
        self.on_rejected: Callable[[Exception], None] = ThrottledLog(log, "dropped an incoming message")

    def _checked(self, frames: list[Any]) -> list[Any] | None:
        """``frames`` without their trailer if authentic, else None (dropped and counted)."""
        try:
            return self.auth.verify(self.endpoint, frames)
        except ProtocolError as exc:
            self.rejected += 1
            self.last_rejected = str(exc)
            self.on_rejected(exc)
            return None
