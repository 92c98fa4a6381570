"""Joining a job: waiting for the coordinator's answer, connecting to the members."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dynaps.errors import ClusterError, ProtocolError
from dynaps.wire import control, messages
from dynaps.wire.codec import decode
from dynaps.wire.protocol import COORDINATOR, NO_ENDPOINT, Message, MsgType, client_of
from dynaps.wire.transport import Transport

log = logging.getLogger(__name__)

# A REGISTER (or a MEMBERSHIP_QUERY) unanswered this long is sent again: it, or its answer,
# may have been lost with a coordinator that died before it read it (its replacement, or the
# same one, answers the copy; the coordinator knows a copy by its nonce).
AGAIN_SECONDS = 5.0


def connect_members(transport: Transport, membership: control.Membership) -> set[int]:
    """Point the transport at every node and client of the membership; returns their ids."""
    endpoints: set[int] = set()
    for info in membership.nodes:
        if info.id != transport.endpoint:
            transport.connect(info.id, info.address)
        endpoints.add(info.id)
        if info.client is not None:
            if client_of(info.id) != transport.endpoint:
                transport.connect(client_of(info.id), info.client)
            endpoints.add(client_of(info.id))
    return endpoints


def ask_membership(transport: Transport, sender: int, version: int = 0) -> None:
    """Ask the coordinator for the whole membership (MEMBERSHIP_QUERY; ``version``: the one
    held, 0 for none)."""
    query = control.MembershipQuery(version=version)
    transport.send(COORDINATOR, messages.control(MsgType.MEMBERSHIP_QUERY, sender, query))


class JoinInterruptedError(ClusterError):
    """The process was told to stop (SIGTERM) before it had joined the job."""


def await_coordinator(
    transport: Transport,
    kinds: set[MsgType],
    deadline: float,
    what: str,
    nonce: str,
    stopped: Callable[[], bool] = lambda: False,
    again: Callable[[], None] | None = None,
) -> Message:
    """Wait for one of ``kinds`` from the coordinator; other messages are dropped.

    Only the refusal of this process's own registration (``nonce``) makes it give up, and
    a SHUTDOWN only once it has an endpoint id: until then it accepts messages for any
    destination (it does not know its own), so an authentic answer to another process,
    captured and replayed here, would otherwise stop it (docs/security.md).

    ``stopped`` is asked at least every half second: a pod deleted while its node waits
    for a coordinator that is itself gone must not wait out the deadline.  ``again`` sends
    the question again, every :data:`AGAIN_SECONDS` without the answer.
    """
    again_at = time.monotonic() + AGAIN_SECONDS
    while True:
        if stopped():
            raise JoinInterruptedError(f"stopped while waiting for {what} from the coordinator")
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            raise ClusterError(f"timed out waiting for {what} from the coordinator")
        if again is not None and now >= again_at:
            again()
            again_at = now + AGAIN_SECONDS
        frames = transport.recv(timeout=min(remaining, 0.5))
        if frames is None:
            continue
        try:
            msg = decode(frames, [])
        except ProtocolError as exc:
            log.debug("ignored before start-up: %s", exc)
            continue
        if msg.sender != COORDINATOR:
            continue
        if msg.type is MsgType.REFUSED:
            refused = control.body_of(msg, control.Refused)
            if refused.nonce != nonce:
                log.debug("ignored a refusal of another registration")
                continue
            raise ClusterError(f"the coordinator refused this process: {refused.reason}")
        if msg.type is MsgType.SHUTDOWN:
            if transport.endpoint == NO_ENDPOINT:
                log.debug("ignored a shutdown for another endpoint")
                continue
            reason = control.body_of(msg, control.Shutdown).reason
            raise ClusterError(f"the job ended before this node started: {reason}")
        if msg.type in kinds:
            return msg
