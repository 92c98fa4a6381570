"""Requests in flight: sending them to the nodes that hold their keys, receiving the replies.

:class:`Requests` is the lower half of a training process's connection (the upper half is
:class:`~dynaps.client.ps.PS`, what users call).  A :class:`~dynaps.client.table.Table`
serves the keys its node owns itself and hands the others here: one message per owner
(as cached in the shared location array, or the keys' home), replies collected into a
:class:`~dynaps.client.handles.Handle`.  Forwarded replies teach the location cache.

It owns what the request paths mutate: request ids and the Handles in flight, the shard
map and epoch, the counters, and whether the job has ended.  Messages that are not
replies go to ``on_control`` (the PS's handler of the coordinator's messages).  What a
new membership does to requests in flight (the nodes gone and lost, requests parked for
them or sent again) is its :class:`~dynaps.client.retries.Retries`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from dynaps.client.deadlines import Deadline, deadline_after
from dynaps.client.handles import REPLIES, Array, Handle, Keys
from dynaps.client.own_node import OwnNode
from dynaps.client.request_ids import UNSETTLED_IDS, RequestIds
from dynaps.client.retries import SILENCE_SECONDS, Retries
from dynaps.contract import RuntimeConfig
from dynaps.errors import ClusterError, Drained, DynapsTimeoutError, ProtocolError
from dynaps.store import usage
from dynaps.store.notices import Notices
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import NullLock, SharedLock
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.wire import messages, routing
from dynaps.wire.codec import decode, encode
from dynaps.wire.protocol import Message, MsgType, TableLayout, client_of, is_client
from dynaps.wire.spin import HEADROOM, spin_for
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

SILENCE_CHECK_SECONDS = 1.0  # how often a waiting process looks for requests unanswered for long
COUNTERS = ("messages_sent", "messages_received", "requests_retried")  # per process; per table: usage
# a request's kind -> its latency histogram (a set is timed as a push)
_OPERATION = {
    MsgType.PULL: usage.OPERATIONS.index("pull"),
    MsgType.PUSH: usage.OPERATIONS.index("push"),
    MsgType.SET: usage.OPERATIONS.index("push"),
    MsgType.LOCALIZE: usage.OPERATIONS.index("localize"),
}


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
        spin: float = 0.0,
    ) -> None:
        """``usage_array``: the per-table counters shared with our node (its /metrics reads
        them); None keeps them in this process only.  ``notices``: where our node tells us
        that localizes completed (the transport wakes when one waits); None: by message.
        ``spin``: this process's spin budget (:mod:`dynaps.wire.spin`; 0: never spin)."""
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
        self.ended: str | None = None  # why the job ended (the coordinator's SHUTDOWN)
        self.notices = notices
        self.on_drain: Callable[[], None] | None = None  # run once before Drained is raised
        self.retries = Retries(
            self.endpoint,
            self.stores,
            self.handles,
            self.unsent,
            self.counters,
            self.send,
            self._send_rows,
            transport.forget,
            self.usage.rows,
            # a request sent again for silence: after 10 s, or a quarter of a short timeout
            min(SILENCE_SECONDS, config.request_timeout_seconds / 4),
        )
        self.ids = RequestIds(self.handles, self.retries.oldest_held, self._wait_for_room)
        self.make_room = self.ids.make_room  # called before every operation changes anything
        self._silence_check_at = 0.0  # monotonic: when pump_until next looks for silent requests
        self._spin = spin
        # how long a lone synchronous localize usually took, in ns, by table index: its wait
        # spins about that long (dynaps.wire.spin says why localizes only)
        self._usual: dict[int, int] = {}

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
        frames = self.transport.recv(timeout=seconds)
        if frames is not None:
            self.receive(frames)

    # -------------------------------------------------------------- handles

    def _wait_for_room(self, req_id: int) -> None:
        """Handle messages until fewer than UNSETTLED_IDS ids lie between the oldest request
        not yet settled (unanswered, or sent again and still held) and ``req_id``: else a node
        could drop its record of an update that may still arrive again, and apply it twice
        (:mod:`dynaps.client.request_ids`)."""
        ids = self.ids
        deadline = self.deadline(None)
        while req_id - ids.oldest_unsettled() >= UNSETTLED_IDS:
            self.pump_until(
                deadline,
                lambda: (
                    f"room for a new request ({req_id - ids.oldest_unsettled()} ids since the "
                    f"oldest unsettled one; at most {UNSETTLED_IDS} may be)"
                ),
            )

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
        handle = Handle(self, self.ids.take(), kind, table, keys, out, remaining)
        handle.index = index
        handle.rows = rows
        handle.started = time.perf_counter_ns()
        self.handles[handle.req_id] = handle
        return handle

    def done_handle(self, kind: MsgType, table: str, out: Array | None) -> Handle:
        return Handle(None, 0, kind, table, None, out, 0)

    # -------------------------------------------------------------- sending

    def send(self, dest: int, msg: Message) -> None:
        if dest in self.retries.gone:
            self.retries.park(msg)  # its node is gone and its keys have no home yet
            return
        self.counters["messages_sent"] += 1
        msg.epoch = self.epoch
        if msg.type in (MsgType.PUSH, MsgType.SET):
            msg.aux = self.ids.watermark()
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
        gone = self.retries.gone
        if dest == INCOMING:
            dest = self.node
        elif dest in gone:  # a node that left: ask the home
            dest = int(self.shard_map.home_of(keys[:1], self.stores[table].spec.num_keys)[0])
        if dest in gone:
            self.retries.park(messages.request(kind, ep, req_id, table, keys, values=rows))
            return
        self.counters["messages_sent"] += 1
        if rows is None:
            self.transport.send(dest, messages.request_frames(kind, ep, req_id, table, keys, self.epoch))
            return
        msg = messages.request(
            kind, ep, req_id, table, keys, values=rows, epoch=self.epoch, watermark=self.ids.watermark()
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
        if self.retries.gone:  # cached owners that left or died: ask the keys' homes instead
            gone = np.isin(dests, np.fromiter(self.retries.gone, dtype=np.int16))
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
        handle.local = positions  # a retry sends these again as rows (see Retries._retry_outstanding)
        self._send_rows(table, handle, keys, positions)

    def _send_rows(self, table: int, handle: Handle, keys: Keys, positions: npt.NDArray[np.int32]) -> None:
        store = self.stores[table]
        self.lock.acquire()
        try:
            values, states = store.rows(keys)
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
        # the keys arrive at our node, which drops the records of our settled requests that
        # come with them (dynaps.store.control_block says why)
        self.own.block.publish_watermark(self.ids.oldest_unsettled())
        homes = self.shard_map.home_of(fresh, self.stores[table].spec.num_keys)
        localize = messages.request(MsgType.LOCALIZE, self.endpoint, handle.req_id, table, fresh)
        for home, part in routing.split(localize, homes):
            self.send(home, part)

    # -------------------------------------------------------------- membership changes

    def apply_membership(self, shard_map: ShardMap, gone: set[int], lost: set[int]) -> None:
        """A new membership: ``gone`` nodes left or died (``lost``: died).  The newest shard
        map is kept; what it does to requests parked or in flight: :meth:`Retries.apply`."""
        if not hasattr(self, "shard_map") or shard_map.epoch >= self.shard_map.epoch:
            self.shard_map = shard_map
            self.epoch = shard_map.epoch
        self.retries.apply(self.shard_map, self.epoch, gone, lost)

    # -------------------------------------------------------------- receiving

    def wait(self, handle: Handle, timeout: float | None = None) -> Array | None:
        """Wait until ``handle`` completes; returns what ``handle.result()`` returns."""
        if not handle.done():
            deadline = self.deadline(timeout)
            learn = handle.kind is MsgType.LOCALIZE and len(self.handles) <= 1
            usual = self._usual.get(handle.index, 0) if learn else 0
            answer_at = handle.started + int(usual * HEADROOM) if usual else 0
            try:
                while not handle.done():
                    self.pump_until(deadline, lambda: f"{handle!r}", answer_at)
            except DynapsTimeoutError as exc:
                self._abandon([handle], exc)
                raise
            if learn and handle.error is None:
                took = time.perf_counter_ns() - handle.started
                self._usual[handle.index] = took if not usual else usual + (took - usual) // 4
        if handle.error is not None:
            raise handle.error
        return handle.out

    def wait_all(self, timeout: float | None = None) -> None:
        """Wait for every request in flight."""
        deadline = self.deadline(timeout)
        try:
            while self.handles:  # a handle leaves when it completes, also with an error
                self.pump_until(deadline, lambda: f"{len(self.handles)} operations")
        except DynapsTimeoutError as exc:
            self._abandon(list(self.handles.values()), exc)
            raise

    def _abandon(self, handles: list[Handle], error: DynapsTimeoutError) -> None:
        """Requests the caller was told timed out: they fail with ``error`` and leave the
        requests in flight.  Held below the watermark a while (an answer or a copy may still
        come, :mod:`dynaps.client.retry_holds`), they no longer keep it down for good: a
        program that catches the timeout and goes on is not stopped by :meth:`make_room`."""
        for handle in handles:
            if self.handles.pop(handle.req_id, None) is not None:
                handle.error = error
                self.retries.resent.hold(handle.req_id)

    def deadline(self, timeout: float | None) -> Deadline:
        """A wait's deadline: ``timeout`` seconds from now, or the job's request timeout."""
        return deadline_after(timeout, self.config.request_timeout_seconds)

    def pump_until(self, deadline: Deadline, what: Callable[[], str], answer_at: int = 0) -> None:
        """Handle one incoming message, or raise if ``deadline`` passed, the job ended or our
        node no longer counts.  ``answer_at``: when (``perf_counter_ns``) a lone request's
        answer is expected, to spin until then (:mod:`dynaps.wire.spin`)."""
        if self.ended is not None:
            raise ClusterError(f"the job has ended: {self.ended}")
        if self.own.fenced:
            self.stopped()
        now = time.monotonic()
        if now >= self._silence_check_at and self.handles:
            self._silence_check_at = now + SILENCE_CHECK_SECONDS
            if hasattr(self, "shard_map"):
                self.retries.resend_silent(time.perf_counter_ns(), self.shard_map, self.epoch)
        remaining = deadline.at - now
        if remaining <= 0:
            raise DynapsTimeoutError(f"{what()} did not complete {deadline.describe()}{self._rejections()}")
        # Spin for a lone synchronous answer (latency); with a window of requests in
        # flight, spinning would take the CPU from the nodes that produce the answers.
        spin = 0.0
        if len(self.handles) <= 1:
            spin = self._spin
            if answer_at:  # a localize: as long as they usually take (no clock read for a pull)
                spin = spin_for((answer_at - time.perf_counter_ns()) * 1e-9, spin)
        frames = self.transport.recv(timeout=min(remaining, 1.0), spin=spin)
        if frames is not None:
            self.receive(frames)
        if self.notices is not None:
            self._take_notices(self.notices)

    def _rejections(self) -> str:
        """What this process dropped on arrival, for a timeout's message: an answer that
        failed authentication looks like one that never came."""
        transport = self.transport
        if not transport.rejected:
            return ""
        return (
            f"; this process dropped {transport.rejected} incoming message(s), "
            f"the latest: {transport.last_rejected}"
        )

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
            if self.retries.late(msg.req_id):
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
            self.retries.answered(msg.req_id)
            elapsed = time.perf_counter_ns() - handle.started
            self.usage.observe(handle.index, _OPERATION[handle.kind], elapsed)
            if handle.on_done is not None and handle.error is None and handle.out is not None:
                handle.out = handle.on_done(handle.out)

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
