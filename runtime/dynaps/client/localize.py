"""A program's localize of one table's keys, once its arguments are checked: which keys move.

Keys this node owns already stay; the others are marked INCOMING in the store at once
(requests for them then wait on our node, which answers them once they arrived), and one
LOCALIZE handle covers every key that is not here, counting those already on their way
(our node tells us when they have arrived); the pages their rows will fill are allocated
while the request travels (:mod:`dynaps.store.row_pages`).  The LOCALIZE itself leaves through
:class:`~dynaps.client.holdings.Holdings`, once the coordinator knows this node may hold
keys of their shards.  With ``allocation: static`` keys never move and nothing is sent.
"""

from __future__ import annotations

import numpy as np

from dynaps.client.handles import Handle, Keys
from dynaps.client.holdings import Holdings
from dynaps.client.requests import Requests
from dynaps.contract import Allocation
from dynaps.store import usage
from dynaps.store.row_pages import RowPages
from dynaps.store.table_store import INCOMING, TableStore
from dynaps.wire.protocol import MsgType


class Localizer:
    """Localizes keys of table number ``index`` (``store``) into this program's node."""

    def __init__(self, requests: Requests, index: int, store: TableStore, holdings: Holdings) -> None:
        self._requests = requests
        self._holdings = holdings  # a localize first tells the coordinator which shards we may hold
        self._index = index
        self._store = store
        self._node = requests.node
        self._lock = requests.lock  # shared with the node: taken around every access to the store
        self._usage = requests.usage.rows[index]  # this table's counters, shared with our node
        self._static = requests.config.allocation == Allocation.STATIC
        self._name = store.name
        self._pages = RowPages(store.row_mappings(), store.layout.row_bytes, store.spec.num_keys)

    def localize(self, keys: Keys, wait: bool) -> Handle | None:
        """Move ownership of ``keys`` (checked, none of them hot) to this node."""
        store, requests = self._store, self._requests
        requests.make_room()  # before keys are marked incoming
        if self._static or not len(keys):
            return None if wait else requests.done_handle(MsgType.LOCALIZE, self._name, None)
        if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
            keys = np.unique(keys)  # sorted keys (np.arange, a sampler's) skip the sort
        self._lock.acquire()
        try:
            where = store.loc[keys]
            away = where != self._node
            wanted = keys[away]
            incoming = where[away] == INCOMING
            fresh = wanted[~incoming] if incoming.any() else wanted
            store.loc[fresh] = INCOMING  # requests for these keys now wait on our node
        finally:
            self._lock.release()
        self._usage[usage.LOCALIZED] += len(wanted)
        if not len(wanted):
            return None if wait else requests.done_handle(MsgType.LOCALIZE, self._name, None)
        handle = requests.new_handle(MsgType.LOCALIZE, self._index, self._name, wanted, None, len(wanted))
        # keys already on their way here: our node tells us when they have arrived
        waiting = wanted[incoming] if len(fresh) < len(wanted) else None
        self._holdings.localize(self._index, handle, fresh, waiting)
        self._pages.allocate(fresh)  # while the LOCALIZE travels: the node then finds the pages there
        if wait:
            handle.result()
            return None
        return handle
