"""The coordinator's HTTP endpoint: what the operator and ``LocalCluster`` talk to.

``GET /healthz``, ``GET /status`` (JSON, built by :func:`status_document`), ``GET
/metrics`` (Prometheus text) and
``POST`` requests that act on the job (``/shutdown``).  Reads come from the status
document the coordinator's own thread publishes; actions are queued for that thread, so
no state is shared between threads except through those two.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dynaps.coordinator.barriers import Barriers
from dynaps.coordinator.leases import Leases
from dynaps.coordinator.reports import Reports
from dynaps.coordinator.roster import MemberState, Roster
from dynaps.coordinator.shard_homes import ShardHomes
from dynaps.wire.protocol import client_of

log = logging.getLogger(__name__)

MAX_BODY = 1 << 16

StatusSource = Callable[[], dict[str, Any]]
ActionSink = Callable[[str, dict[str, Any]], None]
ACTIONS = frozenset({"shutdown", "scale", "drain", "checkpoint"})


def status_document(
    *,
    job: str,
    phase: str,
    version: int,
    started_at: float,
    exit_code: int | None,
    reason: str,
    roster: Roster,
    homes: ShardHomes,
    last_checkpoint: dict[str, Any] | None,
    leases: Leases,
    barriers: Barriers,
    reports: Reports,
) -> dict[str, Any]:
    """The /status document: the job as the operator and LocalCluster see it."""
    per_server: dict[str, int] = {}
    if homes.shard_map is not None:
        for home in homes.shard_map.homes.tolist():
            per_server[str(home)] = per_server.get(str(home), 0) + 1
    servers = roster.active("server")
    workers = roster.active("worker")
    return {
        "job": job,
        "phase": phase,
        "epoch": homes.epoch,
        "membershipVersion": version,
        "shardsPerServer": per_server,
        "migrationsInFlight": len(homes.rebalancer.running),
        "migrationsQueued": len(homes.rebalancer.queued),
        "migrationsCompleted": homes.rebalancer.completed,
        "recoveriesInFlight": len(homes.recoveries),
        # shards whose backup holds all their keys (a replica sync confirmed) and the rest
        "replication": homes.replicas.status(homes.replication),
        # recoveries that restored keys from anything but a synced replica
        "dataLoss": homes.losses.status(),
        "dataLossTotal": homes.losses.totals(),
        "lastCheckpoint": last_checkpoint,
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": started_at,
        "servers": {
            "desired": roster.desired["server"],
            "ready": sum(1 for m in servers if m.state == MemberState.READY),
        },
        "workers": {
            "desired": roster.desired["worker"],
            "ready": sum(1 for m in workers if m.client is not None and m.state == MemberState.READY),
            "finished": sum(1 for m in workers if m.exit_code is not None),
        },
        "lost": list(roster.lost),
        "metrics": dict(reports.metrics),
        "dataShards": leases.status(),
        # per worker rank, the latest barrier it reached (the straggler is the lowest)
        "barriers": {str(m.rank): barriers.reached(client_of(m.id)) for m in workers},
        "barrierPassed": barriers.generation - 1,
        "metricsByRank": {rank: dict(m) for rank, m in reports.by_rank.items()},
        "members": [
            {
                "id": m.id,
                "role": m.role,
                "name": m.name,
                "address": m.address,
                "rank": m.rank,
                "state": m.state,
                "ready": m.state != MemberState.JOINING,
                "attached": m.client is not None,
                "exitCode": m.exit_code,
                "clock": m.clock,
            }
            for m in roster.active()
        ],
    }


def metrics_text(status: dict[str, Any]) -> str:
    """Prometheus exposition of the status document."""
    phases = ("registering", "prepare", "running", "stopping")
    lines = [
        "# HELP dynaps_job_phase 1 for the job's current phase.",
        "# TYPE dynaps_job_phase gauge",
    ]
    lines += [f'dynaps_job_phase{{phase="{p}"}} {int(status.get("phase") == p)}' for p in phases]
    lines += [
        "# HELP dynaps_shard_map_epoch Epoch of the committed shard map.",
        "# TYPE dynaps_shard_map_epoch gauge",
        f"dynaps_shard_map_epoch {status.get('epoch', 0)}",
        "# HELP dynaps_nodes Nodes of the job by role and state.",
        "# TYPE dynaps_nodes gauge",
    ]
    for role in ("servers", "workers"):
        for state, value in sorted(status.get(role, {}).items()):
            lines.append(f'dynaps_nodes{{role="{role}",state="{state}"}} {value}')
    lines += [
        "# HELP dynaps_migrations_in_flight Shard migrations not yet committed.",
        "# TYPE dynaps_migrations_in_flight gauge",
        f"dynaps_migrations_in_flight {status.get('migrationsInFlight', 0)}",
        "# HELP dynaps_unsynced_shards Shards without a backup known to hold all their keys.",
        "# TYPE dynaps_unsynced_shards gauge",
        f"dynaps_unsynced_shards {status.get('replication', {}).get('unsynced', 0)}",
        "# HELP dynaps_data_loss_keys Keys restored from anything but a synced replica.",
        "# TYPE dynaps_data_loss_keys gauge",
        f"dynaps_data_loss_keys {status.get('dataLossTotal', {}).get('keys', 0)}",
    ]
    return "\n".join(lines) + "\n"


class StatusServer:
    """A small threaded HTTP server bound to one address."""

    def __init__(self, host: str, port: int, status: StatusSource, act: ActionSink) -> None:
        self.status_reads = 0  # how often /status was read (the coordinator lingers for one)

        def counted() -> dict[str, Any]:
            self.status_reads += 1
            return status()

        handler = _handler(counted, act)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="dynaps-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(status: StatusSource, act: ActionSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dynaps"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, doc: Any) -> None:
            self._reply(code, json.dumps(doc).encode(), "application/json")

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._reply(HTTPStatus.OK, b"ok\n", "text/plain")
            elif self.path == "/status":
                self._json(HTTPStatus.OK, status())
            elif self.path == "/metrics":
                self._reply(HTTPStatus.OK, metrics_text(status()).encode(), "text/plain; version=0.0.4")
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})

        def do_POST(self) -> None:
            action = self.path.strip("/")
            if action not in ACTIONS:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such action {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
                return
            raw = self.rfile.read(length) if length else b"{}"
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
            except ValueError as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"invalid JSON body: {exc}"})
                return
            act(action, body)
            self._json(HTTPStatus.ACCEPTED, {"accepted": action})

    return Handler
