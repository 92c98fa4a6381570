"""After a gap in its loop, a node serves no data until the coordinator confirms it is still
a member.

A node whose loop did not run for a while (SIGSTOP, a hang, a machine starved of CPU) may
have been declared lost meanwhile: the homes took its keys back, its clients sent their
requests again elsewhere, and the coordinator, which forgot it, tells it nothing.  What
waited in its inbox would be read first: served, a request would be applied to keys
that no longer count and answered, and a client that read that answer before the loss
would never send it again (the loss is silent).  So after a gap longer than half the
coordinator's silence limit (:func:`dynaps.contract.silence_limit_seconds`) the node holds
every data message and asks: a heartbeat, which a node declared lost is REFUSED for (it is
then fenced and serves nothing), then a PING, which the coordinator answers (PONG, with the
ping's id) only for a member, after the heartbeat that reset the node's silence.  What
was held is served, in order, once the PONG arrives, or after :data:`WAKE_LIMIT` seconds
without an answer (the coordinator is away: a new one adopts the node).

Decisions only: :class:`~dynaps.node.control_plane.ControlPlane` sends the questions and
handles the answers, the node's loop feeds it every turn and every message.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from dynaps.wire.codec import peek
from dynaps.wire.protocol import CONTROL_TYPES

WAKE_RETRY = 0.5  # seconds between questions while no answer came
WAKE_LIMIT = 10.0  # seconds without an answer after which the node serves what it held

Frames = Sequence[Any]


class Waking:
    """Whether the node holds its data messages after a gap in its loop, and which."""

    def __init__(self, gap: float) -> None:
        self.gap = gap  # seconds between two turns of the loop that count as a gap
        self.last_turn: float | None = None
        self.since: float | None = None  # holding since (None: serving)
        self.asked_at = 0.0
        self.nonce = 0  # the id of the last PING: only its PONG answers
        self.held: list[Frames] = []
        self.released: list[Frames] = []

    @property
    def holding(self) -> bool:
        return self.since is not None

    def turn(self, now: float) -> bool:
        """The loop turns at ``now``; True when the last turn is more than the gap ago: the
        node then holds data messages until :meth:`confirmed` (the caller asks)."""
        last, self.last_turn = self.last_turn, now
        if last is None or now - last <= self.gap or self.holding:
            return False
        self.since = now
        return True

    def ask(self, now: float) -> int:
        """A question goes out now: the id its PING carries."""
        self.asked_at = now
        self.nonce = secrets.randbits(62) + 1
        return self.nonce

    def admit(self, frames: Frames) -> bool:
        """Whether a message may be handled now; a data message is held while holding."""
        if not self.holding:
            return True
        peeked = peek(frames)
        if peeked is None or peeked[0] in CONTROL_TYPES:
            return True  # control (the answer among them); a malformed one is dropped as before
        self.held.append(frames)
        return False

    def confirmed(self, req_id: int) -> bool:
        """A PONG from the coordinator: True if it answers the last question (serve again)."""
        if not self.holding or req_id != self.nonce:
            return False
        self.release()
        return True

    def release(self) -> None:
        """Serve again, what was held first."""
        self.since = None
        self.released.extend(self.held)
        self.held = []

    def drop(self) -> None:
        """The node was fenced: what it held is never served."""
        self.held = []
        self.released = []

    def take_released(self) -> list[Frames]:
        released, self.released = self.released, []
        return released
