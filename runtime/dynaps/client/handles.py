"""Operations in flight: a :class:`Handle` per request, and how replies complete it.

Every pull, push, set or localize that needs other nodes gets a request id and a Handle;
its replies (PULL_REPLY, ACK, LOCALIZED, ERROR) may come from several nodes and, after
a retry, twice: :meth:`Handle.absorb` counts each answered key once and assembles a
pull's rows in request order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dynaps.errors import ClusterError, ProtocolError
from dynaps.wire.protocol import Message, MsgType

Array = npt.NDArray[Any]
Keys = npt.NDArray[np.int64]
REPLIES = frozenset({MsgType.PULL_REPLY, MsgType.ACK, MsgType.LOCALIZED, MsgType.ERROR})


class Waiter(Protocol):
    """What a Handle needs to wait for its replies: someone who receives them."""

    def wait(self, handle: Handle, timeout: float | None = None) -> Array | None: ...


class Handle:
    """An operation in flight.  ``result()`` waits for it (a pull returns the values)."""

    __slots__ = (
        "error",
        "index",
        "keys",
        "kind",
        "local",
        "mask",
        "on_done",
        "out",
        "remaining",
        "req_id",
        "rows",
        "started",
        "table",
        "waiter",
    )

    def __init__(
        self,
        waiter: Waiter | None,
        req_id: int,
        kind: MsgType,
        table: str,
        keys: Keys | None,
        out: Array | None,
        remaining: int,
    ) -> None:
        self.waiter = waiter  # None for an operation that completed when it was issued
        self.req_id = req_id
        self.kind = kind
        self.table = table
        self.keys = keys
        self.out = out
        self.remaining = remaining
        self.error: BaseException | None = None
        self.index = 0  # the table's index, to send the request again
        self.rows: Array | None = None  # a push's or set's rows, to send again
        self.mask: npt.NDArray[np.bool_] | None = None  # positions answered, once replies are partial
        # write-through: positions this process applied itself (sent again as rows, never as deltas)
        self.local: npt.NDArray[np.int32] | None = None
        self.started = 0  # time.perf_counter_ns() when it was sent (its latency is observed)
        # what a pull's values become when it completes (see then())
        self.on_done: Callable[[Array], Array] | None = None

    def done(self) -> bool:
        return self.remaining <= 0 or self.error is not None

    def then(self, step: Callable[[Array], Array]) -> None:
        """When this pull completes, its result becomes ``step(values)``, after the steps
        given before (a layer that asked for fewer keys spreads them back first)."""
        before = self.on_done
        self.on_done = step if before is None else (lambda values: step(before(values)))

    def result(self, timeout: float | None = None) -> Array | None:
        if not self.done():
            assert self.waiter is not None
            self.waiter.wait(self, timeout)
        if self.error is not None:
            raise self.error
        return self.out

    def absorb(self, msg: Message) -> npt.NDArray[np.int32] | None:
        """Count a reply (PULL_REPLY, ACK, LOCALIZED or ERROR) toward this operation.

        Replies of a request split across nodes carry positions into it; a retried
        request may be answered twice, so positions answered before are skipped.
        Returns the positions this reply newly answered (None for a whole answer).
        """
        kind = msg.type
        if kind is MsgType.ERROR:
            self.error = ClusterError(f"{self!r} failed on node {msg.sender}: {msg.text}")
            return None
        size = 0 if self.keys is None else len(self.keys)
        count = msg.count
        if kind is MsgType.LOCALIZED:  # a hint: answered twice after a retry is fine
            count = min(count, self.remaining)
        elif count > self.remaining and self.mask is None:
            raise ProtocolError(f"reply acknowledges {count} keys, {self.remaining} pending")
        positions = msg.positions
        values = msg.values
        if positions is not None:
            if len(positions) and int(positions.max()) >= size:
                raise ProtocolError("reply positions outside the request")
            if self.mask is None:
                self.mask = np.zeros(size, dtype=np.bool_)
            fresh = ~self.mask[positions]
            if not fresh.all():  # answered before: a retried request's duplicate
                positions = positions[fresh]
                values = values[fresh] if values is not None else None
            self.mask[positions] = True
            count = len(positions)
        elif self.mask is not None and kind is not MsgType.LOCALIZED:
            self.mask[:] = True  # a whole answer
            count = self.remaining
        if kind is MsgType.PULL_REPLY:
            assert values is not None
            out = self.out
            if out is None:  # sent whole to one node: the reply is usually all of it
                if positions is None and count == size:
                    self.out = values.copy()  # the frame's memory is read-only
                else:
                    out = self.out = np.empty((size, values.shape[1]), values.dtype)
                    out[positions] = values
            elif positions is None:
                out[:] = values
            else:
                out[positions] = values
        self.remaining -= count
        return positions

    def __repr__(self) -> str:
        state = "done" if self.done() else f"{self.remaining} keys pending"
        return f"<Handle {self.kind.name.lower()} {self.table} #{self.req_id} {state}>"
