"""The coordinator's side of the network: its connections, the messages it sends, and
the membership versions it announces.

Every member has a connection (a worker's training program a second one, at its client
endpoint); a node's connection is watched, when the transport can, so that a crash is
noticed at once (:mod:`dynaps.coordinator.liveness`).  Broadcasts reach every node before
any client: a client's next request then likely meets a node that already knows what
the client knows.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from pydantic import BaseModel

from dynaps.coordinator.roster import Member, Roster
from dynaps.store.shardmap import ShardMap
from dynaps.wire import control, messages
from dynaps.wire.protocol import COORDINATOR, MsgType, client_of
from dynaps.wire.transport import Transport

log = logging.getLogger(__name__)

# How the coordinator's parts send a control message: to an endpoint, a type, its body.
Send = Callable[[int, MsgType, BaseModel], None]

REFUSED_ENDPOINT = -2  # a temporary endpoint id for answering a refused registration or a lost node


class Outbox:
    def __init__(self, transport: Transport, roster: Roster) -> None:
        self.transport = transport
        self.roster = roster
        self.version = 0  # of the membership: every announcement raises it
        self.incarnation = secrets.token_hex(4)  # changes when the coordinator restarts
        self.fenced: set[int] = set()  # lost nodes told so (logged once each)

    def membership(self, shard_map: ShardMap, preparing: bool) -> control.Membership:
        """The current membership (``preparing``: the nodes are still building their stores)."""
        return control.Membership(
            version=self.version,
            phase=control.Phase.PREPARE if preparing else control.Phase.RUNNING,
            nodes=self.roster.infos(),
            shard_map=shard_map.to_json(),
            num_workers=len(self.roster.active("worker")),
            lost=list(self.roster.lost),
            incarnation=self.incarnation,
        )

    def announce(self, shard_map: ShardMap, preparing: bool, clients: bool = True) -> None:
        """A new membership version for every node, then (with ``clients``) every program."""
        self.version += 1
        self.broadcast(MsgType.MEMBERSHIP, self.membership(shard_map, preparing), clients)

    def send(self, endpoint: int, kind: MsgType, body: BaseModel) -> None:
        self.transport.send(endpoint, messages.control(kind, COORDINATOR, body))

    def broadcast(self, kind: MsgType, body: BaseModel, clients: bool = True) -> None:
        """To every node, then (with ``clients``) every attached training program."""
        frames = messages.control(kind, COORDINATOR, body)  # encoded once for everyone
        members = self.roster.active()
        for member in members:
            self.transport.send(member.id, frames)
        if clients:
            for member in members:
                if member.client is not None:
                    self.transport.send(client_of(member.id), frames)

    def connect(self, member: Member) -> None:
        """Open (and watch) the connection to a member, and to its program if attached."""
        self.transport.connect(member.id, member.address)
        watch = getattr(self.transport, "watch", None)
        if watch is not None:
            watch(member.id)
        if member.client is not None:
            self.connect_client(member)

    def connect_client(self, member: Member) -> None:
        assert member.client is not None
        self.transport.connect(client_of(member.id), member.client)

    def forget(self, member: Member) -> None:
        """Close the connections to a member that left or was lost."""
        self.transport.forget(member.id)
        if member.client is not None:
            self.transport.forget(client_of(member.id))

    def disconnected(self) -> list[int]:
        """Watched members whose connection dropped since the last call."""
        watcher = getattr(self.transport, "disconnected", None)
        return list(watcher()) if watcher is not None else []

    def refuse(self, reg: control.Register, reason: str) -> None:
        """Answer a registration that is not admitted (it has no endpoint id)."""
        log.error("refused %s at %s: %s", reg.role, reg.address, reason)
        self._refuse_at(reg.address, control.Refused(nonce=reg.nonce, reason=reason))

    def fence(self, node: int, address: str) -> None:
        """Tell a node declared lost, which speaks again (it was paused, not dead), that it
        is no longer a member: it exits rather than serve keys that others now serve."""
        if node not in self.fenced:
            self.fenced.add(node)
            log.warning("node %d was declared lost but speaks again: told to exit", node)
        self._refuse_at(address, control.Refused(nonce="", reason=f"node {node} was declared lost"))

    def _refuse_at(self, address: str, refused: control.Refused) -> None:
        """Send REFUSED to an address that has no endpoint id of its own."""
        self.transport.connect(REFUSED_ENDPOINT, address)
        self.send(REFUSED_ENDPOINT, MsgType.REFUSED, refused)
        self.transport.forget(REFUSED_ENDPOINT, linger=1.0)
