"""A tiny JSON client for the Kubernetes REST API, for the test fixtures and the process kubelet.

Dicts in, dicts out: the kubelet copies pod specs and statuses around, and the official client's
model classes would drop fields and cost time. One persistent TLS connection per thread.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

JsonDict = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:500]}")
        self.status = status
        self.body = body


class KubeClient:
    def __init__(self, host: str, port: int, ca_file: Path, cert_file: Path, key_file: Path) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl.create_default_context(cafile=str(ca_file))
        self._ssl.load_cert_chain(str(cert_file), str(key_file))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPSConnection] = []

    def _connection(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self._ssl, timeout=30)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request(method, url, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                # A kept-alive connection the server closed: reconnect once.
                conn.close()
                if attempt == 1:
                    raise
        text = payload.decode(errors="replace")
        if response.status >= 400:
            raise ApiError(method, url, response.status, text)
        return json.loads(text) if text else None

    def get(self, path: str, **query: str) -> JsonDict:
        result: JsonDict = self.request("GET", path, query=query or None)
        return result

    def items(self, path: str, **query: str) -> list[JsonDict]:
        items: list[JsonDict] = self.get(path, **query).get("items") or []
        return items

    def create(self, path: str, body: JsonDict) -> JsonDict:
        result: JsonDict = self.request("POST", path, body)
        return result

    def patch(self, path: str, body: JsonDict, content_type: str = MERGE_PATCH) -> JsonDict:
        result: JsonDict = self.request("PATCH", path, body, content_type=content_type)
        return result

    def delete(self, path: str, body: JsonDict | None = None, *, missing_ok: bool = True) -> None:
        try:
            self.request("DELETE", path, body)
        except ApiError as e:
            if not (missing_ok and e.status in (404, 409)):
                raise

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def namespaced(kind_plural: str, namespace: str, name: str = "", *, api: str = "") -> str:
    """The REST path of a namespaced object or collection: namespaced("pods", "ns", "p");
    api is "group/version" for objects outside the core group."""
    prefix = f"/apis/{api}" if api else "/api/v1"
    path = f"{prefix}/namespaces/{namespace}/{kind_plural}"
    return f"{path}/{name}" if name else path
