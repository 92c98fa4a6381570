"""A node's ``/metrics``: what it served, moved and holds, and on a worker what its
training process asked for.

Nothing here runs on the request path.  The data plane counts in the plain integers it
keeps anyway (``NodeServer.stats``, ``NodeServer.table_stats``), the training process in
the array it shares with its node (:mod:`dynaps.store.usage`), and :class:`NodeCollector`
reads both when Prometheus scrapes, on the HTTP server's thread.  It only reads: a count
copied while the loop increments it is at most one message old.

Bytes are the value rows' bytes (keys times ``dim`` times the dtype's size), not the wire's:
what the job moves, without frames, keys and authentication.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from dynaps.node.server import NodeServer
from dynaps.store import usage
from dynaps.telemetry.exposition import Family, Scrape, families_by_name

_SLICE = 1 << 20  # entries compared at once when counting owned or dirty keys

FAMILIES = families_by_name(
    [
        Family(
            "dynaps_node_info",
            "gauge",
            "1, labelled with the node's id, role and worker rank.",
            ("node", "role", "rank"),
        ),
        # per table: the requests that reached this node, the keys it holds and that moved
        Family("dynaps_node_pull_requests", "counter", "Pull requests handled by this node.", ("table",)),
        Family(
            "dynaps_node_push_requests", "counter", "Push and set requests handled by this node.", ("table",)
        ),
        Family("dynaps_node_keys_pulled", "counter", "Keys this node answered pulls for.", ("table",)),
        Family("dynaps_node_keys_pushed", "counter", "Keys this node applied pushes or sets to.", ("table",)),
        Family(
            "dynaps_node_keys_forwarded",
            "counter",
            "Keys of requests this node sent on to their owner or home.",
            ("table",),
        ),
        Family(
            "dynaps_node_sent_bytes", "counter", "Value bytes of the pull replies this node sent.", ("table",)
        ),
        Family(
            "dynaps_node_received_bytes",
            "counter",
            "Value bytes of the pushes this node applied.",
            ("table",),
        ),
        Family("dynaps_node_owned_keys", "gauge", "Keys this node owns now.", ("table",)),
        Family(
            "dynaps_node_replication_dirty_keys",
            "gauge",
            "Keys held here updated since their last write-back to their home (replication lag).",
            ("table",),
        ),
        Family(
            "dynaps_node_keys_relocated",
            "counter",
            "Keys that moved to (in) or away from (out) this node by relocation (localize).",
            ("table", "direction"),
        ),
        Family(
            "dynaps_node_keys_migrated",
            "counter",
            "Keys copied to (in) or from (out) this node by shard migrations.",
            ("table", "direction"),
        ),
        Family(
            "dynaps_node_keys_recovered",
            "counter",
            "Keys this node restored after a node died: rebuilt (a lost home's shards, from a replica "
            "or checkpoint) or taken_back (a lost worker's keys, with their last write-back).",
            ("table", "how"),
        ),
        # the node as a whole
        Family("dynaps_node_messages", "counter", "Messages this node received."),
        Family(
            "dynaps_node_messages_dropped",
            "counter",
            "Messages dropped, by reason: malformed (also failing authentication) or from a lost node.",
            ("reason",),
        ),
        Family("dynaps_node_errors", "counter", "Requests answered with an error."),
        Family("dynaps_node_keys_replicated", "counter", "Rows this node sent down a replica chain."),
        Family("dynaps_node_keys_backed_up", "counter", "Rows this node stored as a backup."),
        Family(
            "dynaps_node_migrations_in_flight", "gauge", "Shard migrations under way here.", ("direction",)
        ),
        Family("dynaps_node_recoveries_in_flight", "gauge", "Recoveries of lost shards this node runs."),
        Family(
            "dynaps_node_held_requests",
            "gauge",
            "Requests waiting here: for keys on their way, a frozen shard, a newer epoch or a new home.",
        ),
        Family(
            "dynaps_node_replication_flush_age_seconds",
            "gauge",
            "Seconds since this node last wrote its held keys back to their homes (replication lag).",
        ),
        Family("dynaps_node_shard_map_epoch", "gauge", "Epoch of the newest shard map this node applied."),
        # a worker's training process, per table (dynaps.store.usage)
        Family("dynaps_client_pulls", "counter", "Pull calls of the training process.", ("table",)),
        Family("dynaps_client_pushes", "counter", "Push and set calls of the training process.", ("table",)),
        Family(
            "dynaps_client_keys_pulled",
            "counter",
            "Keys pulled, read in place (local), from the per-clock cache (cached) "
            "or asked of other nodes (remote).",
            ("table", "location"),
        ),
        Family(
            "dynaps_client_keys_pushed",
            "counter",
            "Keys pushed or set, in place (local) or sent to other nodes (remote).",
            ("table", "location"),
        ),
        Family("dynaps_client_keys_localized", "counter", "Keys asked to move to this worker.", ("table",)),
        Family(
            "dynaps_client_requests_resent",
            "counter",
            "Requests sent again: after a node was lost or left (membership), or after no answer came "
            "for 10 s or more (silence: a message dropped, or a node very slow).",
            ("table", "cause"),
        ),
        Family(
            "dynaps_client_received_bytes", "counter", "Value bytes of remote pulls' replies.", ("table",)
        ),
        Family("dynaps_client_sent_bytes", "counter", "Value bytes of remote pushes and sets.", ("table",)),
        Family(
            "dynaps_client_request_duration_seconds",
            "histogram",
            "Time from sending an operation that needed other nodes to its last answer.",
            ("table", "operation"),
        ),
    ]
)


class NodeCollector(Collector):
    """Families of :data:`FAMILIES` read from ``server`` (and ``usage``, a worker's
    training-process counters; None on a server)."""

    def __init__(
        self, server: NodeServer, role: str, rank: int | None, usage_array: npt.NDArray[np.int64] | None
    ) -> None:
        self._server = server
        self._role = role
        self._rank = rank
        self._usage = usage_array

    def collect(self) -> Iterator[Metric]:
        server = self._server
        scrape = Scrape(FAMILIES)
        one = scrape.add
        one("dynaps_node_info", 1, str(server.me), self._role, "" if self._rank is None else str(self._rank))
        writeback = server.writeback
        for index, store in enumerate(server.stores):
            table, row_bytes = store.name, store.layout.row_bytes
            counts = dict(server.table_stats[index])
            one("dynaps_node_pull_requests", counts["pulls"], table)
            one("dynaps_node_push_requests", counts["pushes"], table)
            one("dynaps_node_keys_pulled", counts["keys_pulled"], table)
            one("dynaps_node_keys_pushed", counts["keys_updated"], table)
            one("dynaps_node_keys_forwarded", counts["keys_forwarded"], table)
            one("dynaps_node_sent_bytes", counts["keys_pulled"] * row_bytes, table)
            one("dynaps_node_received_bytes", counts["keys_updated"] * row_bytes, table)
            one("dynaps_node_keys_relocated", counts["keys_received"], table, "in")
            one("dynaps_node_keys_relocated", counts["keys_sent"], table, "out")
            one("dynaps_node_keys_migrated", counts["keys_migrated_in"], table, "in")
            one("dynaps_node_keys_migrated", counts["keys_migrated_out"], table, "out")
            one("dynaps_node_keys_recovered", counts["keys_rebuilt"], table, "rebuilt")
            one("dynaps_node_keys_recovered", counts["keys_recovered"], table, "taken_back")
            one("dynaps_node_owned_keys", _count(store.loc, server.me), table)
            if writeback is not None:
                one(
                    "dynaps_node_replication_dirty_keys",
                    int(np.count_nonzero(writeback.dirty[index])),
                    table,
                )
            if self._usage is not None:
                self._client(scrape, index, table, row_bytes)
        stats = dict(server.stats)
        one("dynaps_node_messages", stats.get("messages", 0))
        one("dynaps_node_messages_dropped", stats.get("malformed", 0), "malformed")
        one("dynaps_node_messages_dropped", stats.get("dropped_from_lost", 0), "from_lost_node")
        one("dynaps_node_errors", stats.get("errors", 0))
        one("dynaps_node_keys_replicated", stats.get("keys_replicated", 0))
        one("dynaps_node_keys_backed_up", stats.get("keys_backed_up", 0))
        one("dynaps_node_migrations_in_flight", len(server.migrations.incoming), "in")
        one("dynaps_node_migrations_in_flight", len(server.migrations.outgoing), "out")
        one("dynaps_node_recoveries_in_flight", len(server.recoveries.running))
        held = (
            len(server.gate.held) + len(server.future) + len(server.parked) + server.relocations.queued_now()
        )
        one("dynaps_node_held_requests", held)
        if writeback is not None and writeback.last_flush:
            one("dynaps_node_replication_flush_age_seconds", time.monotonic() - writeback.last_flush)
        one("dynaps_node_shard_map_epoch", server.shard_map.epoch)
        yield from scrape.metrics()

    def _client(self, scrape: Scrape, index: int, table: str, row_bytes: int) -> None:
        assert self._usage is not None
        counts, histograms = usage.read(self._usage, index)
        scrape.add("dynaps_client_pulls", counts["pulls"], table)
        scrape.add("dynaps_client_pushes", counts["pushes"], table)
        for where in ("local", "remote"):
            scrape.add("dynaps_client_keys_pulled", counts[f"keys_pulled_{where}"], table, where)
            scrape.add("dynaps_client_keys_pushed", counts[f"keys_pushed_{where}"], table, where)
        scrape.add("dynaps_client_keys_pulled", counts["keys_pulled_cached"], table, "cached")
        scrape.add("dynaps_client_keys_localized", counts["keys_localized"], table)
        for cause in ("membership", "silence"):
            scrape.add("dynaps_client_requests_resent", counts[f"requests_resent_{cause}"], table, cause)
        scrape.add("dynaps_client_received_bytes", counts["keys_pulled_remote"] * row_bytes, table)
        scrape.add("dynaps_client_sent_bytes", counts["keys_pushed_remote"] * row_bytes, table)
        for operation, seen in histograms.items():
            scrape.histogram(
                "dynaps_client_request_duration_seconds",
                usage.LATENCY_BOUNDS,
                seen.cumulative,
                seen.sum_seconds,
                table,
                operation,
            )


def _count(array: npt.NDArray[Any], value: int) -> int:
    """How many entries equal ``value``, in slices: a table of 10^8 keys costs no 100 MB
    temporary per scrape."""
    return sum(
        int(np.count_nonzero(array[start : start + _SLICE] == value))
        for start in range(0, len(array), _SLICE)
    )


def registry(
    server: NodeServer, role: str, rank: int | None, usage_array: npt.NDArray[np.int64] | None
) -> CollectorRegistry:
    """A registry of this node's metrics alone (not prometheus_client's global one)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(server, role, rank, usage_array))
    return reg
