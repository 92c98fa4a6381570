"""The worker API: ``ps = dynaps.connect()``, ``ps.table(name).pull/push/set/localize``.

The training process (the client) shares its node's store: keys the node owns are read
and updated in place under the node's lock, without a message.  Other keys are requested
from their owner as cached in the shared location array (or their home), one message per
destination; replies carry positions into the request, so a request split across nodes
is reassembled without lookups.  Forwarded replies teach the location cache.

Asynchronous calls (``wait=False``) return a :class:`Handle`; replies wait in the
socket's queue until the program calls ``result()``, ``ps.wait`` or ``ps.wait_all`` -- no
background thread competes with the training loop for the GIL.

Guarantee, per key: synchronous operations of all workers are sequentially consistent
(each worker's in program order; one order of updates for all), also while keys move.
Asynchronous operations complete in any order; wait for them before relying on order.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.client.handles import REPLIES, Array, Handle, Keys
from dynaps.client.table import Table
from dynaps.config import spin_seconds
from dynaps.contract import ConsistencyModel, RuntimeConfig
from dynaps.errors import (
    ClusterError,
    Drained,
    DynapsTimeoutError,
    NotConnectedError,
    ProtocolError,
    UnknownTableError,
    UsageError,
)
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import Segment, SharedLock, attach
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.wire import control
from dynaps.wire.protocol import (
    COORDINATOR,
    HEADER,
    INLINE,
    INLINE_MAX,
    PROTOCOL_VERSION,
    RETRY,
    Message,
    MsgType,
    TableLayout,
    client_of,
    control_frames,
    decode,
    encode,
)
from dynaps.wire.routing import group_by, subset
from dynaps.wire.transport import ZmqTransport

log = logging.getLogger(__name__)

ATTACH_ENV = "DYNAPS_ATTACH"


_CURRENT: PS | None = None


def connect(timeout: float = 300.0) -> PS:
    """This process's connection to its dynaps job (created on first call)."""
    global _CURRENT
    if _CURRENT is not None and not _CURRENT.closed:
        return _CURRENT
    token = os.environ.get(ATTACH_ENV)
    if not token:
        raise NotConnectedError(
            "dynaps.connect() works only in a process started by dynaps: run your program with "
            "`dynaps run --servers N --workers M --table NAME:KEYS:DIM -- python train.py`, "
            "from a ParameterServerJob, or as a function given to dynaps.LocalCluster(...).run(fn)"
        )
    _CURRENT = PS.attach(token, timeout)
    atexit.register(_CURRENT.close)
    return _CURRENT


def attach_address(token: str) -> str:
    return f"\0dynaps-{token}"


