"""Simulated dynaps nodes for the control-plane scale harness (``bench/scale.py``): many per process.

A helper process runs hundreds of simulated nodes (servers, workers and each worker's training
process, the *client*). Each has what a real one puts on the wire: its own
:mod:`dynaps.wire.tcp_transport` (a listening socket on 127.0.0.1, a connection per peer, the
job's MAC on every message; ZeroMQ's PULL inbox and PUSH sockets with
``DYNAPS_TRANSPORT=zmq``), and the real control messages of :mod:`dynaps.wire.messages`:

* REGISTER (with the config digest), WELCOME, MEMBERSHIP (prepare) -> READY, then the client's
  REGISTER, as :class:`dynaps.node.process.NodeProcess` and ``dynaps.client.membership`` do;
* MEMBERSHIP_DELTA applied to the membership the endpoint holds
  (:func:`dynaps.wire.membership_deltas.apply`), or MEMBERSHIP_QUERY when it does not follow;
* HEARTBEAT every ``heartbeat_interval_ms`` once READY (the body a real node sends);
* migrations: MIGRATE_OUT -> one SHARD_COPY (flag FINAL) of the shards' keys to the target ->
  MIGRATE_READY from the target (a real source pre-copies in chunks then sends the delta: for
  the small shards simulated here that is one part);
* holdings: a worker's training process, once the job runs, says which shards it will
  localize keys of (HOLDING, ``SCALE_HELD_SHARDS`` shards per worker, drawn from its rank) and
  counts the coordinator's HOLDING_NOTED, as ``dynaps.client.holdings`` does before a localize;
* recoveries: RECOVER -> OWNERS_QUERY to the holders it names (every node of the membership
  when it names none, as a coordinator that adopted the job does) -> two OWNERS each ->
  RECOVERED; every node remembers which recoveries asked it (``holders`` reports them);
* drains: DRAIN -> LEAVE; a server sends LEFT once no shard is homed on it any more.

What it leaves out, and why: no tables, no data requests; the node-to-node mesh is opened
lazily (a real node connects to every member and client on every membership: N^2 sockets
in all, which cannot fit on one machine at N = 1,000; the harness says so). A MEMBERSHIP or
MEMBERSHIP_DELTA body is parsed and applied (pydantic, as the real node does) once per
helper process, not once per receiver: every receiver gets the same bytes, and the real
per-node cost is measured apart by ``bench/scale_probes.py``.

The helper takes JSON commands, one per line, on stdin and answers each with one JSON line
on stdout (no pickle): ``add``, ``counters``, ``reached``, ``kill``, ``holders``, ``stop``.
"""

from __future__ import annotations

import collections
import heapq
import json
import os
import resource
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from dynaps.config import job_secret, transport_kind
from dynaps.contract import RuntimeConfig, secret
from dynaps.errors import ProtocolError
from dynaps.store.shardmap import ShardMap, shard_of
from dynaps.store.table_store import NOT_MOVING, layout_of
from dynaps.store.updaters import num_states
from dynaps.wire import codec, control, membership_deltas, messages
from dynaps.wire.protocol import COORDINATOR, FINAL, HEADER, MsgType, TableLayout, client_of
from dynaps.wire.tcp_transport import TcpTransport
from dynaps.wire.transport import JobTransport, message_bound
from dynaps.wire.zmq_transport import ZmqTransport

POLL_MS = 10  # the loop's longest sleep: heartbeats leave in batches at most this late
DRAIN_BATCH = 200  # messages taken from one inbox per turn, so one flood cannot starve the rest
LEAVE_LINGER = 1.0  # seconds a node that left keeps its sockets (as dynaps.node.drain)
MAX_SOCKETS = 65535  # the helper's zmq context: hundreds of endpoints, several sockets each
SUMMARIES_KEPT = 64  # parsed memberships and deltas remembered (by body bytes)
HELD_SHARDS_ENV = "SCALE_HELD_SHARDS"  # shards each simulated worker's program localizes keys of


