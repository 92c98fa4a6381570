"""Stand-ins for what surrounds the runtime's decision code, shared by in-process tests.

The node's :class:`~dynaps.node.control_plane.ControlPlane` and the
:class:`~dynaps.coordinator.core.Coordinator` take their decisions without processes or
sockets; these are the pieces that take the place of the OS process, the clock and the
network around them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dynaps.wire import control, membership_deltas
from dynaps.wire.codec import decode
from dynaps.wire.protocol import COORDINATOR, DEFLATED, MAX_BODY_BYTES, MsgType, inflate


class FakeShell:
    """The OS process around a node's control plane: records what it was asked to do."""

    def __init__(self) -> None:
        self.calls: list[str] = []  # what the control plane asked of the process
        self.running = True

    def heartbeat(self) -> control.Heartbeat:
        return control.Heartbeat(role="worker", address="test://3")

    def stop_loop(self) -> None:
        self.calls.append("stop_loop")

    def tell_client_to_drain(self) -> None:
        self.calls.append("tell_client_to_drain")

    def client_running(self) -> bool:
        return self.running

    def end_client(self) -> None:
        if self.running:  # as the real one: only a program that still runs is ended
            self.calls.append("end_client")
            self.running = False


class RecordingTransport:
    """A Transport that keeps what the coordinator sends; the test plays the network.

    ``dropped`` lists the watched endpoints whose connection the test broke (what
    ZmqTransport's ``disconnected`` reports after a crash).  Memberships are followed per
    endpoint as its process would (a delta applied to what that endpoint holds, which it
    must hold: the coordinator never sends a delta to one that has nothing to apply it to);
    :meth:`take_memberships` gives the whole documents they lead to.
    """

    def __init__(self) -> None:
        self.endpoint = COORDINATOR
        self.address = "inproc://coordinator"
        self.rejected = 0
        self.last_rejected = ""
        self.sent: list[tuple[int, MsgType, dict[str, Any]]] = []
        self.addresses: dict[int, str] = {}
        self.watched: set[int] = set()
        self.dropped: list[int] = []
        self.held: dict[int, control.Membership] = {}  # each endpoint's membership
        self.memberships: list[tuple[int, control.Membership]] = []  # as each endpoint has it

    def connect(self, endpoint: int, address: str) -> None:
        self.addresses[endpoint] = address

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        self.addresses.pop(endpoint, None)
        self.watched.discard(endpoint)

    def knows(self, endpoint: int) -> bool:
        return endpoint in self.addresses

    def send(self, endpoint: int, frames: Sequence[Any]) -> None:
        msg = decode([bytes(memoryview(f)) for f in frames], [])
        assert msg.sender == COORDINATOR
        # the body as it crossed the wire (JSON), so enums must have serialised as strings
        raw = bytes(frames[1])
        body = json.loads(inflate(raw, MAX_BODY_BYTES, "body") if msg.flags & DEFLATED else raw)
        self.sent.append((endpoint, msg.type, body))
        if msg.type is MsgType.MEMBERSHIP:
            self.held[endpoint] = control.Membership.model_validate(body)
            self.memberships.append((endpoint, self.held[endpoint]))
        elif msg.type is MsgType.MEMBERSHIP_DELTA:
            base = self.held.get(endpoint)
            assert base is not None, f"a membership delta to endpoint {endpoint}, which holds none"
            delta = control.MembershipDelta.model_validate(body)
            self.held[endpoint] = membership_deltas.apply(base, delta)
            self.memberships.append((endpoint, self.held[endpoint]))

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        return None

    def close(self, linger: float = 0.0) -> None:
        self.addresses.clear()

    def watch(self, endpoint: int) -> None:
        self.watched.add(endpoint)

    def connection_events(self) -> list[tuple[int, bool]]:
        dropped, self.dropped = [e for e in self.dropped if e in self.watched], []
        return [(e, False) for e in dropped]

    def clear(self) -> None:
        """Forget what was sent (each endpoint keeps the membership it holds)."""
        self.sent.clear()
        self.memberships.clear()

    def take_memberships(self) -> list[tuple[int, control.Membership]]:
        """(endpoint, the whole membership it then held) for every MEMBERSHIP and
        MEMBERSHIP_DELTA sent since the last call, in order."""
        self.take(MsgType.MEMBERSHIP)
        self.take(MsgType.MEMBERSHIP_DELTA)
        taken, self.memberships = self.memberships, []
        return taken

    def take(self, kind: MsgType) -> list[tuple[int, dict[str, Any]]]:
        """(endpoint, body) of every ``kind`` message sent since the last take of that kind."""
        taken = [(e, body) for e, k, body in self.sent if k is kind]
        self.sent = [s for s in self.sent if s[1] is not kind]
        return taken


class Clock:
    """A monotonic clock the test moves (``clock.now += seconds``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
