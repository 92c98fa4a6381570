"""Which nodes may hold keys of a shard other than its home: whom a recovery must ask.

A lost server's directory (who holds each of its keys) is lost with it, so the new home of
its shards asks the nodes which of the shards' keys they hold or expect
(:mod:`dynaps.node.recovery`).  Asking every node costs 2 N answers and N new connections per
rebuilt shard; this module lets the coordinator name the few that can answer anything.

Only two ways make a node hold (``loc == own id``) or expect (``loc == INCOMING``) a key of
a shard it does not home:

* **a localize** by the node's training process.  Before its first LOCALIZE of a key of
  shard s, the program tells the coordinator (HOLDING) and waits for HOLDING_NOTED
  (:mod:`dynaps.client.holdings`); it sends the LOCALIZE only then.  So when the
  coordinator orders a recovery of s, every node that could have asked s's home for a key,
  and hence be recorded as its owner there, is already in :attr:`Holders.nodes`; a program
  whose HOLDING was not answered yet has sent no LOCALIZE of s (the keys it marked INCOMING
  meanwhile move only once a home sees one, and it goes to the new home).
* **a migration** of s away from a home A: keys released back to A while the shard was
  being copied stay with A after the commit (:meth:`dynaps.node.migration.Migrations.commit`).
  The coordinator adds A when it commits the move (:meth:`Holders.former_home`), before
  any later home of s exists that could be lost.

Everything else that writes ``loc`` acts on the node's own shards (a home taking back a
lost worker's keys, a migration's target at the commit, a rebuild) or on keys it already
expects (a re-sent copy).  A backup's replicas live in its value arrays, never in ``loc``.

The sets only grow while their nodes live: a node that gave every key of s back stays
listed (asking it costs one query; forgetting it safely would need it to say so, in order
with its program's HOLDING).  Dead or departed nodes are left out when a recovery is
ordered (:meth:`Holders.of`).  A coordinator that adopted a running job knows none of this
(:attr:`Holders.known` False): its recoveries ask every node, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class Holders:
    """The possible holders of each shard's keys besides its home (see the module docstring)."""

    def __init__(self, num_shards: int) -> None:
        self.num_shards = num_shards
        self.nodes: dict[int, set[int]] = {}  # shard -> nodes (shards nobody but the home holds: absent)
        self.known = True  # False after an adoption: who holds what is not known

    def note(self, node: int, shards: Iterable[int]) -> None:
        """``node``'s program will localize keys of ``shards`` (HOLDING)."""
        for shard in shards:
            self.nodes.setdefault(shard, set()).add(node)

    def former_home(self, node: int, shards: Iterable[int]) -> None:
        """A migration moved ``shards`` away from ``node``, which may keep keys released to it."""
        self.note(node, shards)

    def forget_all(self) -> None:
        """A coordinator that adopted a running job: what it did not see, it cannot know."""
        self.nodes.clear()
        self.known = False

    def of(self, shards: Iterable[int], alive: Callable[[int], bool]) -> list[int] | None:
        """The live nodes that may hold keys of ``shards``; None: ask every node."""
        if not self.known:
            return None
        found: set[int] = set()
        for shard in shards:
            members = self.nodes.get(shard)
            if members:
                gone = {node for node in members if not alive(node)}
                members -= gone  # node ids are never reused: a gone node never comes back
                found |= members
        return sorted(found)