@dataclass
class Summary:
    """What the simulation needs of one MEMBERSHIP (parsed once per helper)."""

    version: int
    phase: str
    ready: dict[int, bool]  # node id -> ready
    addresses: dict[int, str]  # endpoint id (node or client) -> address
    lost: frozenset[int]
    homes: frozenset[int]  # nodes that home some shard
    epoch: int
    whole: control.Membership  # what a delta applies to


def summarise(m: control.Membership) -> Summary:
    addresses: dict[int, str] = {}
    for info in m.nodes:
        addresses[info.id] = info.address
        if info.client is not None:
            addresses[client_of(info.id)] = info.client
    return Summary(
        m.version,
        str(m.phase),
        {info.id: info.ready for info in m.nodes},
        addresses,
        frozenset(m.lost),
        frozenset(ShardMap.from_json(m.shard_map).servers()),
        int(m.shard_map["epoch"]),
        m,
    )


@dataclass
class Endpoint:
    """One inbox: a simulated node, or a worker's simulated training process."""

    name: str
    role: str  # "server", "worker" or "client"
    transport: JobTransport
    rank: int | None = None
    node: int = 0  # the node id from WELCOME (a client: its node's)
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    registered_at: float = 0.0
    welcomed_at: float = 0.0
    running_at: float = 0.0  # first MEMBERSHIP with phase running
    ready_sent: bool = False
    state: str = "registering"  # registering, ready, draining, left, dead, fenced, stopped
    summary: Summary | None = None
    arrivals: list[tuple[float, Summary]] = field(default_factory=list)
    bytes_in: int = 0
    bytes_from_coordinator: int = 0
    outgoing: set[int] = field(default_factory=set)  # migrations this server sends
    rebuilds: dict[int, set[int]] = field(default_factory=dict)  # recovery id -> nodes to answer
    recoveries: dict[int, list[int]] = field(default_factory=dict)  # recovery id -> its shards (home)
    # recovery id -> [RECOVER received, RECOVERED sent] (time.monotonic(), at the home)
    rebuild_times: dict[int, list[float]] = field(default_factory=dict)
    queried_by: list[int] = field(default_factory=list)  # recovery ids whose OWNERS_QUERY came here
    holding: list[int] = field(default_factory=list)  # a client: the shards it said it may hold
    noted: bool = False  # a client: the coordinator answered its HOLDING
    owners_seen: dict[int, collections.Counter[int]] = field(default_factory=dict)
    next_heartbeat: float = 0.0
    heartbeat_key: tuple[int, bool] = (-1, False)
    heartbeat_frames: list[Any] = field(default_factory=list)
    left_at: float = 0.0
    client: Endpoint | None = None  # a worker's training process

    @property
    def endpoint(self) -> int:
        return client_of(self.node) if self.role == "client" else self.node


