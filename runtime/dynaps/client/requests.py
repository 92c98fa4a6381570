"""Requests in flight: sending them to the nodes that hold their keys, receiving the replies.

:class:`Requests` is the lower half of a training process's connection (the upper half is
:class:`~dynaps.client.ps.PS`, what users call).  A :class:`~dynaps.client.table.Table`
serves the keys its node owns itself and hands the others here: one message per owner
(as cached in the shared location array, or the keys' home), replies collected into a
:class:`~dynaps.client.handles.Handle`.  Forwarded replies teach the location cache.

It owns what the request paths mutate: request ids and the Handles in flight, the shard
map and epoch, the nodes gone (never a destination again) and the requests parked for
them, the nodes lost, the counters, and whether the job has ended.  Messages that are not
replies go to ``on_control`` (the PS's handler of the coordinator's messages).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from dynaps.client.handles import REPLIES, Array, Handle, Keys
from dynaps.client.own_node import OwnNode
from dynaps.client.retry_holds import RetryHolds
from dynaps.contract import RuntimeConfig
from dynaps.errors import ClusterError, Drained, DynapsTimeoutError, ProtocolError
from dynaps.store import usage
from dynaps.store.notices import Notices
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock, SharedLock
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.wire import messages, routing
from dynaps.wire.codec import decode, encode
from dynaps.wire.protocol import RETRY, Message, MsgType, TableLayout, client_of, is_client
from dynaps.wire.routing import group_by
from dynaps.wire.transport import Transport

log = logging.getLogger(__name__)

# what may answer each kind of request (ERROR answers any): an ACK for a pull would
# complete it with rows never written
ANSWERS = {
    MsgType.PULL: frozenset({MsgType.PULL_REPLY, MsgType.ERROR}),
    MsgType.PUSH: frozenset({MsgType.ACK, MsgType.ERROR}),
    MsgType.SET: frozenset({MsgType.ACK, MsgType.ERROR}),
    MsgType.LOCALIZE: frozenset({MsgType.LOCALIZED, MsgType.ERROR}),
}

COUNTERS = ("messages_sent", "messages_received", "requests_retried")  # per process; per table: usage
# a request's kind -> its latency histogram (a set is timed as a push)
_OPERATION = {
    MsgType.PULL: usage.OPERATIONS.index("pull"),
    MsgType.PUSH: usage.OPERATIONS.index("push"),
    MsgType.SET: usage.OPERATIONS.index("push"),
    MsgType.LOCALIZE: usage.OPERATIONS.index("localize"),
}


# sent again when a node leaves: arriving twice changes nothing (see apply_membership)
REPEATABLE = frozenset({MsgType.PULL, MsgType.LOCALIZE})

# Whether updates in flight (PUSH, SET) are sent again after a node leaves, as after a loss.
# Exactly once for them needs the applied-request records to travel on every route a key
# leaves a departing node by: TRANSFER (a held key released) carries them already; a
# migration's SHARD_COPY and a worker's WRITEBACK do only with the node-side changes of
# branches wt/mig-records and wt/wb-records (issue 13, audit F1/F4/F5).  Until those are
# merged it stays off, and a push sent to a node after it stopped forwarding times out.
RESEND_UPDATES_AFTER_DEPARTURE = False


class Requests:
    """The requests a training process has in flight, and the paths they take."""

    def __init__(
        self,
        config: RuntimeConfig,
        node: int,
        rank: int,
        transport: Transport,
        stores: Sequence[TableStore],
        lock: SharedLock | NullLock,
        control: npt.NDArray[np.uint8],
        on_control: Callable[[Message], None],
        usage_array: npt.NDArray[np.int64] | None = None,
        notices: Notices | None = None,
    ) -> None:
        """``usage_array``: the per-table counters shared with our node (its /metrics reads
        them); None keeps them in this process only.  ``notices``: where our node tells us
        that localizes completed (the transport wakes when one waits); None: by message."""
        self.config = config
        self.node = node
        self.rank = rank
        self.endpoint = client_of(node)
        self.transport = transport
        self.stores = list(stores)
        self.layouts: list[TableLayout] = [store.layout for store in stores]
        self.lock = lock
        # shared with our node (dynaps.store.control_block): byte 0 is tested on every call
        self.control = control
        self.own = OwnNode(control, rank, node, config.fault_tolerance)
        tolerance = config.fault_tolerance
        self.write_through = tolerance.replication > 0 and tolerance.flush_interval_ms == 0
        self._on_control = on_control
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.usage = usage.UsageWriter(usage_array, len(self.stores))
        self.shard_map: ShardMap
        self.epoch = 0
        self.handles: dict[int, Handle] = {}
        # localizes whose first send waits for the coordinator's HOLDING_NOTED (client/holdings.py)
        self.unsent: set[int] = set()
        # A random start: ids say nothing about this process to an outsider. Forging a
        # reply needs the job secret anyway (every frame is authenticated), so this only
        # has to be unpredictable, not secret; 62 bits never wrap the u64 field.
        self._next_id = secrets.randbits(62) + 1
        self.lost: set[int] = set()
        self.gone: set[int] = set()  # nodes that left or died: never a destination again
        self._parked: list[Message] = []  # requests for a gone node, sent on at the next membership
        self.ended: str | None = None  # why the job ended (the coordinator's SHUTDOWN)
        self.notices = notices
        self.on_drain: Callable[[], None] | None = None  # run once before Drained is raised
        # requests sent more than once: below the watermark a while longer, and their late
        # answers are duplicates
        self.resent = RetryHolds()

    def stopped(self) -> NoReturn:
        """Raise what byte 0 of the control block says (it is not 0): ClusterError when our
        node no longer counts, else Drained: it is leaving the job (after ``on_drain``, once)."""
        if self.own.fenced:
            raise self.own.error()
        hook, self.on_drain = self.on_drain, None
        if hook is not None:
            hook()  # updates buffered in this process go out before the worker stops
        raise Drained(
            f"worker rank {self.rank} is being drained (its node leaves the job): stop and return; "
            "what was acknowledged is kept"
        )

    def job_ended(self, reason: str) -> None:
        self.ended = reason

    def node_running_until(self, now: float) -> float:
        """Until when local updates may go on without a look at our node's stamp; waits
        while the node has not run lately (:meth:`OwnNode.running_until`)."""
        return self.own.running_until(
            now, self.config.request_timeout_seconds, self._wait, lambda: self.ended
        )

    def _wait(self, seconds: float) -> None:
        """Handle a message that comes within ``seconds``; the CPU is left to others meanwhile."""
        frames = self.transport.recv(timeout=seconds, spin=False)
        if frames is not None:
            self.receive(frames)

    # -------------------------------------------------------------- handles

    def new_id(self) -> int:
        req_id = self._next_id
        self._next_id += 1
        return req_id

    def new_handle(
        self,
        kind: MsgType,
        index: int,
        table: str,
        keys: Keys,
        out: Array | None,
        remaining: int,
        rows: Array | None = None,
    ) -> Handle:
        handle = Handle(self, self.new_id(), kind, table, keys, out, remaining)
        handle.index = index
        handle.rows = rows
        handle.started = time.perf_counter_ns()
        self.handles[handle.req_id] = handle
        return handle

    def done_handle(self, kind: MsgType, table: str, out: Array | None) -> Handle:
        return Handle(None, 0, kind, table, None, out, 0)

    def _watermark(self) -> int:
        """Every request below this id is answered and no copy of it can still arrive
        (32 low bits): nodes forget their records of requests below it."""
        oldest = min(self.handles) if self.handles else self._next_id
        if self.resent:
            held = self.resent.oldest()
            if held is not None:
                oldest = min(oldest, held)
        return oldest & 0xFFFFFFFF

    # -------------------------------------------------------------- sending

    def send(self, dest: int, msg: Message) -> None:
        if dest in self.gone:
            self._parked.append(msg)  # its node is gone and its keys have no home yet
            return
        self.counters["messages_sent"] += 1
        msg.epoch = self.epoch
        if msg.type in (MsgType.PUSH, MsgType.SET):
            msg.aux = self._watermark()
        self.transport.send(dest, encode(msg))

    def send_whole(
        self, kind: MsgType, dest: int, table: int, req_id: int, keys: Keys, rows: Array | None = None
    ) -> None:
        """Send a request for all of ``keys`` to one node (the common case, kept short).

        ``dest`` is the owner as cached (INCOMING: on its way to our node, which holds the
        request until the keys arrive); a cached owner that is gone means the keys' home.
        """
        if self.ended is not None:
            raise ClusterError(f"the job has ended: {self.ended}")
        ep = self.endpoint
        if dest == INCOMING:
            dest = self.node
        elif dest in self.gone:  # a node that left: ask the home
            dest = int(self.shard_map.home_of(keys[:1], self.stores[table].spec.num_keys)[0])
        if dest in self.gone:
            self._parked.append(messages.request(kind, ep, req_id, table, keys, values=rows))
            return
        self.counters["messages_sent"] += 1
        if rows is None:
            self.transport.send(dest, messages.request_frames(kind, ep, req_id, table, keys, self.epoch))
            return
        msg = messages.request(
            kind, ep, req_id, table, keys, values=rows, epoch=self.epoch, watermark=self._watermark()
        )
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
        if self.ended is not None:
            raise ClusterError(f"the job has ended: {self.ended}")
        dests = np.where(owners == INCOMING, self.node, owners) if (owners == INCOMING).any() else owners
        if self.gone:  # cached owners that left or died: ask the keys' homes instead
            gone = np.isin(dests, np.fromiter(self.gone, dtype=np.int16))
            if gone.any():
                dests = dests.copy()
                dests[gone] = self.shard_map.home_of(keys[idx[gone]], self.stores[table].spec.num_keys)
        whole = messages.request(
            kind, self.endpoint, handle.req_id, table, keys, values=rows
        )  # send sets the epoch
        # all keys to one owner: the message as it is; else parts with positions into ``keys``
        for dest, part in routing.split(whole, dests, None if len(idx) == len(keys) else idx):
            self.send(dest, part)

    def write_back(self, table: int, handle: Handle, keys: Keys, positions: npt.NDArray[np.int32]) -> None:
        """Write-through: have our node send the current rows of local ``keys`` (at
        ``positions`` of the request) to their homes, which acknowledge once they and their
        backups have them.

        Through the node, not straight to the homes: the node writes the same keys through
        for the updates it serves, and a home keeps the rows of a holder in the order they
        come.  Rows sent on two paths (the client's and the node's) could arrive in the
        other order, and older rows would replace newer ones that were acknowledged.
        """
        handle.local = positions  # a retry sends these again as rows (see _retry_outstanding)
        self._send_rows(table, handle, keys, positions)

    def _send_rows(self, table: int, handle: Handle, keys: Keys, positions: npt.NDArray[np.int32]) -> None:
        store = self.stores[table]
        self.lock.acquire()
        try:
            values = store.values.take(keys, axis=0)
            states = tuple(state.take(keys, axis=0) for state in store.states)
        finally:
            self.lock.release()
        ep = self.endpoint
        rows = messages.rows(
            MsgType.WRITEBACK, ep, ep, handle.req_id, table, keys, values, states, positions=positions
        )
        self.send(self.node, rows)

    def localize(self, table: int, handle: Handle, fresh: Keys, waiting: Keys | None) -> None:
        """Ask the homes of ``fresh`` keys to move them here, and our node to tell us when
        ``waiting`` keys (already on their way here) have arrived."""
        if waiting is not None:
            # One localize per key may be in flight (a second one could be overtaken by
            # the first's handoff), so ask our node to tell us when they have arrived.
            ep = self.endpoint
            self.send(self.node, messages.handoff(ep, ep, handle.req_id, table, waiting, self.node))
        homes = self.shard_map.home_of(fresh, self.stores[table].spec.num_keys)
        localize = messages.request(MsgType.LOCALIZE, self.endpoint, handle.req_id, table, fresh)
        for home, part in routing.split(localize, homes):
            self.send(home, part)

    # -------------------------------------------------------------- membership changes

    def apply_membership(self, shard_map: ShardMap, gone: set[int], lost: set[int]) -> None:
        """A new membership: ``gone`` nodes left or died (``lost``: died).

        Requests parked for gone nodes go where their keys live now; requests in flight to
        newly lost nodes are sent again.  When a node has left, pulls and localizes in flight
        are sent again too: a node that left forwards stragglers only for a while
        (``LEAVE_LINGER``), and a request sent with a shard map from before it left (a
        program that read no reply for longer, or a localize held back for the coordinator's
        note) may reach it after that, or never.  Those two may arrive twice.  Updates in
        flight go again as well only when RESEND_UPDATES_AFTER_DEPARTURE is on: they are
        applied once only if the node that applied the original handed its records on.
        """
        departed = gone - self.gone - lost
        self.gone |= gone
        if not hasattr(self, "shard_map") or shard_map.epoch >= self.shard_map.epoch:
            self.shard_map = shard_map
            self.epoch = shard_map.epoch
        if self._parked:  # homes may have changed: send them where the keys live now
            parked, self._parked = self._parked, []
            for msg in parked:
                assert msg.keys is not None
                homes = self.shard_map.home_of(msg.keys, self.stores[msg.table].spec.num_keys)
                for home, part in routing.split(msg, homes, np.arange(msg.count), self.endpoint):
                    self.send(home, part)
        fresh = lost - self.lost
        if fresh:
            self.lost |= fresh
            for node in fresh:
                self.transport.forget(node)
                self.transport.forget(client_of(node))
        if fresh:
            self._retry_outstanding()
        elif departed:
            self._retry_outstanding(None if RESEND_UPDATES_AFTER_DEPARTURE else REPEATABLE)

    def _retry_outstanding(self, kinds: frozenset[MsgType] | None = None) -> None:
        """Nodes died (or left: only ``kinds``): requests in flight may have died with them.
        Send what is not yet answered again, to the keys' homes (which know the owners after
        recovery); an update that arrives twice is applied once (``RETRY``,
        :mod:`dynaps.node.applied`).

        The part of a write-through update that this process applied itself goes again as
        the keys' current rows (a write-back), never as the update: no node recorded it
        (it was applied here, in shared memory), so a node would apply it a second time.
        Rows that arrive twice change nothing.  Every request sent again is held below the
        watermark for a while (:mod:`dynaps.client.retry_holds`)."""
        for handle in list(self.handles.values()):
            keys = handle.keys
            if keys is None or (kinds is not None and handle.kind not in kinds):
                continue
            if handle.req_id in self.unsent:
                continue  # its first send waits for the coordinator (client/holdings.py)
            if handle.kind is MsgType.LOCALIZE:
                idx = np.arange(len(keys))
            elif handle.mask is not None:
                idx = np.flatnonzero(~handle.mask)
            else:
                idx = np.arange(len(keys))
                handle.mask = np.zeros(len(keys), dtype=np.bool_)
            if not len(idx):
                continue
            self.counters["requests_retried"] += 1
            self.resent.hold(handle.req_id)
            if handle.local is not None:
                here = np.isin(idx, handle.local)
                if here.any():
                    rewritten = idx[here]
                    self._send_rows(handle.index, handle, keys[rewritten], rewritten.astype(np.int32))
                    idx = idx[~here]
                    if not len(idx):
                        continue
            num_keys = self.stores[handle.index].spec.num_keys
            homes = self.shard_map.home_of(keys[idx], num_keys)
            for home, part in group_by(homes):
                chosen = idx if part is None else idx[part]
                positions = None if handle.kind is MsgType.LOCALIZE else chosen.astype(np.int32)
                rows = handle.rows[chosen] if handle.rows is not None else None
                retry = messages.request(
                    handle.kind,
                    self.endpoint,
                    handle.req_id,
                    handle.index,
                    keys[chosen],
                    values=rows,
                    positions=positions,
                    epoch=self.epoch,
                    flags=RETRY,
                )
                self.send(home, retry)

    # -------------------------------------------------------------- receiving

    def wait(self, handle: Handle, timeout: float | None = None) -> Array | None:
        """Wait until ``handle`` completes; returns what ``handle.result()`` returns."""
        if not handle.done():
            limit = self.config.request_timeout_seconds if timeout is None else timeout
            deadline = time.monotonic() + limit
            while not handle.done():
                self.pump_until(deadline, lambda: f"{handle!r}")
        if handle.error is not None:
            raise handle.error
        return handle.out

    def wait_all(self, timeout: float | None = None) -> None:
        """Wait for every request in flight."""
        limit = self.config.request_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self.handles:  # a handle leaves when it completes, also with an error
            self.pump_until(deadline, lambda: f"{len(self.handles)} operations")

    def pump_until(self, deadline: float, what: Callable[[], str]) -> None:
        """Handle one incoming message, or raise if ``deadline`` passed, the job ended or our
        node no longer counts."""
        if self.ended is not None:
            raise ClusterError(f"the job has ended: {self.ended}")
        if self.own.fenced:
            self.stopped()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DynapsTimeoutError(
                f"{what()} did not complete within the deadline "
                f"(request_timeout_seconds={self.config.request_timeout_seconds})"
            )
        # Spin for a lone synchronous answer (latency); with a window of requests in
        # flight, spinning would take the CPU from the nodes that produce the answers.
        frames = self.transport.recv(timeout=min(remaining, 1.0), spin=len(self.handles) <= 1)
        if frames is not None:
            self.receive(frames)
        if self.notices is not None:
            self._take_notices(self.notices)

    def _take_notices(self, notices: Notices) -> None:
        """Our node's notices that localizes completed: what a LOCALIZED message from it says."""
        for req_id, table, count in notices.take():
            try:
                self._absorb(messages.localized(self.node, self.endpoint, req_id, table, count))
            except ProtocolError as exc:
                log.warning("client dropped a malformed notice: %s", exc)

    def receive(self, frames: list[Any]) -> None:
        self.counters["messages_received"] += 1
        try:
            msg = decode(frames, self.layouts)
            if msg.type in REPLIES:
                self._absorb(msg)
            else:
                self._on_control(msg)
        except ProtocolError as exc:
            log.warning("client dropped a malformed message: %s", exc)

    def _absorb(self, msg: Message) -> None:
        handle = self.handles.get(msg.req_id)
        if handle is None:
            if msg.req_id in self.resent or self.lost:
                return  # a late answer to a request that was sent again: already done
            raise ProtocolError(f"reply for unknown request {msg.req_id}")
        if msg.type not in ANSWERS[handle.kind]:
            raise ProtocolError(
                f"{msg.type.name} does not answer a {handle.kind.name} (request {msg.req_id})"
            )
        if msg.sender <= 0 or is_client(msg.sender):
            # Only nodes answer requests. Which node may answer is not fixed: a request is
            # forwarded to the keys' owner wherever it is now, and a backup acknowledges
            # for its home, so any node of the job may (and only the job can send at all).
            raise ProtocolError(f"reply from endpoint {msg.sender}, which is not a node")
        positions = handle.absorb(msg)
        if msg.hops and positions is not None and len(positions):
            self._learn_owner(msg.table, handle, positions, msg.sender)
        if handle.done():
            del self.handles[msg.req_id]
            self.resent.renew(msg.req_id)
            elapsed = time.perf_counter_ns() - handle.started
            self.usage.observe(handle.index, _OPERATION[handle.kind], elapsed)
            if handle.on_done is not None and handle.error is None and handle.out is not None:
                handle.on_done(handle.out)

    def close(self) -> None:
        if self.notices is not None:
            self.notices.close()

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
