"""A small asynchronous Kubernetes REST client: dicts in, dicts out, on kopf's aiohttp.

Why not the official client: it is synchronous (every call would take a thread), and its model
classes cost memory and drop fields we pass through (pod templates).  Credentials come from
kopf's own login functions, so the operator and kopf authenticate identically; a 401 logs in
again once (service-account tokens rotate).

Reads are never served from a cache: the reconciler reads the job and its pods afresh, so it
never acts twice on the same observation (informer caches need Kubeflow's "expectations" for
that).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

from dynaps_operator.errors import ConflictError, KubeApiError, NamespaceTerminatingError, NotFoundError
from dynaps_operator.sockets import OpenSockets

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
# The API server's answer without data or spec (PartialObjectMetadata): enough to read an
# object's labels and owners, without the operator ever holding, e.g., a Secret's value.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
LoginFn = Callable[[], kopf.ConnectionInfo]


def login() -> kopf.ConnectionInfo:
    """Credentials: an explicit KUBECONFIG first, then the pod's service account, then ~/.kube/config."""
    settings = kopf.OperatorSettings()
    info: kopf.ConnectionInfo | None = None
    if os.environ.get("KUBECONFIG"):
        info = kopf.login_with_kubeconfig(settings=settings)
    info = info or kopf.login_with_service_account(settings=settings)
    info = info or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError(
            "no Kubernetes credentials: not in a pod with a service account, "
            "and no KUBECONFIG or ~/.kube/config"
        )
    return info


def connector(info: kopf.ConnectionInfo, sockets: OpenSockets) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=32, socket_factory=sockets.open)


async def kopf_login(sockets: OpenSockets, login_fn: LoginFn = login) -> kopf.AiohttpSession:
    """kopf's credentials as a session whose sockets ``sockets`` records (kopf closes it)."""
    info = login_fn()
    session = aiohttp.ClientSession(
        connector=connector(info, sockets),
        headers={**info.as_http_headers(), "User-Agent": "dynaps-operator/kopf"},
    )
    return kopf.AiohttpSession(
        aiohttp_session=session, server=info.server, default_namespace=info.default_namespace
    )


class KubeClient:
    def __init__(
        self, login_fn: LoginFn = login, timeout: float = 15.0, sockets: OpenSockets | None = None
    ) -> None:
        self._login = login_fn
        self._sockets = sockets or OpenSockets()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._lock = asyncio.Lock()

    async def _connect(self, fresh: bool = False) -> tuple[aiohttp.ClientSession, str]:
        async with self._lock:
            if fresh and self._session is not None:
                await self._session.close()
                self._session = None
            if self._session is None:
                info = self._login()
                self._session = aiohttp.ClientSession(
                    connector=connector(info, self._sockets),
                    headers={**info.as_http_headers(), "User-Agent": "dynaps-operator"},
                    timeout=self._timeout,
                )
                self._server = info.server.rstrip("/")
            return self._session, self._server

    async def close(self) -> None:
        async with self._lock:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Accept": accept}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            session, server = await self._connect(fresh=attempt > 0)
            try:
                async with session.request(
                    method, server + path, data=data, params=dict(query or {}), headers=headers
                ) as response:
                    text = await response.text()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise KubeApiError(method, path, 0, "Unreachable", str(exc) or type(exc).__name__) from exc
            if status == 401 and attempt == 0:
                log.info("the API server answered 401: logging in again")
                continue
            if status >= 400:
                raise _error(method, path, status, text)
            return json.loads(text) if text else None
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str, **query: str) -> JsonDict:
        result: JsonDict = await self.request("GET", path, query=query)
        return result

    async def metadata(self, path: str) -> JsonDict:
        """An object's ``metadata`` alone (labels, owner references; see :data:`METADATA_ONLY`)."""
        result: JsonDict = await self.request("GET", path, accept=METADATA_ONLY)
        metadata: JsonDict = result.get("metadata") or {}
        return metadata

    async def list(self, path: str, **query: str) -> list[JsonDict]:
        items: list[JsonDict] = (await self.get(path, **query)).get("items") or []
        return items

    async def create(self, path: str, body: JsonDict) -> JsonDict:
        result: JsonDict = await self.request("POST", path, body)
        return result

    async def patch(self, path: str, body: JsonDict) -> JsonDict:
        result: JsonDict = await self.request("PATCH", path, body, content_type=MERGE_PATCH)
        return result

    async def delete(self, path: str, *, uid: str | None = None, propagation: str | None = None) -> bool:
        """Deletes; False when the object was already gone (or is another object with that name)."""
        options: JsonDict = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if propagation:
            options["propagationPolicy"] = propagation
        try:
            await self.request("DELETE", path, options)
        except (NotFoundError, ConflictError):
            return False
        return True


def _error(method: str, path: str, status: int, text: str) -> KubeApiError:
    try:
        doc = json.loads(text)
        reason, message = str(doc.get("reason", "")), str(doc.get("message", text))
    except (ValueError, AttributeError):
        reason, message = "", text[:500]
    kind: type[KubeApiError] = KubeApiError
    if status == 404:
        kind = NotFoundError
    elif status == 409:
        kind = ConflictError
    elif status == 403 and "because it is being terminated" in message:
        kind = NamespaceTerminatingError
    return kind(method, path, status, reason, message)


def path(kind: str, namespace: str, name: str = "", *, group: str = "", subresource: str = "") -> str:
    """REST path of a namespaced object or collection; ``group`` is "group/version" beyond core."""
    prefix = f"/apis/{group}" if group else "/api/v1"
    result = f"{prefix}/namespaces/{namespace}/{kind}"
    if name:
        result += f"/{name}"
    if subresource:
        result += f"/{subresource}"
    return result
