"""Talking to a job's coordinator over its small HTTP endpoint (``coordinatorHttpPort``).

The operator reaches the coordinator at its pod IP (the headless Service's name would do in a
cluster, but an operator started outside the cluster for development cannot resolve it).
Requests the operator makes, and what it expects the runtime to answer:

* ``GET /status`` -> the status document (see :mod:`dynaps_operator.coordinator_view`);
* ``POST /scale {"servers": N, "workers": M}`` -> 202; the coordinator admits new nodes and
  plans the migrations, and ``/status`` reports the new desired counts;
* ``POST /drain {"node": "<pod name>"}`` -> 202; that node hands its keys away and exits 0;
* ``POST /checkpoint {}`` -> 202; ``/status``'s ``lastCheckpoint`` changes when it is written.

A 404 means the runtime predates the endpoint (:class:`CoordinatorUnsupportedError`).

Every request carries ``Authorization: Bearer <token>``, the token derived from the job's
Secret (the caller reads it).  One operator serves every job, so an answer is read up to
:data:`MAX_ANSWER` bytes: a coordinator that sends more (a bug, a process that took its
port, or a coordinator image of the job author's own) gets an error, not the operator's
memory.  Bytes are not the whole story: parsed, 4 MiB of ``{},`` are 100 MB of Python objects,
so an answer with more than :data:`MAX_VALUES` values is refused before it is parsed (its
commas and brackets are counted): 500,000 values of ``{}`` took 19 MB to parse.  Parses run on the event
loop, one at a time; what is kept of an answer is bounded by
:func:`~dynaps_operator.coordinator_view.parse_status`.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from dynaps_operator.errors import CoordinatorError, CoordinatorUnsupportedError
from dynaps_operator.sockets import OpenSockets

MAX_ANSWER = 4 << 20  # /status grows by a few hundred bytes per member: thousands of nodes fit
# /status holds about 11 values per member: 16,000 members (MAX_NODES) and the rest fit
MAX_VALUES = 500_000
_CHUNK = 1 << 16


class CoordinatorClient:
    def __init__(self, port: int, timeout: float = 2.0, sockets: OpenSockets | None = None) -> None:
        self.port = port
        self._sockets = sockets or OpenSockets()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(socket_factory=self._sockets.open),
                # The coordinator never compresses: a compressed answer (someone else's) stays
                # as many bytes as the read cap counts, never inflated before it (audit, finding 12)
                auto_decompress=False,
                headers={"Accept-Encoding": "identity"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def status(self, host: str, token: str) -> dict[str, Any]:
        doc = await self._request("GET", host, "/status", None, token)
        if not isinstance(doc, dict):
            raise CoordinatorError(f"coordinator at {host}: /status is not a JSON object")
        return doc

    async def act(self, host: str, action: str, body: dict[str, Any], token: str) -> Any:
        return await self._request("POST", host, f"/{action}", body, token)

    async def _request(self, method: str, host: str, path: str, body: Any, token: str) -> Any:
        url = f"http://{host}:{self.port}{path}"
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self._client().request(
                method, url, data=None if body is None else json.dumps(body), headers=headers
            ) as response:
                status = response.status
                raw = await _read_capped(response, f"{method} {url}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CoordinatorError(f"{method} {url}: {exc or type(exc).__name__}") from exc
        text = raw.decode("utf-8", "replace")
        values = raw.count(b",") + raw.count(b"{") + raw.count(b"[")
        if values > MAX_VALUES:
            raise CoordinatorError(
                f"{method} {url}: the answer holds {values} values; at most {MAX_VALUES} are parsed"
            )
        if status == 404:
            raise CoordinatorUnsupportedError(f"{method} {url}: the coordinator has no such endpoint")
        if status == 401:
            raise CoordinatorError(f"{method} {url}: 401: the coordinator refused the job's token")
        if status >= 400:
            raise CoordinatorError(f"{method} {url}: {status} {text[:200]}")
        try:
            return json.loads(text) if text else None
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise CoordinatorError(f"{method} {url}: the answer is not JSON") from exc


async def _read_capped(response: aiohttp.ClientResponse, what: str) -> bytes:
    """The whole answer, or :class:`CoordinatorError` as soon as it passes :data:`MAX_ANSWER`."""
    declared = response.content_length
    if declared is not None and declared > MAX_ANSWER:
        raise CoordinatorError(f"{what}: an answer of {declared} bytes; at most {MAX_ANSWER} are read")
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise CoordinatorError(f"{what}: the answer passed {MAX_ANSWER} bytes; not read further")
        parts.append(chunk)
    return b"".join(parts)
