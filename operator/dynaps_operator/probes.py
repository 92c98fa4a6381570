"""The operator's own HTTP endpoint: ``/healthz`` (liveness) and ``/metrics`` (Prometheus).

Liveness means more than "the process answers": the reconcile workers must be alive and the
resync loop must have ticked recently, so a wedged event loop or a dead worker restarts the pod.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from dynaps_operator.metrics import Metrics


class ProbeServer:
    def __init__(self, metrics: Metrics, health: Callable[[], str]) -> None:
        self._metrics = metrics
        self._health = health  # "" when healthy, else why not
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the server's sockets
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        problem = self._health()
        if problem:
            return web.Response(status=503, text=problem + "\n")
        return web.Response(text="ok\n")

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