class PS:
    """A training process's connection to its job (what ``dynaps.connect()`` returns)."""

    def __init__(
        self,
        config: RuntimeConfig,
        node: int,
        rank: int,
        stores: Sequence[TableStore],
        lock: SharedLock,
        transport: ZmqTransport,
    ) -> None:
        self.config = config
        self.node = node
        self.rank = rank
        self.endpoint = client_of(node)
        self.lock = lock
        self.transport = transport
        self.stores = list(stores)
        self.layouts: list[TableLayout] = [store.layout for store in stores]
        self._tables = {store.name: Table(self, i, store) for i, store in enumerate(stores)}
        self.num_workers = config.workers
        self.shard_map: ShardMap
        self.epoch = 0
        self.lost: set[int] = set()
        self.gone: set[int] = set()  # nodes that left or died: never a destination again
        tolerance = config.fault_tolerance
        self.write_through = tolerance.replication > 0 and tolerance.flush_interval_ms == 0
        self._members: set[int] = set()
        self.digest = ""
        self.closed = False
        # shared with our node; byte 0 becomes 1 when the node drains (tested on every call)
        self.control: npt.NDArray[np.uint8] = np.zeros(1, dtype=np.uint8)
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "keys_pulled_local",
                "keys_pulled_remote",
                "keys_pushed_local",
                "keys_pushed_remote",
                "keys_localized",
                "messages_sent",
                "messages_received",
            ),
            0,
        )
        self._next_id = 1
        self._handles: dict[int, Handle] = {}
        self._barrier_generation = 0
        self._barrier_done = -1
        self._clock = 0
        self._min_clock = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._leases: dict[tuple[str, int], int | None] = {}
        self._incarnation = ""
        self._parked: list[Message] = []  # requests for a gone node, sent on at the next membership
        self._barrier_waiting: int | None = None
        self._lease_waiting: dict[str, Any] | None = None
        self._shutdown: str | None = None

    # -------------------------------------------------------------- set-up

    @classmethod
    def attach(cls, token: str, timeout: float = 300.0) -> PS:
        """Attach to the worker node that started this process and join the job."""
        deadline = time.monotonic() + timeout

        def prepare(description: dict[str, Any], fds: list[int]) -> PS:
            config = RuntimeConfig.from_json(description["config"])
            stores = []
            offset = 0
            for index, (spec, table) in enumerate(zip(config.tables, description["tables"], strict=True)):
                count = int(table["fds"])
                stores.append(TableStore.attach(index, spec, fds[offset : offset + count]))
                offset += count
            lock = SharedLock.open(description["lock"])
            control_block = Segment.from_fd(fds[-1], (int(description["control"]),), np.dtype(np.uint8))
            node = int(description["node"])
            transport = ZmqTransport(
                client_of(node), config.bind_host, 0, config.advertise_host, spin=spin_seconds()
            )
            transport.connect(COORDINATOR, f"tcp://{config.coordinator}")
            ps = cls(config, node, int(description["rank"]), stores, lock, transport)
            ps.digest = str(description["digest"])
            ps.control = control_block.array
            return ps

        ps = _attach_retrying(attach_address(token), prepare, deadline)
        try:
            ps._join(ps.digest, deadline)
        except BaseException:
            ps.close()
            raise
        return ps

    def _join(self, digest: str, deadline: float) -> None:
        nonce = secrets.token_hex(8)
        body = control.Register(
            role="client",
            address=self.transport.address,
            nonce=nonce,
            config_digest=digest,
            pid=os.getpid(),
            node=self.node,
        ).model_dump()
        self.transport.send(COORDINATOR, control_frames(MsgType.REGISTER, self.endpoint, body))
        while True:
            msg = control.await_coordinator(
                self.transport, {MsgType.MEMBERSHIP, MsgType.WELCOME}, deadline, "the start of the job"
            )
            if msg.type is MsgType.WELCOME:
                welcome = control.parse(control.Welcome, msg.body)
                if welcome.nonce == nonce:
                    self._barrier_generation = welcome.barrier  # join the barrier the others are at
            elif msg.type is MsgType.MEMBERSHIP:
                membership = control.parse(control.Membership, msg.body)
                if membership.phase == "running":
                    self._apply_membership(membership)
                    return

    def _apply_membership(self, membership: control.Membership) -> None:
        members = {info.id for info in membership.nodes}
        self.gone |= (self._members - members) | set(membership.lost)
        self._members = members
        control.connect_members(self.transport, membership)
        shard_map = ShardMap.from_json(membership.shard_map)
        if not hasattr(self, "shard_map") or shard_map.epoch >= self.shard_map.epoch:
            self.shard_map = shard_map
            self.epoch = shard_map.epoch
        self.num_workers = membership.num_workers
        if membership.incarnation != self._incarnation:
            if self._incarnation:
                self._repeat_waiting()  # the coordinator restarted: what we wait for is gone
            self._incarnation = membership.incarnation
        if self._parked:  # homes may have changed: send them where the keys live now
            parked, self._parked = self._parked, []
            for msg in parked:
                assert msg.keys is not None
                homes = self.shard_map.home_of(msg.keys, self.stores[msg.table].spec.num_keys)
                for home, part in group_by(homes):
                    chosen = np.arange(len(msg.keys)) if part is None else part
                    self.send(home, subset(msg, chosen, self.endpoint, msg.hops))
        lost = set(membership.lost) - self.lost
        if lost:
            self.lost |= lost
            for node in lost:
                self.transport.forget(node)
                self.transport.forget(client_of(node))
            self._retry_outstanding()

    def _repeat_waiting(self) -> None:
        if self._barrier_waiting is not None:
            body = {"generation": self._barrier_waiting}
            self.transport.send(COORDINATOR, control_frames(MsgType.BARRIER, self.endpoint, body))
        if self._lease_waiting is not None:
            self.transport.send(
                COORDINATOR, control_frames(MsgType.LEASE, self.endpoint, self._lease_waiting)
            )
        if self._clock:
            self.transport.send(
                COORDINATOR, control_frames(MsgType.CLOCK, self.endpoint, {"clock": self._clock})
            )

    def _retry_outstanding(self) -> None:
        """Nodes died: requests in flight may have died with them.  Send what is not yet
        answered again, to the keys' homes (which know the owners after recovery)."""
        for handle in list(self._handles.values()):
            keys = handle.keys
            if keys is None:
                continue
            if handle.kind is MsgType.LOCALIZE:
                idx = np.arange(len(keys))
            elif handle.mask is not None:
                idx = np.flatnonzero(~handle.mask)
            else:
                idx = np.arange(len(keys))
                handle.mask = np.zeros(len(keys), dtype=np.bool_)
            if not len(idx):
                continue
            self.counters["requests_retried"] = self.counters.get("requests_retried", 0) + 1
            num_keys = self.stores[handle.index].spec.num_keys
            homes = self.shard_map.home_of(keys[idx], num_keys)
            for home, part in group_by(homes):
                chosen = idx if part is None else idx[part]
                positions = None if handle.kind is MsgType.LOCALIZE else chosen.astype(np.int32)
                rows = handle.rows[chosen] if handle.rows is not None else None
                self.send(
                    home,
                    Message(
                        handle.kind,
                        self.endpoint,
                        self.endpoint,
                        handle.req_id,
                        handle.index,
                        len(chosen),
                        flags=RETRY,
                        epoch=self.epoch,
                        keys=keys[chosen],
                        positions=positions,
                        values=rows,
                    ),
                )

    def drained(self) -> None:
        """Raise Drained: our node is leaving the job."""
        raise Drained(
            f"worker rank {self.rank} is being drained (its node leaves the job): stop and return; "
            "what was acknowledged is kept"
        )

    # -------------------------------------------------------------- public API

    def table(self, name: str) -> Table:
        """The declared table ``name``."""
        table = self._tables.get(name)
        if table is None:
            known = ", ".join(sorted(self._tables))
            raise UnknownTableError(f"no table named {name!r}; this job declares: {known}")
        return table

    @property
    def tables(self) -> dict[str, Table]:
        return dict(self._tables)

    def wait(self, handle: Handle, timeout: float | None = None) -> Array | None:
        """Wait until ``handle`` completes; returns what ``handle.result()`` returns."""
        if not handle.done():
            limit = self.config.request_timeout_seconds if timeout is None else timeout
            deadline = time.monotonic() + limit
            while not handle.done():
                self._pump_until(deadline, lambda: f"{handle!r}")
        if handle.error is not None:
            raise handle.error
        return handle.out

    def wait_all(self, timeout: float | None = None) -> None:
        """Wait for every operation this process has in flight."""
        limit = self.config.request_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self._handles:
            self._pump_until(deadline, lambda: f"{len(self._handles)} operations")
        errors = [h.error for h in self._handles.values() if h.error is not None]
        if errors:
            raise errors[0]

    def barrier(self, timeout: float | None = None) -> None:
        """Wait until every worker reaches this barrier (after this worker's operations complete)."""
        if self.control[0]:
            self.drained()
        self.wait_all(timeout)
        generation = self._barrier_generation
        self._barrier_generation += 1
        self.transport.send(
            COORDINATOR, control_frames(MsgType.BARRIER, self.endpoint, {"generation": generation})
        )
        limit = self.config.request_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + limit
        self._barrier_waiting = generation
        try:
            while self._barrier_done < generation:
                self._pump_until(deadline, lambda: f"barrier {generation}")
        finally:
            self._barrier_waiting = None

    def clock(self, timeout: float | None = None) -> int:
        """Advance this worker's clock; under bsp/ssp, wait for the slowest worker."""
        if self.control[0]:
            self.drained()
        self._clock += 1
        consistency = self.config.consistency
        if consistency.model == ConsistencyModel.ASYNC:
            return self._clock
        self.transport.send(COORDINATOR, control_frames(MsgType.CLOCK, self.endpoint, {"clock": self._clock}))
        slack = consistency.staleness if consistency.model == ConsistencyModel.SSP else 0
        limit = self.config.request_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self._min_clock < self._clock - slack:
            self._pump_until(deadline, lambda: f"clock {self._clock}")
        return self._clock

    def data_shards(self, num_shards: int, epoch: int = 0, timeout: float | None = None) -> Iterator[int]:
        """The pieces of ``epoch``'s data this worker should train on, leased one at a time.

        ``for shard in ps.data_shards(64, epoch): train(shard_data(shard))``.  Pieces
        of workers that leave or die go to the others; workers that join take part.
        """
        if num_shards < 1:
            raise UsageError(f"data_shards needs num_shards >= 1, got {num_shards}")
        finished: int | None = None
        while True:
            if self.control[0]:
                self.drained()
            body = control.Lease(epoch=epoch, num_shards=num_shards, finished=finished).model_dump()
            self.transport.send(COORDINATOR, control_frames(MsgType.LEASE, self.endpoint, body))
            key = ("lease", epoch)
            limit = self.config.request_timeout_seconds if timeout is None else timeout
            deadline = time.monotonic() + limit
            self._lease_waiting = body
            try:
                while key not in self._leases:
                    self._pump_until(deadline, lambda: f"the lease of a data shard of epoch {epoch}")
            finally:
                self._lease_waiting = None
            shard = self._leases.pop(key)
            if shard is None:
                return
            yield shard
            finished = shard

    def report(self, metrics: Mapping[str, float] | None = None, **more: float) -> None:
        """Tell the job how training goes (``ps.report(rmse=0.9)``): it shows in the
        coordinator's /status and, on Kubernetes, in the ParameterServerJob's status."""
        values = {**(metrics or {}), **more}
        try:
            body = control.Report(metrics={str(k): float(v) for k, v in values.items()}).model_dump()
        except (TypeError, ValueError) as exc:
            raise UsageError(f"ps.report() takes numbers by name, e.g. ps.report(rmse=0.91): {exc}") from exc
        self.transport.send(COORDINATOR, control_frames(MsgType.REPORT, self.endpoint, body))

    def stats(self) -> dict[str, int]:
        """This process's counters: keys served locally and remotely, messages."""
        return dict(self.counters)

    def node_stats(self, node: int | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The counters of a node (default: this process's own node)."""
        target = self.node if node is None else node
        req_id = self._new_id()
        self.transport.send(target, control_frames(MsgType.STATS, self.endpoint, {}, req_id))
        deadline = time.monotonic() + timeout
        while req_id not in self._replies:
            self._pump_until(deadline, lambda: f"statistics of node {target}")
        return self._replies.pop(req_id)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport.close(linger=0.5)
        for store in self.stores:
            store.close()

    def __repr__(self) -> str:
        return f"<dynaps.PS rank={self.rank}/{self.num_workers} node={self.node} tables={list(self._tables)}>"

    # -------------------------------------------------------------- internals

    def _new_id(self) -> int:
        req_id = self._next_id
        self._next_id += 1
        return req_id

    def new_handle(
        self,
        kind: MsgType,
        table: Table,
        keys: Keys,
        out: Array | None,
        remaining: int,
        rows: Array | None = None,
    ) -> Handle:
        handle = Handle(self, self._new_id(), kind, table.name, keys, out, remaining)
        handle.index = table._index
        handle.rows = rows
        self._handles[handle.req_id] = handle
        return handle

    def done_handle(self, kind: MsgType, table: str, out: Array | None) -> Handle:
        return Handle(None, 0, kind, table, None, out, 0)

    def _watermark(self) -> int:
        """Every request below this id is answered (32 low bits): nodes forget their records."""
        oldest = min(self._handles) if self._handles else self._next_id
        return oldest & 0xFFFFFFFF

    def send(self, dest: int, msg: Message) -> None:
        if dest in self.gone:
            self._parked.append(msg)  # its node is gone and its keys have no home yet
            return
        self.counters["messages_sent"] += 1
        msg.epoch = self.epoch
        if msg.type in (MsgType.PUSH, MsgType.SET):
            msg.aux = self._watermark()
        self.transport.send(dest, encode(msg))

    def write_back(self, table: int, handle: Handle, keys: Keys, positions: npt.NDArray[np.int32]) -> None:
        """Write-through: send the current rows of local ``keys`` to their homes."""
        store = self.stores[table]
        self.lock.acquire()
        try:
            values = store.values.take(keys, axis=0)
            states = tuple(state.take(keys, axis=0) for state in store.states)
        finally:
            self.lock.release()
        homes = self.shard_map.home_of(keys, store.spec.num_keys)
        for home, part in group_by(homes):
            pick = slice(None) if part is None else part
            self.send(
                home,
                Message(
                    MsgType.WRITEBACK,
                    self.endpoint,
                    self.endpoint,
                    handle.req_id,
                    table,
                    len(keys[pick]),
                    aux=len(states),
                    keys=keys[pick],
                    positions=positions[pick],
                    values=values[pick],
                    states=tuple(s[pick] for s in states),
                ),
            )

    def send_whole(
        self, kind: MsgType, dest: int, table: int, req_id: int, keys: Keys, rows: Array | None = None
    ) -> None:
        """Send a request for all of ``keys`` to one node (the common case, kept short)."""
        if self._shutdown is not None:
            raise ClusterError(f"the job has ended: {self._shutdown}")
        ep = self.endpoint
        if dest in self.gone:
            self._parked.append(Message(kind, ep, ep, req_id, table, len(keys), keys=keys, values=rows))
            return
        self.counters["messages_sent"] += 1
        if rows is None and keys.nbytes <= INLINE_MAX:
            head = HEADER.pack(
                PROTOCOL_VERSION, kind, INLINE, table, ep, ep, 0, self.epoch, req_id, len(keys), 0
            )
            self.transport.send(dest, [head + keys.tobytes()])
            return
        msg = Message(kind, ep, ep, req_id, table, len(keys), epoch=self.epoch, keys=keys, values=rows)
        if rows is not None:
            msg.aux = self._watermark()
        self.transport.send(dest, encode(msg))

    def request(
        self,
        kind: MsgType,
        table: int,
        handle: Handle,
        keys: Keys,
        idx: npt.NDArray[np.intp],
        owners: npt.NDArray[np.int16],
        rows: Array | None,
    ) -> None:
        """Send the ``idx`` part of a request to the owners (as cached) of those keys."""
        if self._shutdown is not None:
            raise ClusterError(f"the job has ended: {self._shutdown}")
        dests = np.where(owners == INCOMING, self.node, owners) if (owners == INCOMING).any() else owners
        if self.gone:  # cached owners that left or died: ask the keys' homes instead
            gone = np.isin(dests, np.fromiter(self.gone, dtype=np.int16))
            if gone.any():
                dests = dests.copy()
                dests[gone] = self.shard_map.home_of(keys[idx[gone]], self.stores[table].spec.num_keys)
        groups = group_by(dests)
        whole = len(idx) == len(keys) and len(groups) == 1
        for dest, part in groups:
            chosen = idx if part is None else idx[part]
            if whole:
                msg = Message(
                    kind,
                    self.endpoint,
                    self.endpoint,
                    handle.req_id,
                    table,
                    len(keys),
                    epoch=self.epoch,
                    keys=keys,
                    values=rows,
                )
            else:
                msg = Message(
                    kind,
                    self.endpoint,
                    self.endpoint,
                    handle.req_id,
                    table,
                    len(chosen),
                    epoch=self.epoch,
                    keys=keys[chosen],
                    positions=chosen.astype(np.int32),
                    values=rows[chosen] if rows is not None else None,
                )
            self.send(dest, msg)

    def _pump_until(self, deadline: float, what: Any) -> None:
        """Handle one incoming message, or raise if ``deadline`` passed or the job ended."""
        if self._shutdown is not None:
            raise ClusterError(f"the job has ended: {self._shutdown}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DynapsTimeoutError(
                f"{what()} did not complete within the deadline "
                f"(request_timeout_seconds={self.config.request_timeout_seconds})"
            )
        # Spin for a lone synchronous answer (latency); with a window of requests in
        # flight, spinning would take the CPU from the nodes that produce the answers.
        frames = self.transport.recv(timeout=min(remaining, 1.0), spin=len(self._handles) <= 1)
        if frames is not None:
            self._receive(frames)

    def _receive(self, frames: list[Any]) -> None:
        self.counters["messages_received"] += 1
        try:
            msg = decode(frames, self.layouts)
            self._dispatch(msg)
        except ProtocolError as exc:
            log.warning("client dropped a malformed message: %s", exc)

    def _dispatch(self, msg: Message) -> None:
        kind = msg.type
        if kind in REPLIES:
            handle = self._handles.get(msg.req_id)
            if handle is None:
                if self.lost:  # a late answer to a request that was sent again: already done
                    return
                raise ProtocolError(f"reply for unknown request {msg.req_id}")
            positions = handle.absorb(msg)
            if msg.hops and positions is not None and len(positions):
                self._learn_owner(msg.table, handle, positions, msg.sender)
            if handle.done():
                del self._handles[msg.req_id]
        elif msg.sender != COORDINATOR and kind is not MsgType.STATS_REPLY:
            raise ProtocolError(f"client does not accept {kind.name} from {msg.sender}")
        elif kind is MsgType.MEMBERSHIP:
            self._apply_membership(control.parse(control.Membership, msg.body))
        elif kind is MsgType.BARRIER_DONE:
            self._barrier_done = max(self._barrier_done, control.parse(control.Barrier, msg.body).generation)
        elif kind is MsgType.CLOCK_MIN:
            self._min_clock = max(self._min_clock, int((msg.body or {}).get("clock", 0)))
        elif kind is MsgType.LEASE_REPLY:
            reply = control.parse(control.LeaseReply, msg.body)
            self._leases[("lease", reply.epoch)] = reply.shard
        elif kind is MsgType.STATS_REPLY:
            self._replies[msg.req_id] = control.parse(control.Stats, msg.body).counters
        elif kind is MsgType.SHUTDOWN:
            self._shutdown = str((msg.body or {}).get("reason", "shut down"))
        elif kind is not MsgType.WELCOME:
            raise ProtocolError(f"client does not handle {kind.name}")

    def _learn_owner(self, table: int, handle: Handle, positions: npt.NDArray[np.int32], owner: int) -> None:
        """A forwarded reply names the keys' current owner: remember it for next time."""
        assert handle.keys is not None
        if owner == self.node:
            # Our own node served it, but may have handed the keys on since; only the
            # node itself may ever write its own id (that means "owned here").
            return
        keys = handle.keys[positions]
        loc = self.stores[table].loc
        self.lock.acquire()
        try:
            current = loc[keys]
            stale = (current != self.node) & (current != INCOMING)
            loc[keys[stale]] = owner
        finally:
            self.lock.release()


def _attach_retrying(address: str, prepare: Callable[[dict[str, Any], list[int]], PS], deadline: float) -> PS:
    """The node may still be starting: retry until it listens or the deadline passes."""
    while True:
        try:
            return attach(address, {"pid": os.getpid()}, prepare)
        except ClusterError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
