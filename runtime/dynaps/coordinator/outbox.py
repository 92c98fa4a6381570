"""The coordinator's side of the network: its connections, the messages it sends, and
the membership versions it announces.

Every member has a connection (a worker's training program a second one, at its client
endpoint); a node's connection is watched, when the transport can, so that a crash is
noticed at once (:mod:`dynaps.coordinator.liveness`).  Broadcasts reach every node before
any client: a client's next request then likely meets a node that already knows what
the client knows.

A new membership version goes out as a delta (:mod:`dynaps.wire.membership_deltas`) to every
endpoint that holds the previous one, and whole to the others: a joiner, a training
process that just registered, one that asked (MEMBERSHIP_QUERY) because it missed a version.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from dynaps.coordinator.roster import Member, Roster
from dynaps.store.shardmap import ShardMap
from dynaps.wire import control, membership_deltas, messages
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
        self.announced: control.Membership | None = None  # the last version broadcast
        # whole documents of that version sent alone since (to joiners, to those who asked):
        # they may differ from ``announced`` (a node registered meanwhile), and the next
        # delta must turn each of them into the next version
        self.sent_since: list[control.Membership] = []
        self.synced: set[int] = set()  # endpoints holding one of those: a delta serves them

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
        """A new membership version for every node, then (with ``clients``) every program:
        a delta to those that hold the previous version, the whole document to the others."""
        bases = [] if self.announced is None else [self.announced, *self.sent_since]
        self.version += 1
        whole = self.membership(shard_map, preparing)
        delta = membership_deltas.diff(bases, whole)
        delta_frames = (
            None if delta is None else messages.control(MsgType.MEMBERSHIP_DELTA, COORDINATOR, delta)
        )
        whole_frames: list[Any] | None = None  # encoded once, if anyone needs it
        members = self.roster.active()
        endpoints = [m.id for m in members]
        if clients:
            endpoints += [client_of(m.id) for m in members if m.client is not None]
        else:  # the programs miss this version: the next one reaches them whole
            self.synced.difference_update(client_of(m.id) for m in members)
        for endpoint in endpoints:
            if delta_frames is not None and endpoint in self.synced:
                self.transport.send(endpoint, delta_frames)
            else:
                if whole_frames is None:
                    whole_frames = messages.control(MsgType.MEMBERSHIP, COORDINATOR, whole)
                self.transport.send(endpoint, whole_frames)
        self.synced.update(endpoints)
        self.announced, self.sent_since = whole, []

    def send_whole(self, endpoint: int, whole: control.Membership) -> None:
        """The current membership, whole, to one endpoint (a joiner, or one that asked)."""
        self.send(endpoint, MsgType.MEMBERSHIP, whole)
        if self.announced is None or whole.version != self.announced.version:
            return  # not a base of the next delta: that one goes out whole
        if whole != self.announced and all(whole != sent for sent in self.sent_since):
            self.sent_since.append(whole)
        self.synced.add(endpoint)

    def send(self, endpoint: int, kind: MsgType, body: BaseModel, req_id: int = 0) -> None:
        self.transport.send(endpoint, messages.control(kind, COORDINATOR, body, req_id))

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
        self.synced.discard(member.id)
        self.transport.connect(member.id, member.address)
        watch = getattr(self.transport, "watch", None)
        if watch is not None:
            watch(member.id)
        if member.client is not None:
            self.connect_client(member)

    def connect_client(self, member: Member) -> None:
        assert member.client is not None
        self.synced.discard(client_of(member.id))  # a program (re)started: it holds no membership
        self.transport.connect(client_of(member.id), member.client)

    def forget(self, member: Member, lost: bool = False) -> None:
        """Close the connections to a member that left or was lost.

        A lost worker's program is told first (REFUSED): its node may be stopped rather than
        dead, and the program, which updates the keys its node holds in place, must not go
        on acknowledging updates of keys the homes now take back.
        """
        self.synced.difference_update((member.id, client_of(member.id)))
        self.transport.forget(member.id)
        if member.client is None:
            return
        if lost:
            self.send(
                client_of(member.id),
                MsgType.REFUSED,
                control.Refused(nonce="", reason=f"node {member.id} was declared lost"),
            )
        self.transport.forget(client_of(member.id), linger=1.0 if lost else 0.0)

    def connection_events(self) -> list[tuple[int, bool]]:
        """Watched members whose connection dropped (False) or came back (True) since the last
        call, in order."""
        watcher = getattr(self.transport, "connection_events", None)
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