class Helper:
    """The simulated endpoints of one process and the loop that serves them."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.key = secret.wire_key(job_secret())
        self.digest = control.config_digest(config)
        self.context: zmq.Context[Any] = zmq.Context()
        self.context.set(zmq.MAX_SOCKETS, MAX_SOCKETS)
        table = config.tables[0]
        self.layouts: list[TableLayout] = [layout_of(t, num_states(t.updater)) for t in config.tables]
        self.max_bytes = message_bound(self.layouts)
        all_keys = np.arange(table.num_keys, dtype=np.int64)
        policy = config.rebalance_policy
        self.key_shard = shard_of(all_keys, table.num_keys, policy.num_shards, policy.partition)
        self.dim = table.dim
        self.dtype = np.dtype(table.dtype)
        self.heartbeat_seconds = config.fault_tolerance.heartbeat_interval_ms / 1000
        self.held_shards = min(int(os.environ.get(HELD_SHARDS_ENV, "0")), policy.num_shards)
        self.kind = transport_kind()
        if self.kind == "tcp":  # a listening socket, an epoll and connections per endpoint
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.endpoints: list[Endpoint] = []
        self.by_socket: dict[Any, Endpoint] = {}  # by what the poller returns: a zmq inbox or a descriptor
        self.unread: list[Any] = []  # TCP transports with messages parsed and not handled yet
        self.poller = zmq.Poller()
        self.poller.register(sys.stdin.fileno(), zmq.POLLIN)
        self.summaries: collections.OrderedDict[bytes, tuple[int | None, Summary]] = collections.OrderedDict()
        self.heartbeats: list[tuple[float, int, Endpoint]] = []  # heap: (due, tie-break, node)
        self.msgs_in: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.done = False
        self._stdin = b""

    # ------------------------------------------------------------------ endpoints

    def _endpoint(self, name: str, role: str, rank: int | None) -> Endpoint:
        transport: JobTransport
        if self.kind == "zmq":
            transport = ZmqTransport(
                -1, self.key, "127.0.0.1", context=self.context, max_message_bytes=self.max_bytes
            )
        else:
            transport = TcpTransport(-1, self.key, "127.0.0.1", max_message_bytes=self.max_bytes)
        transport.connect(COORDINATOR, f"tcp://{self.config.coordinator}")
        transport.on_rejected = lambda exc: self.errors.append(f"{name}: rejected a message: {exc}")
        ep = Endpoint(name, role, transport, rank)
        self.endpoints.append(ep)
        self.by_socket[_waitable(transport)] = ep
        self.poller.register(_waitable(transport), zmq.POLLIN)
        return ep

    def add(self, nodes: list[dict[str, Any]]) -> dict[str, Any]:
        """Start nodes: each sends its REGISTER now; returns when they were sent."""
        started = []
        for spec in nodes:
            ep = self._endpoint(str(spec["name"]), str(spec["role"]), spec.get("rank"))
            started.append(ep)
        sent_at = time.monotonic()
        for ep in started:
            self._register(ep)
        return {"sent_at": sent_at, "count": len(started)}

    def _register(self, ep: Endpoint) -> None:
        body = control.Register(
            role=ep.role,  # "server", "worker" or "client": checked by pydantic
            address=ep.transport.address,
            nonce=ep.nonce,
            config_digest=self.digest,
            pid=os.getpid(),
            name=ep.name if ep.role != "client" else "",
            rank=ep.rank,
            node=ep.node if ep.role == "client" else None,
        )
        sender = ep.endpoint if ep.role == "client" else -1
        ep.registered_at = time.monotonic()
        ep.transport.send(COORDINATOR, messages.control(MsgType.REGISTER, sender, body))

    def _send_control(self, ep: Endpoint, dest: int, kind: MsgType, body: Any) -> None:
        self._to(ep, dest, messages.control(kind, ep.endpoint, body))

    def _to(self, ep: Endpoint, dest: int, frames: list[Any]) -> None:
        """Send to ``dest``, connecting first if needed (the lazy mesh: see the docstring)."""
        if dest != COORDINATOR and not ep.transport.knows(dest):
            address = ep.summary.addresses.get(dest) if ep.summary is not None else None
            if address is None:
                self.errors.append(f"{ep.name}: no address for endpoint {dest}")
                return
            ep.transport.connect(dest, address)
        ep.transport.send(dest, frames)

    def _close(self, ep: Endpoint, state: str) -> None:
        if ep.state in ("dead", "stopped", "fenced", "closed"):
            return
        ep.state = state
        self.poller.unregister(_waitable(ep.transport))
        del self.by_socket[_waitable(ep.transport)]
        ep.transport.close(linger=0.0)

    # ------------------------------------------------------------------ receiving

    def _summary(self, ep: Endpoint, frames: list[Any]) -> Summary | None:
        """The membership a MEMBERSHIP or MEMBERSHIP_DELTA gives ``ep`` (None: not applied).

        Every receiver of one body gets the same result (a delta lists absolute values, so it
        makes the same membership of every base it was made for): computed once per helper,
        remembered with the delta's base (None: a whole membership)."""
        body = bytes(frames[1])
        known = self.summaries.get(body)
        if known is None:
            try:
                msg = codec.decode(frames, self.layouts)
            except ProtocolError as exc:
                self.errors.append(f"bad membership: {exc}")
                return None
            if msg.type is MsgType.MEMBERSHIP:
                known = (None, summarise(control.body_of(msg, control.Membership)))
            else:
                delta = control.body_of(msg, control.MembershipDelta)
                if ep.summary is None or delta.base != ep.summary.version:
                    self._ask(ep, delta.version)
                    return None
                try:
                    known = (delta.base, summarise(membership_deltas.apply(ep.summary.whole, delta)))
                except ProtocolError as exc:
                    self.errors.append(f"{ep.name}: {exc}")
                    self._ask(ep, delta.version)
                    return None
            self.summaries[body] = known
            if len(self.summaries) > SUMMARIES_KEPT:
                self.summaries.popitem(last=False)
        base, summary = known
        if base is not None and (ep.summary is None or ep.summary.version != base):
            self._ask(ep, summary.version)
            return None
        return summary

    def _ask(self, ep: Endpoint, seen: int) -> None:
        """``ep`` missed a version (the harness counts these: none is expected)."""
        held = ep.summary.version if ep.summary is not None else 0
        self.errors.append(f"{ep.name}: holds membership {held}, got a delta to {seen}: asks for it")
        self._send_control(ep, COORDINATOR, MsgType.MEMBERSHIP_QUERY, control.MembershipQuery(version=held))

    def _receive(self, ep: Endpoint, frames: list[Any], now: float) -> None:
        size = sum(len(f) for f in frames)
        ep.bytes_in += size
        kind = MsgType(HEADER.unpack_from(frames[0])[1])
        sender = int(HEADER.unpack_from(frames[0])[4])
        if sender == COORDINATOR:
            ep.bytes_from_coordinator += size
        self.msgs_in[kind.name] += 1
        if kind in (MsgType.MEMBERSHIP, MsgType.MEMBERSHIP_DELTA):
            summary = self._summary(ep, frames)
            if summary is not None:
                self._on_membership(ep, summary, now)
            return
        try:
            msg = codec.decode(frames, self.layouts)
        except ProtocolError as exc:
            self.errors.append(f"{ep.name}: {exc}")
            return
        if kind is MsgType.WELCOME:
            welcome = control.body_of(msg, control.Welcome)
            if welcome.nonce == ep.nonce:
                ep.node = welcome.node
                ep.rank = welcome.rank
                ep.transport.endpoint = ep.endpoint
                ep.welcomed_at = now
        elif kind is MsgType.REFUSED:
            self.errors.append(f"{ep.name} refused: {control.body_of(msg, control.Refused).reason}")
            self._close(ep, "fenced")
        elif kind is MsgType.SHUTDOWN:
            self._close(ep, "stopped")
        elif kind is MsgType.MIGRATE_OUT:
            self._migrate_out(ep, control.body_of(msg, control.MigrateOut))
        elif kind is MsgType.SHARD_COPY:
            if msg.flags & FINAL:
                self._send_control(
                    ep, COORDINATOR, MsgType.MIGRATE_READY, control.MigrateReady(id=msg.req_id)
                )
        elif kind is MsgType.MIGRATE_ABORT:
            ep.outgoing.discard(control.body_of(msg, control.MigrateAbort).id)
        elif kind is MsgType.RECOVER:
            self._recover(ep, control.body_of(msg, control.Recover))
        elif kind is MsgType.OWNERS_QUERY:
            query = control.body_of(msg, control.OwnersQuery)
            ep.queried_by.append(query.id)
            empty = np.zeros(0, dtype=np.int64)  # a simulated node holds and expects no key of them
            for table in range(len(self.layouts)):
                for which in (messages.OWNERS_HELD, messages.OWNERS_EXPECTED):
                    owners = messages.owners(ep.node, query.id, table, empty, which)
                    self._to(ep, msg.sender, codec.encode(owners))
        elif kind is MsgType.OWNERS:
            self._on_owners(ep, msg.req_id, msg.sender)
        elif kind is MsgType.DRAIN:
            if ep.state == "ready":
                ep.state = "draining"
                reason = control.body_of(msg, control.Drain).reason
                self._send_control(ep, COORDINATOR, MsgType.LEAVE, control.Leave(reason=reason))
                self._maybe_leave(ep, now)
        elif kind is MsgType.HOLDING_NOTED:
            ep.noted = True
        elif kind in (MsgType.CLOCK_MIN, MsgType.BARRIER_DONE, MsgType.LEASE_REPLY):
            pass  # not asked for here
        else:
            self.errors.append(f"{ep.name}: unexpected {kind.name}")

    def _on_membership(self, ep: Endpoint, summary: Summary, now: float) -> None:
        ep.arrivals.append((now, summary))
        ep.summary = summary
        if ep.role == "client":
            if summary.phase == "running" and not ep.running_at:
                ep.running_at = now
                self._hold(ep)
            return
        if ep.node in summary.lost or (ep.node not in summary.ready and ep.state != "left"):
            self.errors.append(f"{ep.name}: fenced by membership {summary.version}")
            self._close(ep, "fenced")
            return
        if summary.phase == "running" and not ep.running_at:
            ep.running_at = now
        if not ep.ready_sent:
            # the real node builds its stores here, then answers READY
            ep.ready_sent = True
            ep.state = "ready"
            self._send_control(ep, COORDINATOR, MsgType.READY, control.Ready(version=summary.version))
            ep.next_heartbeat = now + self.heartbeat_seconds * (0.2 + 0.8 * secrets.randbelow(1000) / 1000)
            heapq.heappush(self.heartbeats, (ep.next_heartbeat, id(ep), ep))
            if ep.role == "worker":  # its training process attaches and registers
                client = self._endpoint(f"{ep.name}/client", "client", None)
                client.node = ep.node
                client.transport.endpoint = client.endpoint
                ep.client = client
                self._register(client)
        if ep.state == "draining":
            self._maybe_leave(ep, now)

    def _hold(self, ep: Endpoint) -> None:
        """A program about to localize keys of a few shards says so first (HOLDING)."""
        if not self.held_shards or ep.rank is None:
            return
        rng = np.random.default_rng(ep.rank)
        shards = rng.choice(self.config.rebalance_policy.num_shards, self.held_shards, replace=False)
        ep.holding = sorted(int(s) for s in shards)
        self._send_control(ep, COORDINATOR, MsgType.HOLDING, control.Holding(id=1, shards=ep.holding))

    def _maybe_leave(self, ep: Endpoint, now: float) -> None:
        """A draining node leaves once nothing is homed on it (a worker at once: its client ends)."""
        summary = ep.summary
        if summary is None or ep.outgoing or (ep.role == "server" and ep.node in summary.homes):
            return
        self._send_control(ep, COORDINATOR, MsgType.LEFT, control.Empty())
        ep.state = "left"
        ep.left_at = now

    def _migrate_out(self, ep: Endpoint, order: control.MigrateOut) -> None:
        ep.outgoing.add(order.id)
        keys = np.flatnonzero(np.isin(self.key_shard, order.shards)).astype(np.int64)
        owner = np.full(len(keys), ep.node, dtype=np.int16)
        moving = np.full(len(keys), NOT_MOVING, dtype=np.int16)
        values = np.zeros((len(keys), self.dim), dtype=self.dtype)
        states = tuple(np.zeros_like(values) for _ in range(self.layouts[0].num_states))
        copy = messages.shard_copy(ep.node, order.id, 0, keys, owner, moving, values, states, final=True)
        self._to(ep, order.target, codec.encode(copy))
        ep.outgoing.discard(order.id)  # frozen and sent: it waits for the commit only

    def _recover(self, ep: Endpoint, order: control.Recover) -> None:
        assert ep.summary is not None
        others = {n for n in ep.summary.ready if n != ep.node}
        if order.holders is not None:  # targeted: the coordinator knows who may hold keys
            others &= set(order.holders)
        ep.recoveries[order.id] = order.shards
        ep.rebuild_times[order.id] = [time.monotonic(), 0.0]
        ep.rebuilds[order.id] = others
        ep.owners_seen[order.id] = collections.Counter()
        query = control.OwnersQuery(id=order.id, shards=order.shards)
        for node in sorted(others):
            self._send_control(ep, node, MsgType.OWNERS_QUERY, query)
        if not others:
            self._recovered(ep, order.id)

    def _on_owners(self, ep: Endpoint, recovery: int, sender: int) -> None:
        waiting = ep.rebuilds.get(recovery)
        if waiting is None:
            return
        seen = ep.owners_seen[recovery]
        seen[sender] += 1
        if seen[sender] == 2 * len(self.layouts):  # held and expected, per table
            waiting.discard(sender)
        if not waiting:
            self._recovered(ep, recovery)

    def _recovered(self, ep: Endpoint, recovery: int) -> None:
        ep.rebuild_times[recovery][1] = time.monotonic()
        del ep.rebuilds[recovery]
        del ep.owners_seen[recovery]
        self._send_control(ep, COORDINATOR, MsgType.RECOVERED, control.Recovered(id=recovery, keys=0))

    # ------------------------------------------------------------------ time

    def _heartbeat(self, ep: Endpoint) -> None:
        epoch = ep.summary.epoch if ep.summary is not None else 0
        key = (epoch, ep.state == "draining")
        if key != ep.heartbeat_key:  # the body a real node sends, encoded again when it changes
            body = control.Heartbeat(
                role=ep.role,  # a node: "server" or "worker", checked by pydantic
                address=ep.transport.address,
                name=ep.name,
                rank=ep.rank,
                client=ep.client.transport.address if ep.client is not None else None,
                epoch=epoch,
                draining=key[1],
            )
            ep.heartbeat_frames = messages.control(MsgType.HEARTBEAT, ep.node, body)
            ep.heartbeat_key = key
        ep.transport.send(COORDINATOR, ep.heartbeat_frames)

    def _chores(self, now: float) -> None:
        while self.heartbeats and self.heartbeats[0][0] <= now:
            _due, tie, ep = heapq.heappop(self.heartbeats)
            if ep.state not in ("ready", "draining"):
                continue  # left, lost or stopped: silent from now on
            self._heartbeat(ep)
            ep.next_heartbeat += self.heartbeat_seconds
            if ep.next_heartbeat < now:  # the loop fell behind: do not send a burst to catch up
                ep.next_heartbeat = now + self.heartbeat_seconds
            heapq.heappush(self.heartbeats, (ep.next_heartbeat, tie, ep))
        for ep in self.endpoints:
            if ep.state == "left" and now - ep.left_at >= LEAVE_LINGER:
                self._close(ep, "closed")
                if ep.client is not None:
                    self._close(ep.client, "closed")

    # ------------------------------------------------------------------ commands

    def counters(self) -> dict[str, Any]:
        live = [ep for ep in self.endpoints if ep.state not in ("dead", "closed", "stopped", "fenced")]
        nodes = [ep for ep in self.endpoints if ep.role != "client"]
        return {
            "endpoints": len(live),
            "nodes": len(nodes),
            "welcomed": sum(1 for ep in nodes if ep.welcomed_at),
            "last_welcome": max((ep.welcomed_at for ep in nodes), default=0.0),
            "running": sum(1 for ep in self.endpoints if ep.running_at),
            "last_running": max((ep.running_at for ep in self.endpoints), default=0.0),
            "clients": sum(1 for ep in self.endpoints if ep.role == "client"),
            "bytes_in": sum(ep.bytes_in for ep in self.endpoints),
            "bytes_from_coordinator": sum(ep.bytes_from_coordinator for ep in self.endpoints),
            "msgs_in": dict(self.msgs_in),
            "sockets": sum(2 + ep.transport.open_connections for ep in live),  # inbox, monitor-free pushes
            "errors": self.errors[-20:],
            "error_count": len(self.errors),
            "cpu": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
            "ids": {ep.name: ep.node for ep in nodes},
        }

    def reached(self, node: int, cond: str, since: float) -> dict[str, Any]:
        """How many live endpoints (``node`` itself left out) received, after ``since``, a
        membership in which ``node`` is ``cond`` ("ready", "absent" or "lost"); the first and last
        arrivals."""
        total = reached = 0
        first, last = float("inf"), 0.0
        for ep in self.endpoints:
            if ep.state in ("dead", "closed", "stopped", "fenced") or ep.node == node or not ep.node:
                continue
            total += 1
            for at, summary in ep.arrivals:
                if at < since:
                    continue
                if cond == "ready":
                    hit = summary.ready.get(node, False)
                elif cond == "absent":
                    hit = node not in summary.ready and node not in summary.lost
                else:
                    hit = node in summary.lost
                if hit:
                    reached += 1
                    first, last = min(first, at), max(last, at)
                    break
        return {"total": total, "reached": reached, "first": first if reached else 0.0, "last": last}

    def holders(self) -> dict[str, Any]:
        """For the harness's check of targeted recovery: the shards each worker's program said
        it may hold (and whether that was noted), the recoveries each node was asked by, and
        each recovery's shards (from its home)."""
        return {
            "held": {str(ep.node): ep.holding for ep in self.endpoints if ep.role == "client" and ep.holding},
            "noted": sum(1 for ep in self.endpoints if ep.role == "client" and ep.noted),
            "asked": {str(ep.node): ep.queried_by for ep in self.endpoints if ep.queried_by},
            "roles": {str(ep.node): ep.role for ep in self.endpoints if ep.role != "client" and ep.node},
            "recoveries": {str(rid): s for ep in self.endpoints for rid, s in ep.recoveries.items()},
            "rebuild_times": {str(rid): t for ep in self.endpoints for rid, t in ep.rebuild_times.items()},
        }

    def kill(self, name: str) -> dict[str, Any]:
        """A crash as the coordinator sees it: the node's connections close, its heartbeats stop."""
        for ep in self.endpoints:
            if ep.name == name and ep.state not in ("dead", "closed"):
                at = time.monotonic()
                self._close(ep, "dead")
                if ep.client is not None:
                    self._close(ep.client, "dead")
                return {"at": at, "node": ep.node}
        return {"error": f"no live node {name}"}

    def command(self, line: bytes) -> dict[str, Any]:
        request = json.loads(line)
        cmd = request.get("cmd")
        if cmd == "add":
            return self.add(request["nodes"])
        if cmd == "counters":
            return self.counters()
        if cmd == "reached":
            return self.reached(int(request["node"]), str(request["cond"]), float(request["since"]))
        if cmd == "kill":
            return self.kill(str(request["name"]))
        if cmd == "holders":
            return self.holders()
        if cmd == "stop":
            self.done = True
            return {"stopped": True}
        return {"error": f"unknown command {cmd!r}"}

    def _read_commands(self) -> None:
        chunk = os.read(sys.stdin.fileno(), 1 << 16)
        if not chunk:  # the harness went away: stop
            self.done = True
            return
        self._stdin += chunk
        while b"\n" in self._stdin:
            line, self._stdin = self._stdin.split(b"\n", 1)
            reply = self.command(line)
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        while not self.done:
            now = time.monotonic()
            wait = POLL_MS
            if self.heartbeats:
                wait = max(0, min(POLL_MS, int((self.heartbeats[0][0] - now) * 1000)))
            if self.unread:
                wait = 0
            ready = [sock for sock, _event in self.poller.poll(wait)]
            ready += [w for w in self.unread if w not in ready]
            self.unread = []
            for sock in ready:
                if sock == stdin:
                    self._read_commands()
                    continue
                ep = self.by_socket.get(sock)
                if ep is None:
                    continue
                for _ in range(DRAIN_BATCH):
                    frames = ep.transport.recv_nowait()
                    if frames is None:
                        break
                    self._receive(ep, frames, time.monotonic())
                    if sock not in self.by_socket:
                        break  # closed while handling (fenced, shut down)
                # a TCP transport's parsed messages do not make its descriptor readable
                if (
                    sock in self.by_socket
                    and isinstance(ep.transport, TcpTransport)
                    and ep.transport.has_received
                ):
                    self.unread.append(sock)
            self._chores(time.monotonic())

    def close(self) -> None:
        for ep in self.endpoints:
            if ep.state not in ("dead", "closed", "stopped", "fenced"):
                ep.transport.close(linger=0.0)
        self.context.term()


def _waitable(transport: JobTransport) -> Any:
    """What the helper's poller waits on for ``transport``: its zmq inbox, or its epoll."""
    return transport.inbox if isinstance(transport, ZmqTransport) else transport.fileno()


def helper_main() -> int:
    """The helper process: simulated nodes until ``stop`` (or stdin closes)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    config = RuntimeConfig.from_json(os.environ["DYNAPS_CONFIG"])
    helper = Helper(config)
    try:
        helper.run()
    finally:
        helper.close()
    return 0
