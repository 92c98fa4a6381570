"""What happens to requests in flight when the job's membership changes.

:class:`Retries` is the part of :class:`~dynaps.client.requests.Requests` that follows the
nodes gone (left or died: never a destination again) and lost (died).  A request for a
gone node is parked here until the next membership says where its keys live; after a loss
(or, for some kinds, a departure) what is not yet answered is sent again, marked RETRY, to
the keys' homes; and a request sent again is held below the watermark a while longer
(:mod:`dynaps.client.retry_holds`), its late answers known as duplicates.

It sends through the callbacks it is given (the requests' ``send`` and write-back of rows),
and goes through the Handles in flight and the requests whose first send waits, which the
requests own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence, Set

import numpy as np
import numpy.typing as npt

from dynaps.client.handles import Handle, Keys
from dynaps.client.retry_holds import RetryHolds
from dynaps.store import usage
from dynaps.store.shardmap import ShardMap
from dynaps.store.table_store import TableStore
from dynaps.throttled_log import ThrottledLog
from dynaps.wire import messages, routing
from dynaps.wire.protocol import RETRY, Message, MsgType, client_of
from dynaps.wire.routing import group_by

log = logging.getLogger(__name__)

# sent again when a node leaves: arriving twice changes nothing (see Retries.apply)
REPEATABLE = frozenset({MsgType.PULL, MsgType.LOCALIZE})

# Whether updates in flight (PUSH, SET) are sent again at once after a node leaves, as after a
# loss.  Off from e7effb5 (2026-12-05 15:17) until 2026-12-06: a full run had applied one
# increment twice (test_elastic), because a migration's SHARD_COPY did not yet carry the
# applied-request records (the relocation fence a loss raises dates from when no route but
# TRANSFER did, under replication only).  The records now travel on every route a key leaves
# a departing node by (TRANSFER, SHARD_COPY, a worker's WRITEBACK: issue 13, audit F1/F4/F5),
# the model tests pass with it on while every request in flight is also sent again at random
# moments, and test_elastic passed nine runs of nine with it on.  Off, such a push waits for
# the silence limit below.
RESEND_UPDATES_AFTER_DEPARTURE = True

# Seconds without an answer after which a request is sent again as after a loss (then after
# twice as long, and so on): a message dropped without a membership change costs a delay, not
# the program (requestTimeoutSeconds, 120 s by default, fails it). Well above how long a
# request may rightly wait at a node (a migration's freeze, keys on their way, a node's wake).
SILENCE_SECONDS = 10.0

# Seconds what we queued for a node that left may take to reach it (it forwards stragglers
# for LEAVE_LINGER, 1 s, in dynaps.node.drain) before its socket is closed.
DEPARTED_LINGER = 2.0

# a request's table, the request, its keys, their positions in it
SendRows = Callable[[int, Handle, Keys, npt.NDArray[np.int32]], None]


class Retries:
    """The nodes gone and lost, the requests parked for them, and the requests sent again."""

    def __init__(
        self,
        endpoint: int,
        stores: Sequence[TableStore],
        handles: Mapping[int, Handle],
        unsent: Set[int],
        counters: dict[str, int],
        send: Callable[[int, Message], None],
        send_rows: SendRows,
        forget: Callable[[int, float], None],
        usage_rows: Sequence[memoryview],
        silence_seconds: float = SILENCE_SECONDS,
    ) -> None:
        """``handles``, ``unsent``, ``counters``: the requests' own (the retries are counted
        in ``counters``); ``send``: the requests' send; ``send_rows``: their write-back of
        the current rows of local keys; ``forget``: the transport's (endpoint, linger);
        ``usage_rows``: the tables' counters shared with our node (requests sent again, by
        cause: its /metrics); ``silence_seconds``: the first silence limit (resend_silent)."""
        self.endpoint = endpoint
        self.stores = stores
        self.handles = handles
        self.unsent = unsent
        self.counters = counters
        self.send = send
        self.send_rows = send_rows
        self.forget = forget
        self.usage_rows = usage_rows
        self.lost: set[int] = set()
        self.gone: set[int] = set()  # nodes that left or died: never a destination again
        self.parked: list[Message] = []  # requests for a gone node, sent on at the next membership
        # requests sent more than once: below the watermark a while longer, and their late
        # answers are duplicates
        self.resent = RetryHolds()
        # request id -> (when it is next sent again if still unanswered, the interval after
        # that): requests sent again for silence (resend_silent); absent: not yet
        self.silent: dict[int, tuple[int, int]] = {}
        self.silence_seconds = silence_seconds
        self._silence_log = ThrottledLog(log, "requests unanswered for long sent again to their keys' homes")

    def park(self, msg: Message) -> None:
        """``msg`` is for a gone node: send it on at the next membership."""
        self.parked.append(msg)

    def oldest_held(self) -> int | None:
        """The oldest request sent again that is still held below the watermark (None: none)."""
        return self.resent.oldest() if self.resent else None

    def answered(self, req_id: int) -> None:
        """``req_id`` completed: if it was sent again, its other copy may still be on its way."""
        self.resent.renew(req_id)
        if self.silent:
            self.silent.pop(req_id, None)

    def late(self, req_id: int) -> bool:
        """Whether an answer to ``req_id``, which is no longer in flight, may be a late one
        (the request was sent again, or a node was lost) rather than a protocol error."""
        return req_id in self.resent or bool(self.lost)

    def apply(self, shard_map: ShardMap, epoch: int, gone: set[int], lost: set[int]) -> None:
        """A new membership: ``gone`` nodes left or died (``lost``: died); ``shard_map`` and
        ``epoch``: the requests' newest.

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
        if self.parked:  # homes may have changed: send them where the keys live now
            parked, self.parked = self.parked, []
            for msg in parked:
                assert msg.keys is not None
                homes = shard_map.home_of(msg.keys, self.stores[msg.table].spec.num_keys)
                for home, part in routing.split(msg, homes, np.arange(msg.count), self.endpoint):
                    self.send(home, part)
        fresh = lost - self.lost
        if fresh:
            self.lost |= fresh
            for node in fresh:
                self.forget(node, 0.0)
                self.forget(client_of(node), 0.0)
        for node in departed:
            # no socket kept to a node that left: ZeroMQ would reconnect to its address for
            # ever and hand the job's password to whoever listens there next; what we had
            # queued for it may still reach it while it lingers
            self.forget(node, DEPARTED_LINGER)
            self.forget(client_of(node), DEPARTED_LINGER)
        if fresh:
            self._retry_outstanding(shard_map, epoch)
        elif departed:
            self._retry_outstanding(shard_map, epoch, None if RESEND_UPDATES_AFTER_DEPARTURE else REPEATABLE)

    def _retry_outstanding(
        self, shard_map: ShardMap, epoch: int, kinds: frozenset[MsgType] | None = None
    ) -> None:
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
            if kinds is None or handle.kind in kinds:
                self._send_again(handle, shard_map, epoch, usage.RESENT_MEMBERSHIP)

    def resend_silent(self, now_ns: int, shard_map: ShardMap, epoch: int) -> None:
        """Send again, as after a loss, each request that no answer came for within its
        silence limit (:data:`SILENCE_SECONDS` since it was sent, then twice as long after each
        copy).  A message dropped without a membership change (a cause not yet known) then costs
        a delay, not the program's failure when ``requestTimeoutSeconds`` passes; a copy that
        arrives twice is answered twice and applied once (:mod:`dynaps.node.applied`)."""
        silence = int(self.silence_seconds * 1e9)
        for gone in [req_id for req_id in self.silent if req_id not in self.handles]:
            del self.silent[gone]  # failed (timed out, the job ended) since: nothing to send
        for handle in list(self.handles.values()):
            due = self.silent.get(handle.req_id)
            next_ns, interval = due if due is not None else (handle.started + silence, silence)
            if now_ns >= next_ns and self._send_again(handle, shard_map, epoch, usage.RESENT_SILENCE):
                self.silent[handle.req_id] = (now_ns + 2 * interval, 2 * interval)
                self._silence_log(f"{handle!r}, sent {(now_ns - handle.started) / 1e9:.0f} s ago")

    def _send_again(self, handle: Handle, shard_map: ShardMap, epoch: int, cause: int) -> bool:
        """Send what is not yet answered of ``handle`` again, marked RETRY, to its keys' homes
        (``cause``: the usage counter it counts in); whether anything went."""
        keys = handle.keys
        if keys is None or handle.req_id in self.unsent:
            return False  # its first send waits for the coordinator (client/holdings.py)
        if handle.kind is MsgType.LOCALIZE:
            idx = np.arange(len(keys))
        elif handle.mask is not None:
            idx = np.flatnonzero(~handle.mask)
        else:
            idx = np.arange(len(keys))
            handle.mask = np.zeros(len(keys), dtype=np.bool_)
        if not len(idx):
            return False
        self.counters["requests_retried"] += 1
        self.usage_rows[handle.index][cause] += 1
        self.resent.hold(handle.req_id)
        if handle.local is not None:
            here = np.isin(idx, handle.local)
            if here.any():
                rewritten = idx[here]
                self.send_rows(handle.index, handle, keys[rewritten], rewritten.astype(np.int32))
                idx = idx[~here]
                if not len(idx):
                    return True
        num_keys = self.stores[handle.index].spec.num_keys
        homes = shard_map.home_of(keys[idx], num_keys)
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
                epoch=epoch,
                flags=RETRY,
            )
            self.send(home, retry)
        return True
