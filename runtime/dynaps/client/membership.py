"""Joining the job and following its membership: who is in, who left, who died.

:func:`register` introduces a training process to the coordinator and waits until the
job runs.  :class:`Membership` applies each MEMBERSHIP (or MEMBERSHIP_DELTA) the
coordinator announces: it connects to new members, hands the shard map and the departed nodes to the requests
(which re-route what was parked for them and retry what died with them), notices a
restarted coordinator, which forgot the barriers and leases we wait on, and one that lists
our own node as lost (every later call raises ClusterError).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

from dynaps.client.requests import Requests
from dynaps.store.shardmap import ShardMap
from dynaps.wire import control, joining, membership_deltas, messages
from dynaps.wire.protocol import COORDINATOR, MsgType
from dynaps.wire.transport import Transport


def register(
    transport: Transport, endpoint: int, node: int, digest: str, deadline: float
) -> tuple[control.Membership, control.Welcome | None]:
    """Register with the coordinator and wait until the job runs.

    Returns the running membership and the coordinator's welcome, which names the barrier
    generation and the clock the other workers are at (None if it did not come).
    """
    nonce = secrets.token_hex(8)
    body = control.Register(
        role="client",
        address=transport.address,
        nonce=nonce,
        config_digest=digest,
        pid=os.getpid(),
        node=node,
    )
    welcomes: list[control.Welcome] = []

    def ask() -> None:
        """The REGISTER until it is answered, then the membership (the one that says the job
        runs may have been lost)."""
        if not welcomes:
            transport.send(COORDINATOR, messages.control(MsgType.REGISTER, endpoint, body))
        else:
            joining.ask_membership(transport, endpoint)

    ask()
    while True:
        msg = joining.await_coordinator(
            transport,
            {MsgType.MEMBERSHIP, MsgType.WELCOME},
            deadline,
            "the start of the job",
            nonce,
            again=ask,
        )
        if msg.type is MsgType.WELCOME:
            welcome = control.body_of(msg, control.Welcome)
            if welcome.nonce == nonce:
                welcomes.append(welcome)
        elif msg.type is MsgType.MEMBERSHIP:
            membership = control.body_of(msg, control.Membership)
            if membership.phase is control.Phase.RUNNING:
                return membership, welcomes[0] if welcomes else None


class Membership:
    """The job's members as last announced, and the coordinator's incarnation."""

    def __init__(
        self, transport: Transport, requests: Requests, num_workers: int, on_restart: Callable[[], None]
    ) -> None:
        self._transport = transport
        self._requests = requests
        self._on_restart = on_restart  # the coordinator restarted: ask again for what we wait on
        self._members: set[int] = set()
        self._incarnation = ""
        self.num_workers = num_workers
        self.follower = membership_deltas.Follower(self._ask)

    def has(self, node: int) -> bool:
        """Whether ``node`` is one of the job's members as last announced."""
        return node in self._members

    def _ask(self, version: int) -> None:
        """A version was missed: ask the coordinator for the whole membership."""
        joining.ask_membership(self._transport, self._transport.endpoint, version)

    def apply_delta(self, delta: control.MembershipDelta) -> None:
        following = self.follower.next(delta)
        if following is not None:
            self.apply(following)

    def apply(self, membership: control.Membership) -> None:
        self.follower.took(membership)
        lost = set(membership.lost)
        if self._requests.node in lost:  # others serve our node's keys now: we stop
            node = self._requests.node
            self._requests.own.lost(f"node {node} was declared lost (membership {membership.version})")
            return
        members = {info.id for info in membership.nodes}
        gone = (self._members - members) | lost
        self._members = members
        joining.connect_members(self._transport, membership)
        self.num_workers = membership.num_workers
        if membership.incarnation != self._incarnation:
            if self._incarnation:
                self._on_restart()
            self._incarnation = membership.incarnation
        self._requests.apply_membership(ShardMap.from_json(membership.shard_map), gone, lost)
