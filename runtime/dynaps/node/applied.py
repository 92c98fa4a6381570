"""Exactly once: the updates a node applied recently, so that a request sent again is not
applied twice.

A client sends its requests in flight again when a node is lost (flag RETRY: the lost node
may have held or forwarded them), so a server may see a push it already applied; and a retry
can overtake the request it repeats (they take different paths), so then the original is the
duplicate. Every node therefore remembers, per requester, which positions of which requests
it applied (a bounded window: a requester also says which of its requests are all answered),
and those records travel with the keys when they move, so a retry that follows its keys to
their next owner is recognised there too. The requester's watermark travels with them: a
node where that requester never pushes would otherwise keep them, and pass them on with
every later move of their keys (w2v's frequent words, moved every minibatch, carried
thousands: bench/README.md). Kept with or without replication: without it, a
worker's loss still makes clients retry.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Collection

import numpy as np
import numpy.typing as npt

from dynaps.throttled_log import ThrottledLog
from dynaps.wire.protocol import REMEMBERED_REQUESTS, Message, is_client

log = logging.getLogger(__name__)

# Request ids of one process life lie within this of each other: a process starts its ids at
# a random 62-bit value (dynaps.client.requests), so another life's are almost surely further.
LIFE_SPAN = 1 << 40

Keys = npt.NDArray[np.int64]
Positions = npt.NDArray[np.int32]


class AppliedRequests:
    def __init__(self) -> None:
        # requester -> request -> (positions applied here, None: all; the keys they updated)
        self.applied: dict[int, collections.OrderedDict[int, tuple[Positions | None, Keys]]] = {}
        # requester -> the highest watermark it sent here (full id): records below are settled
        self.settled_below: dict[int, int] = {}
        self.evicted_unsettled = 0  # records dropped for room at or above their watermark
        # (our program's endpoint, its published watermark): read where records come and go
        self.own_program: tuple[int, Callable[[], int]] | None = None
        self._evicted_log = ThrottledLog(log, "dropped the record of an unsettled request for room")

    def __contains__(self, requester: int) -> bool:
        return requester in self.applied

    def after_update(self, msg: Message, keys: Keys, positions: Positions | None) -> None:
        """``positions`` (None: all) of a client's update were applied here to ``keys``."""
        if is_client(msg.requester):
            self.remember(msg.requester, msg.req_id, positions, keys)
            if msg.aux:
                self.forget_before(msg.requester, msg.req_id, msg.aux)

    def remember(self, requester: int, req_id: int, positions: Positions | None, keys: Keys) -> None:
        """Record that this node applied ``positions`` (None: all) of a request, to ``keys``
        (``keys[i]`` is the key at ``positions[i]``)."""
        if self._settled(requester, req_id):
            return  # an old request's record (adopted with keys): no copy of it can come
        seen = self.applied.setdefault(requester, collections.OrderedDict())
        before = seen.get(req_id)
        if before is not None:
            positions, keys = _merged(before, (positions, keys))
        seen[req_id] = (positions, keys)
        seen.move_to_end(req_id)
        if len(seen) > REMEMBERED_REQUESTS:
            # a settled record, not merely the first inserted: records arrive out of order
            # (adopted with keys, forwarded, retried) and one at the front may still be
            # needed; the requester keeps fewer unsettled ids than half the room
            # (dynaps.client.requests), so a settled one is there unless it misbehaves
            settled = [old for old in seen if self._settled(requester, old)]
            if settled:
                del seen[min(settled)]
            else:
                seen.popitem(last=False)
                self.evicted_unsettled += 1
                self._evicted_log(f"requester {requester} has more than {REMEMBERED_REQUESTS} unsettled")

    def _settled(self, requester: int, req_id: int) -> bool:
        """Whether ``req_id`` is below the requester's watermark (of the same process life:
        a restarted process starts its ids at another random point)."""
        below = self.settled_below.get(requester)
        return below is not None and below - LIFE_SPAN < req_id < below

    def forget_before(self, requester: int, req_id: int, watermark: int) -> None:
        """The requester has every answer to its requests below ``watermark`` (32 low bits)."""
        full = (req_id & ~0xFFFFFFFF) | watermark
        if full > req_id:
            full -= 1 << 32
        self.settle(requester, full)

    def _settle_own_program(self) -> None:
        """Settle what our program's published watermark says (dynaps.store.control_block):
        records of its requests that came with keys end here instead of travelling on."""
        if self.own_program is not None:
            endpoint, watermark = self.own_program
            below = watermark()
            if below:
                self.settle(endpoint, below)

    def settle(self, requester: int, full: int) -> None:
        """The requester has every answer to its requests below ``full`` (a whole id): a
        statement of the requester's, true on every node, so it travels with records."""
        below = self.settled_below.get(requester)
        if below is None or full > below or full <= below - LIFE_SPAN:  # later, or a new life
            self.settled_below[requester] = full
        full = self.settled_below[requester]
        seen = self.applied.get(requester)
        while seen:
            oldest = next(iter(seen))
            if oldest >= full:
                break
            del seen[oldest]

    def already_applied(self, msg: Message) -> npt.NDArray[np.bool_] | None:
        """Which keys of a push were applied here before (None: none).

        Checked for every push, not only retried ones: a retry can overtake the request
        it repeats (they take different paths), and then the original is the duplicate.
        """
        requests = self.applied.get(msg.requester)
        if requests is None or msg.req_id not in requests:
            return None
        seen = requests[msg.req_id][0]
        assert msg.keys is not None
        if seen is None:
            return np.ones(len(msg.keys), dtype=np.bool_)
        positions = msg.positions if msg.positions is not None else np.arange(len(msg.keys), dtype=np.int32)
        return _marked(positions, seen)

    def records_for(
        self, keys: Keys, among: Collection[tuple[int, int]] | None = None
    ) -> dict[str, object] | None:
        """The records of requests applied here to any of ``keys``: they travel with the keys,
        so a retry that follows the keys to their next owner is recognised there too.

        Only the part about ``keys`` travels: a retry reaches the new owner for the keys it
        holds, and the rest of a record stays here.  Records of old requests pass from owner
        to owner with every move, so shipping them whole made each relocation cost as much
        as the largest request ever applied to the table (issue 18: 5 ms per move in MF).
        ``among``: only the records of these (requester, request) pairs (a write-back sends
        those of the requests applied since the last one).
        """
        self._settle_own_program()
        if among is None:
            records = [
                (requester, req_id, positions, touched)
                for requester, seen in self.applied.items()
                for req_id, (positions, touched) in seen.items()
            ]
        else:
            records = []
            for requester, req_id in among:
                seen = self.applied.get(requester)
                record = None if seen is None else seen.get(req_id)
                if record is not None:  # not forgotten since
                    records.append((requester, req_id, *record))
        if not records or not len(keys):
            return None
        # one membership test for all records (a test per record cost more than the rest
        # of a relocation: KGE's localize-ahead moves keys every minibatch, issue 18)
        sizes = np.fromiter((len(r[3]) for r in records), dtype=np.int64, count=len(records))
        hit = _marked(np.concatenate([r[3] for r in records]), keys)
        if not hit.any():
            return None
        ends = np.cumsum(sizes)
        found = []
        for index in np.unique(np.searchsorted(ends, np.flatnonzero(hit), side="right")):
            requester, req_id, positions, touched = records[index]
            mine = hit[ends[index] - sizes[index] : ends[index]]
            # positions None: the whole request was applied here, true wherever it travels;
            # unaligned (never built here): the positions travel whole, which is safe
            shown = None
            if positions is not None:
                aligned = len(positions) == len(touched)
                shown = (positions[mine] if aligned else positions).tolist()
            found.append([requester, req_id, shown, touched[mine].tolist()])
        if not found:
            return None
        # the requesters' watermarks known here: records adopted where a requester pushes
        # rarely are settled there too, instead of travelling on with every move of their keys
        settled = [
            [r, self.settled_below[r]] for r in sorted({f[0] for f in found}) if r in self.settled_below
        ]
        return {"records": found, "settled": settled} if settled else {"records": found}

    def adopt_records(self, body: dict[str, object] | None, only: Keys | None = None) -> None:
        """Remember the records that came with rows (:meth:`records_for` at their sender).

        ``only``: the keys whose rows were kept here; the part of a record about other
        keys is not true here and is left out.
        """
        if not body:
            return
        self._settle_own_program()
        settled = body.get("settled")
        for pair in settled if isinstance(settled, list) else []:
            if isinstance(pair, list) and len(pair) == 2 and all(type(x) is int for x in pair):
                self.settle(pair[0], pair[1])
        records = body.get("records")
        if not isinstance(records, list):
            return
        parsed = [record for record in map(_parsed, records) if record is not None]
        if only is not None and parsed:
            # one membership test for all records (see records_for)
            hit = _marked(np.concatenate([keys for *_, keys in parsed]), only)
            ends = np.cumsum([len(keys) for *_, keys in parsed])
            kept_parts = np.split(hit, ends[:-1])
            parsed = [
                (requester, req_id, _aligned(chosen, keys, kept), keys[kept])
                for (requester, req_id, chosen, keys), kept in zip(parsed, kept_parts, strict=True)
                if kept.any()
            ]
        for requester, req_id, chosen, keys in parsed:
            self.remember(requester, req_id, chosen, keys)


