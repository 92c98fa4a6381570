"""Telling the coordinator which shards this worker may hold keys of, before it localizes them.

A recovery of a lost server's shards asks only the nodes the coordinator names as their
possible holders (:mod:`dynaps.coordinator.holders`), so a node must be named before any
home can record it as the owner of a key.  A worker's node gets keys of shards it does not
home only when its program localizes them: before the program's first LOCALIZE of a key of
shard s it sends HOLDING(s) to the coordinator, and the LOCALIZE leaves only once
HOLDING_NOTED came back (once per shard for the program's life: a round trip to the
coordinator on the first localize of a shard, none after).  The keys are marked INCOMING at
once (requests for them wait on our node), which is harmless: nothing of them moves before
a home sees the LOCALIZE, and a recovery the coordinator ordered before it noted the HOLDING
rebuilt them at their new home, where the LOCALIZE then goes.

A localize waiting for the note is not sent again after a loss (``Requests.unsent``): its
first send goes to the homes of the shard map current when the note arrives.  A coordinator
that restarts meanwhile forgot the question; :meth:`Holdings.repeat` asks again (the adopted
job's recoveries ask every node anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dynaps.client.handles import Handle, Keys
from dynaps.client.requests import Requests
from dynaps.errors import ProtocolError
from dynaps.store.shardmap import shard_of
from dynaps.wire import control, messages
from dynaps.wire.protocol import COORDINATOR, MsgType


@dataclass
class _Deferred:
    """A localize whose LOCALIZE waits until the coordinator noted its ``shards``."""

    index: int
    handle: Handle
    fresh: Keys
    waiting: Keys | None
    shards: npt.NDArray[np.int64]


class Holdings:
    """The shards this program told the coordinator about, and the localizes that wait for it."""

    def __init__(self, requests: Requests) -> None:
        self._requests = requests
        policy = requests.config.rebalance_policy
        self._num_shards = policy.num_shards
        self._partition = policy.partition
        self.noted = np.zeros(policy.num_shards, dtype=np.bool_)  # the coordinator names this node
        self._asked = np.zeros(policy.num_shards, dtype=np.bool_)  # HOLDING sent
        self._questions: dict[int, control.Holding] = {}  # HOLDINGs not answered yet, by id
        self._deferred: list[_Deferred] = []
        self._next_id = 1

    def localize(self, index: int, handle: Handle, fresh: Keys, waiting: Keys | None) -> None:
        """Send a localize now if the coordinator knows this node may hold its keys' shards,
        else once it does (see the module docstring)."""
        requests = self._requests
        shards = shard_of(fresh, requests.stores[index].spec.num_keys, self._num_shards, self._partition)
        unknown = ~self.noted[shards]
        if not unknown.any():
            requests.localize(index, handle, fresh, waiting)
            return
        needed = np.unique(shards[unknown])
        ask = needed[~self._asked[needed]]
        if len(ask):
            body = control.Holding(id=self._next_id, shards=[int(s) for s in ask])
            self._next_id += 1
            self._asked[ask] = True
            self._questions[body.id] = body
            requests.transport.send(COORDINATOR, messages.control(MsgType.HOLDING, requests.endpoint, body))
        self._deferred.append(_Deferred(index, handle, fresh, waiting, needed))
        requests.unsent.add(handle.req_id)

    def on_noted(self, body: control.Holding) -> None:
        """HOLDING_NOTED: the coordinator names this node for these shards from now on."""
        if max(body.shards) >= self._num_shards:
            raise ProtocolError(f"HOLDING_NOTED names shard {max(body.shards)} of {self._num_shards}")
        self._questions.pop(body.id, None)
        self.noted[np.asarray(body.shards, dtype=np.int64)] = True
        ready = [d for d in self._deferred if self.noted[d.shards].all()]
        if not ready:
            return
        self._deferred = [d for d in self._deferred if not self.noted[d.shards].all()]
        requests = self._requests
        for deferred in ready:  # in the order the program localized them
            requests.unsent.discard(deferred.handle.req_id)
            if deferred.handle.req_id in requests.handles:  # not failed meanwhile (the job ended)
                requests.localize(deferred.index, deferred.handle, deferred.fresh, deferred.waiting)

    def repeat(self) -> None:
        """The coordinator restarted: it forgot the questions it had not answered; ask again."""
        requests = self._requests
        for body in self._questions.values():
            requests.transport.send(COORDINATOR, messages.control(MsgType.HOLDING, requests.endpoint, body))
