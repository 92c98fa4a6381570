"""The coordinator's HTTP endpoint: what the operator and ``LocalCluster`` talk to.

``GET /healthz``, ``GET /status`` (JSON, built by :func:`status_document`), ``GET
/metrics`` (Prometheus text) and ``POST`` requests that act on the job (``/scale``,
``/drain``, ``/checkpoint``, ``/shutdown``).  Reads come from the status document the
coordinator's own thread publishes; actions are queued for that thread, so no state is
shared between threads except through those two.

Anyone on the pod network can reach this port, so (docs/security.md):

* every endpoint but ``/healthz`` and ``/metrics`` (counts only) wants ``Authorization:
  Bearer <token>``, the token derived from the job secret
  (:func:`dynaps.contract.secret.http_token`), compared in constant time;
* a POST body is at most :data:`MAX_BODY` bytes with a well-formed ``Content-Length``, and is
  parsed into a strict model (:data:`BODIES`): no boolean as a count, no count outside the
  job's bounds, no unknown field;
* the server is bounded (:mod:`dynaps.telemetry.bounded_http`): :data:`MAX_CONNECTIONS`
  connections at once (at the cap a newcomer takes the slot of the oldest connection that
  has not shown the token), each socket read times out after :data:`READ_TIMEOUT` seconds, a
  connection is cut after :data:`REQUEST_DEADLINE` seconds whatever it does, and a request
  head (line and headers) holds at most ``bounded_http.MAX_HEAD`` bytes.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Annotated, Any

import numpy as np
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from dynaps.contract import MAX_NODES
from dynaps.coordinator.barriers import Barriers
from dynaps.coordinator.leases import Leases
from dynaps.coordinator.reports import Reports
from dynaps.coordinator.roster import MemberState, Roster
from dynaps.coordinator.shard_homes import ShardHomes
from dynaps.telemetry import bounded_http, exposition
from dynaps.wire.protocol import client_of

log = logging.getLogger(__name__)

MAX_BODY = 1 << 16  # the largest body an action needs is a few dozen bytes
MAX_CONNECTIONS = 32  # the operator polls with one connection at a time; LocalCluster likewise
READ_TIMEOUT = 5.0  # seconds one socket read may wait
REQUEST_DEADLINE = 15.0  # seconds one connection may live, however it trickles
_DIGITS = re.compile(r"[0-9]{1,10}")

StatusSource = Callable[[], dict[str, Any]]
ActionSink = Callable[[str, dict[str, Any]], bool]  # False: too many actions wait already
Bounds = Mapping[str, tuple[int, int]]  # "servers"/"workers" -> the job's (min, max)
# /healthz: what the kubelet's probe reads, it says only "ok"; /metrics: what Prometheus
# scrapes, counts and names only (docs/security.md)
UNAUTHENTICATED = frozenset({"/healthz", "/metrics"})


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ScaleBody(_Body):
    """``POST /scale``: the new node counts; an absent role keeps its count."""

    servers: Annotated[StrictInt, Field(ge=0, le=MAX_NODES)] | None = None
    workers: Annotated[StrictInt, Field(ge=0, le=MAX_NODES)] | None = None


class DrainBody(_Body):
    """``POST /drain``: the node (its pod name, or its id as text) that hands its keys away."""

    node: Annotated[StrictStr, Field(min_length=1, max_length=253)]


class EmptyBody(_Body):
    """``POST /checkpoint`` and ``POST /shutdown`` take no parameters."""


BODIES: dict[str, type[_Body]] = {
    "scale": ScaleBody,
    "drain": DrainBody,
    "checkpoint": EmptyBody,
    "shutdown": EmptyBody,
}
ACTIONS = frozenset(BODIES)
DEFAULT_BOUNDS: Bounds = {"servers": (1, MAX_NODES), "workers": (1, MAX_NODES)}


class BadRequestError(ValueError):
    """A request this endpoint refuses; ``status`` is the HTTP code to answer."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_action(action: str, raw: bytes, bounds: Bounds = DEFAULT_BOUNDS) -> dict[str, Any]:
    """The body of ``POST /<action>`` as the coordinator's command takes it, or
    :class:`BadRequestError` naming what is wrong."""
    model = BODIES.get(action)
    if model is None:
        raise BadRequestError(HTTPStatus.NOT_FOUND, f"no such action /{action}")
    try:
        body = model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["loc"] and e["type"] != "missing" else "")
            for e in exc.errors(include_url=False)
        )
        raise BadRequestError(HTTPStatus.BAD_REQUEST, f"/{action}: {problems}"[:500]) from exc
    fields: dict[str, Any] = body.model_dump(exclude_none=True)
    for role in ("servers", "workers"):
        count = fields.get(role)
        low, high = bounds.get(role, DEFAULT_BOUNDS[role])
        if count is not None and not low <= count <= high:
            raise BadRequestError(
                HTTPStatus.BAD_REQUEST, f"/{action}: {role}: {count} is outside the job's [{low}, {high}]"
            )
    return fields