def _parsed(record: object) -> tuple[int, int, Positions | None, Keys] | None:
    """One record from the wire, None if malformed (it protects nothing: skipped).  Keys
    and positions must be non-negative: they index bitmaps here (``_marked``)."""
    if not isinstance(record, list) or len(record) != 4:
        return None
    requester, req_id, positions, touched = record
    try:
        chosen = None if positions is None else np.asarray(positions, dtype=np.int32).reshape(-1)
        keys = np.asarray(touched, dtype=np.int64).reshape(-1)
        parsed = (int(requester), int(req_id), chosen, keys)
    except (TypeError, ValueError, OverflowError):
        return None
    if (len(keys) and keys.min() < 0) or (chosen is not None and len(chosen) and chosen.min() < 0):
        return None
    return parsed


def _aligned(positions: Positions | None, keys: Keys, kept: npt.NDArray[np.bool_]) -> Positions | None:
    """The positions of the ``kept`` keys of a record (unaligned positions stay whole: safe)."""
    if positions is None or len(positions) != len(keys):
        return positions
    return positions[kept]


def _marked(values: npt.NDArray[np.integer], chosen: npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
    """``np.isin(values, chosen)`` for small non-negative integers (positions in a request,
    keys of a table), through a bitmap: a fraction of isin's sort for the sizes seen here,
    and sizes in the millions fall back to it."""
    if not len(values) or not len(chosen):
        return np.zeros(len(values), dtype=np.bool_)
    top = int(max(values.max(), chosen.max())) + 1
    # a bitmap of ``top`` bytes costs far less than isin's hashing up to tens of millions
    # (1M keys: 0.09 ms against 7.6 ms for 50,000 chosen)
    if top > 16 * (len(values) + len(chosen)) + (1 << 24):
        return np.isin(values, chosen)
    mark = np.zeros(top, dtype=np.bool_)
    mark[chosen] = True
    marked: npt.NDArray[np.bool_] = mark[values]
    return marked


def _merged(
    old: tuple[Positions | None, Keys], new: tuple[Positions | None, Keys]
) -> tuple[Positions | None, Keys]:
    """Two records of one request as one; positions stay aligned with their keys."""
    (old_positions, old_keys), (new_positions, new_keys) = old, new
    if old_positions is None or new_positions is None:
        return None, np.union1d(old_keys, new_keys)
    if len(old_positions) == len(old_keys) and len(new_positions) == len(new_keys):
        positions, first = np.unique(np.concatenate([old_positions, new_positions]), return_index=True)
        return positions.astype(np.int32), np.concatenate([old_keys, new_keys])[first]
    return np.union1d(old_positions, new_positions).astype(np.int32), np.union1d(old_keys, new_keys)
