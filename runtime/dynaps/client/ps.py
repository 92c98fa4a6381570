"""The worker API: ``ps = dynaps.connect()``, ``ps.table(name).pull/push/set/localize``.

The training process (the client) shares its node's store: keys the node owns are read
and updated in place under the node's lock, without a message (:mod:`dynaps.client.table`).
Other keys are requested from their owner as cached in the shared location array (or their
home), one message per destination; replies carry positions into the request, so a request
split across nodes is reassembled without lookups (:mod:`dynaps.client.requests`).
Forwarded replies teach the location cache.

Asynchronous calls (``wait=False``) return a :class:`Handle`; replies wait in the
socket's queue until the program calls ``result()``, ``ps.wait`` or ``ps.wait_all`` -- no
background thread competes with the training loop for the GIL.

Guarantee, per key: synchronous operations of all workers are sequentially consistent
(each worker's in program order; one order of updates for all), also while keys move.
Asynchronous operations complete in any order; wait for them before relying on order.

:class:`PS` is the face; behind it, :mod:`~dynaps.client.requests` sends requests and
receives replies, :mod:`~dynaps.client.membership` follows the job's members and
:mod:`~dynaps.client.barriers` holds barriers, clocks and data-shard leases.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.client.barriers import Barriers
from dynaps.client.handles import Array, Handle
from dynaps.client.holdings import Holdings
from dynaps.client.membership import Membership, register
from dynaps.client.requests import Requests
from dynaps.client.stages import Stage, StageFollower
from dynaps.client.table import Table
from dynaps.config import ATTACH_ENV, job_secret, spin_seconds, transport_kind
from dynaps.contract import RuntimeConfig
from dynaps.contract.secret import wire_key
from dynaps.errors import ClusterError, NotConnectedError, ProtocolError, UnknownTableError, UsageError
from dynaps.store import usage
from dynaps.store.notices import Notices
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import Segment, SharedLock, attach
from dynaps.store.table_store import TableStore
from dynaps.throttled_log import ThrottledLog
from dynaps.wire import control, limits, messages
from dynaps.wire.protocol import COORDINATOR, Message, MsgType, client_of
from dynaps.wire.transport import JobTransport, message_bound, open_transport

log = logging.getLogger(__name__)
_not_finite = ThrottledLog(log, "ps.report() left out values that are not finite numbers")

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


class PS:
    """A training process's connection to its job (what ``dynaps.connect()`` returns)."""

    def __init__(
        self,
        config: RuntimeConfig,
        node: int,
        rank: int,
        stores: Sequence[TableStore],
        lock: SharedLock,
        transport: JobTransport,
        control_block: npt.NDArray[np.uint8] | None = None,
        usage_array: npt.NDArray[np.int64] | None = None,
        notices: Notices | None = None,
    ) -> None:
        self.config = config
        self.node = node
        self.rank = rank
        self.closed = False
        # shared with our node (dynaps.store.control_block); one byte without a node
        self.control = np.zeros(1, dtype=np.uint8) if control_block is None else control_block
        self._transport = transport
        self._stores = list(stores)
        self._requests = Requests(
            config,
            node,
            rank,
            transport,
            stores,
            lock,
            self.control,
            self._on_control,
            usage_array,
            notices,
            spin=transport.spin,
        )
        self._holdings = Holdings(self._requests)
        self._tables = {
            store.name: Table(self._requests, i, store, self._holdings) for i, store in enumerate(stores)
        }
        cached = [table for table in self._tables.values() if table.cached]
        tables = list(self._tables.values())

        def new_clock() -> None:
            for table in cached:
                table.clear_cache()
            for table in tables:
                table.hot_new_clock()

        self._barriers = Barriers(self._requests, new_clock, self._flush_hot)
        self._requests.on_drain = self._flush_hot_and_wait  # a leaving node's worker flushes first
        self._stages = StageFollower(self._requests, config.stages)
        self._membership = Membership(transport, self._requests, config.workers, self._repeat)
        self._replies: dict[int, dict[str, Any]] = {}

    # -------------------------------------------------------------- set-up

    @classmethod
    def attach(cls, token: str, timeout: float = 300.0) -> PS:
        """Attach to the worker node that started this process and join the job."""
        deadline = time.monotonic() + timeout
        digest = ""
        secret = job_secret()  # a process of the job has it (a child of its node inherits it)
        key = wire_key(secret)

        def prepare(description: dict[str, Any], fds: list[int]) -> PS:
            nonlocal digest
            config = RuntimeConfig.from_json(description["config"])
            stores = []
            offset = 0
            for index, (spec, table) in enumerate(zip(config.tables, description["tables"], strict=True)):
                count = int(table["fds"])
                stores.append(TableStore.attach(index, spec, fds[offset : offset + count]))
                offset += count
            lock = SharedLock.open(description["lock"])
            # after the tables' descriptors: the control block, then the usage counters
            control_block = Segment.from_fd(fds[offset], (int(description["control"]),), np.dtype(np.uint8))
            usage_words = (usage.words(len(stores)),)
            usage_block = Segment.from_fd(fds[offset + 1], usage_words, np.dtype(np.int64))
            # then where the node tells us that our localizes completed
            notices = Notices.attach(fds[offset + 2], fds[offset + 3], lock)
            node = int(description["node"])
            transport = open_transport(
                transport_kind(),
                client_of(node),
                key,
                config.bind_host,
                0,
                config.advertise_host,
                spin=spin_seconds(),
                max_message_bytes=message_bound([store.layout for store in stores]),
                size=limits.job_size(config),
            )
            transport.connect(COORDINATOR, f"tcp://{config.coordinator}")
            digest = str(description["digest"])
            rank = int(description["rank"])
            transport.wake_on(notices.event_fd, notices.waiting)
            return cls(
                config, node, rank, stores, lock, transport, control_block.array, usage_block.array, notices
            )

        ps = _attach_retrying(token, secret, prepare, deadline)
        try:
            ps._join(digest, deadline)
        except BaseException:
            ps.close()
            raise
        return ps

    def _join(self, digest: str, deadline: float) -> None:
        endpoint = self._requests.endpoint
        membership, welcome = register(self._transport, endpoint, self.node, digest, deadline)
        if welcome is not None:
            self._barriers.join_at(welcome.barrier, welcome.clock)
        self._membership.apply(membership)

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

    @property
    def num_workers(self) -> int:
        """How many workers the job has now."""
        return self._membership.num_workers

    @property
    def shard_map(self) -> ShardMap:
        """The job's shard map as this process last learned it (which server homes which keys)."""
        return self._requests.shard_map

    def wait(self, handle: Handle, timeout: float | None = None) -> Array | None:
        """Wait until ``handle`` completes; returns what ``handle.result()`` returns."""
        return self._requests.wait(handle, timeout)

    def wait_all(self, timeout: float | None = None) -> None:
        """Wait for every operation this process has in flight (pushes to hot keys buffered
        here included: they are flushed first)."""
        self._flush_hot()
        self._requests.wait_all(timeout)

    def barrier(self, timeout: float | None = None) -> None:
        """Wait until every worker reaches this barrier (after this worker's operations complete)."""
        self._barriers.barrier(timeout)

    def clock(self, timeout: float | None = None) -> int:
        """Finish this worker's clock: complete its operations in flight, advance its clock
        and return the new one; under bsp/ssp with staleness s, return only once every
        worker finished the clock s before it (docs/consistency.md)."""
        return self._barriers.clock(timeout)

    def data_shards(self, num_shards: int, epoch: int = 0, timeout: float | None = None) -> Iterator[int]:
        """The pieces of ``epoch``'s data this worker should train on, leased one at a time.

        ``for shard in ps.data_shards(64, epoch): train(shard_data(shard))``.  Pieces
        of workers that leave or die go to the others; workers that join take part.
        """
        return self._barriers.data_shards(num_shards, epoch, timeout)

    def stages(self, timeout: float | None = None) -> Iterator[tuple[Stage, int]]:
        """The units of the job's stages (``spec.stages``) this worker takes part in.

        ``for stage, unit in ps.stages(): train_one(stage.unit)`` -- one iteration per epoch or
        step of the stage the job is in (``unit`` counts within the stage; ``stage.offset +
        unit`` over the job).  Asking for the next iteration waits until every worker of the
        stage completed this one.  At a stage's end the job scales to the next stage's worker
        count: the iteration ends for a worker that leaves (its program should then return);
        one that joins starts at the job's current unit.
        """
        return self._stages.units(timeout)

    @property
    def stage(self) -> Stage | None:
        """The stage this worker is in, while it iterates :meth:`stages` (else None)."""
        return self._stages.current

    def report(self, metrics: Mapping[str, float] | None = None, **more: float) -> None:
        """Tell the job how training goes (``ps.report(rmse=0.9)``): it shows in the
        coordinator's /status and, on Kubernetes, in the ParameterServerJob's status.
        A value that is not a finite number (a diverged loss) is left out, with a warning."""
        values = {**(metrics or {}), **more}
        try:
            numbers = {str(k): float(v) for k, v in values.items()}
        except (TypeError, ValueError) as exc:
            raise UsageError(f"ps.report() takes numbers by name, e.g. ps.report(rmse=0.91): {exc}") from exc
        # NaN and infinity have no JSON form: sent, they would make the coordinator drop the
        # whole report as malformed (the epoch beside a diverged loss included)
        unfit = sorted(name for name, value in numbers.items() if not math.isfinite(value))
        if unfit:
            _not_finite(", ".join(f"{name}={numbers.pop(name)}" for name in unfit))
        body = control.Report(metrics=numbers)
        self._transport.send(COORDINATOR, messages.control(MsgType.REPORT, self._requests.endpoint, body))

    def stats(self) -> dict[str, int]:
        """This process's counters: calls, keys served locally and remotely (summed over
        the tables; per table they are on its node's /metrics), messages."""
        return {**self._requests.counters, **self._requests.usage.totals()}

    def node_stats(self, node: int | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """The counters of a node (default: this process's own node)."""
        target = self.node if node is None else node
        if not self._membership.has(target):  # asked of no one, it would only time out
            raise UsageError(f"node {target!r} is not a member of this job")
        requests = self._requests
        requests.make_room()
        req_id = requests.ids.take()
        ask = messages.control(MsgType.STATS, requests.endpoint, control.Empty(), req_id)
        self._transport.send(target, ask)
        deadline = requests.deadline(timeout)
        while req_id not in self._replies:
            requests.pump_until(deadline, lambda: f"statistics of node {target}")
        return self._replies.pop(req_id)

    def close(self) -> None:
        if self.closed:
            return
        if self._requests.ended is None and not self._requests.own.lost_reason:
            self._flush_hot_and_wait()  # acknowledged pushes to hot keys are not lost
        self.closed = True
        self._transport.close(linger=0.5)
        for store in self._stores:
            store.close()
        self._requests.close()

    def __repr__(self) -> str:
        return f"<dynaps.PS rank={self.rank}/{self.num_workers} node={self.node} tables={list(self._tables)}>"

    # -------------------------------------------------------------- the coordinator's messages

    def _flush_hot(self) -> bool:
        """Send every table's buffered pushes to hot keys (dynaps.client.hot_keys)."""
        flushed = [table.flush_hot() for table in self._tables.values()]
        return any(flushed)

    def _flush_hot_and_wait(self) -> None:
        """Flush, and wait until the owners applied what was flushed (nothing waits otherwise)."""
        if self._flush_hot():
            self._requests.wait_all()

    def _repeat(self) -> None:
        """The coordinator restarted: it forgot what we wait on; ask again."""
        self._barriers.repeat()
        self._stages.repeat()
        self._holdings.repeat()

    def _on_control(self, msg: Message) -> None:
        """A message that is not a reply to a request (those go to the requests' Handles)."""
        kind = msg.type
        if msg.sender != COORDINATOR and kind is not MsgType.STATS_REPLY:
            raise ProtocolError(f"client does not accept {kind.name} from {msg.sender}")
        if kind is MsgType.MEMBERSHIP:
            self._membership.apply(control.body_of(msg, control.Membership))
        elif kind is MsgType.MEMBERSHIP_DELTA:
            self._membership.apply_delta(control.body_of(msg, control.MembershipDelta))
        elif kind is MsgType.BARRIER_DONE:
            self._barriers.barrier_done(control.body_of(msg, control.Barrier).generation)
        elif kind is MsgType.CLOCK_MIN:
            self._barriers.clock_min(control.body_of(msg, control.Clock).clock)
        elif kind is MsgType.LEASE_REPLY:
            reply = control.body_of(msg, control.LeaseReply)
            self._barriers.leased(reply.epoch, reply.shard)
        elif kind is MsgType.STAGE_DONE:
            self._stages.answered(control.body_of(msg, control.StageDone))
        elif kind is MsgType.HOLDING_NOTED:
            self._holdings.on_noted(control.body_of(msg, control.Holding))
        elif kind is MsgType.STATS_REPLY:
            self._replies[msg.req_id] = control.body_of(msg, control.Stats).counters
        elif kind is MsgType.SHUTDOWN:
            self._requests.job_ended(control.body_of(msg, control.Shutdown).reason or "shut down")
        elif kind is MsgType.REFUSED:  # our node was declared lost (it may only be stopped)
            refused = control.body_of(msg, control.Refused)
            if refused.node != self.node:  # not ours: a fence for another node is not for us
                raise ProtocolError(f"REFUSED for node {refused.node}, this program's is {self.node}")
            self._requests.own.lost(refused.reason)
        elif kind is not MsgType.WELCOME:
            raise ProtocolError(f"client does not handle {kind.name}")


def _attach_retrying(
    token: str, secret: bytes, prepare: Callable[[dict[str, Any], list[int]], PS], deadline: float
) -> PS:
    """The node may still be starting: retry until it listens or the deadline passes."""
    while True:
        try:
            return attach(token, secret, prepare)
        except ClusterError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