def content_length(header: str | None) -> int:
    """The body size a request declares: absent is 0; anything but 1-10 digits is refused."""
    if header is None:
        return 0
    if not _DIGITS.fullmatch(header.strip()):
        raise BadRequestError(HTTPStatus.BAD_REQUEST, f"Content-Length {header[:40]!r} is not a size")
    length = int(header)
    if length > MAX_BODY:
        raise BadRequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes; at most {MAX_BODY}"
        )
    return length


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
    if homes.shard_map is not None:  # counted by numpy: a million shards, read every few seconds
        held, counts = np.unique(homes.shard_map.homes, return_counts=True)
        per_server = {str(home): count for home, count in zip(held.tolist(), counts.tolist(), strict=True)}
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
        "recoveriesStarted": homes.recoveries_started,
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
        "reportsDropped": reports.dropped,
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


class StatusServer:
    """The endpoint on one address: a bounded threaded HTTP server on its own thread.

    ``token`` is the bearer token every request but ``/healthz`` and ``/metrics`` must carry;
    ``bounds`` the job's (min, max) per role, which ``POST /scale`` must stay within;
    ``registry`` what ``/metrics`` exposes (:mod:`dynaps.coordinator.metrics`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        status: StatusSource,
        act: ActionSink,
        token: str,
        bounds: Bounds = DEFAULT_BOUNDS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not token:
            raise ValueError("the HTTP endpoint needs a token")
        # /status answers that showed the job ended, counted once written: the coordinator
        # lingers for one, then closes this server (an answer cut short would reach no one).
        # Not any answer: one asked before the end may be written after it, showing the job
        # still running, and the reader would never learn how it ended.
        self.end_reads = 0

        def answered(doc: dict[str, Any]) -> None:
            if doc.get("exitCode") is not None:
                self.end_reads += 1

        registry = registry or CollectorRegistry(auto_describe=True)
        handler = _handler(status, act, token, bounds, registry, answered)
        self._listener = bounded_http.Listener(
            (host, port), handler, MAX_CONNECTIONS, REQUEST_DEADLINE, "dynaps-http"
        )
        self.port = self._listener.port

    @property
    def refused(self) -> int:
        """Connections closed unanswered: :data:`MAX_CONNECTIONS` were open, each had shown the token."""
        return self._listener.server.refused

    @property
    def trusted(self) -> int:
        """Open connections that showed the token (a newcomer never takes their slots)."""
        return self._listener.server.trusted

    @property
    def cut(self) -> int:
        """Connections closed to make room for a newer one (they had not shown the token)."""
        return self._listener.server.cut

    def close(self) -> None:
        self._listener.close()


def _handler(
    status: StatusSource,
    act: ActionSink,
    token: str,
    bounds: Bounds,
    registry: CollectorRegistry,
    answered: Callable[[dict[str, Any]], None],
) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode()

    class Handler(bounded_http.BoundedHandler):
        server_version = "dynaps"
        timeout = READ_TIMEOUT  # StreamRequestHandler sets it on the socket

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

        def _reply(self, code: int, body: bytes, content_type: str, **headers: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, doc: Any, **headers: str) -> None:
            self._reply(code, json.dumps(doc).encode(), "application/json", **headers)

        def _path(self) -> str:
            return self.path.partition("?")[0]

        def _authorized(self) -> bool:
            if self._path() in UNAUTHENTICATED:
                return True
            # Header values arrive decoded as latin-1, so this encoding never fails.
            given = (self.headers.get("Authorization") or "").encode("latin-1", "replace")
            if hmac.compare_digest(given, expected):
                self.trust()  # a newcomer never takes this connection's slot
                return True
            self.close_connection = True
            self._json(
                HTTPStatus.UNAUTHORIZED,
                {"error": "this endpoint needs the job's token: Authorization: Bearer <token>"},
                WWW_Authenticate='Bearer realm="dynaps"',
            )
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            path = self._path()
            if path == "/healthz":
                self._reply(HTTPStatus.OK, b"ok\n", "text/plain")
            elif path == "/status":
                doc = status()
                self._json(HTTPStatus.OK, doc)
                answered(doc)
            elif path == "/metrics":
                self._reply(HTTPStatus.OK, exposition.render(registry), exposition.CONTENT_TYPE)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {path[:100]}"})

        def do_POST(self) -> None:
            if not self._authorized():
                return
            action = self._path().strip("/")
            try:
                if action not in BODIES:
                    raise BadRequestError(HTTPStatus.NOT_FOUND, f"no such action /{action[:100]}")
                if "Transfer-Encoding" in self.headers:
                    raise BadRequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
                length = content_length(self.headers.get("Content-Length"))
                raw = self.rfile.read(length) if length else b""
                if len(raw) != length:
                    raise BadRequestError(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length")
                body = parse_action(action, raw, bounds)
            except BadRequestError as exc:
                self.close_connection = True  # whatever is left unread must not be taken as a request
                self._json(exc.status, {"error": str(exc)})
                return
            if not act(action, body):
                error = "too many actions wait for the coordinator; send this one again later"
                self._json(HTTPStatus.TOO_MANY_REQUESTS, {"error": error}, Retry_After="1")
                return
            self._json(HTTPStatus.ACCEPTED, {"accepted": action})

    return Handler
