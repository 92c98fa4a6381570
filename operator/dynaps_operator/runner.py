"""Running the operator: in the foreground (``dynaps-operator``) or in a thread (tests, benchmarks).

Start-up order: check that the CRD is served (kopf, with scanning off, would otherwise watch
nothing and say little), start /healthz and /metrics, then hand over to kopf, which logs in,
starts the watches and calls the controller's start-up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import kopf

from dynaps.contract import API_GROUP, API_VERSION, PLURAL
from dynaps_operator.errors import KubeApiError, OperatorConfigError
from dynaps_operator.handlers import build_registry, configure_kopf
from dynaps_operator.kube import KubeClient
from dynaps_operator.probes import ProbeServer
from dynaps_operator.reconciler import Controller
from dynaps_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

# A TLS close waits for the API server's answer; past this, exit anyway (the OS closes them).
SOCKETS_CLOSE_SECONDS = 10.0


async def check_crd(api: KubeClient) -> None:
    try:
        resources = await api.get(f"/apis/{API_GROUP}/{API_VERSION}")
    except KubeApiError as exc:
        if exc.status == 404:
            raise OperatorConfigError(
                f"the ParameterServerJob CRD ({PLURAL}.{API_GROUP}) is not installed: "
                "kubectl apply -f crds/ (the Helm chart installs it)"
            ) from exc
        raise
    served = {r.get("name") for r in resources.get("resources") or []}
    if PLURAL not in served:
        raise OperatorConfigError(f"the API server does not serve {PLURAL}.{API_GROUP}/{API_VERSION}")


async def operate(
    settings: OperatorSettings,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    on_controller: Callable[[Controller, int], None] | None = None,
) -> None:
    """Run until ``stop_flag`` is set (or a signal, in the main thread)."""
    controller = Controller(settings)
    probes = ProbeServer(controller.metrics, controller.health)
    # Everything after the controller exists is inside the try: a start that fails (no CRD, the
    # API server unreachable, the probe port taken) must still close the client sessions, or
    # their pooled connections are left to the garbage collector (ResourceWarning).
    try:
        await check_crd(controller.api)
        port = await probes.start(settings.probe_host, settings.probe_port)
        log.info("dynaps-operator: /healthz and /metrics on %s:%d", settings.probe_host, port)
        if on_controller is not None:
            on_controller(controller, port)
        kopf_settings = kopf.OperatorSettings()
        configure_kopf(kopf_settings)
        await kopf.operator(
            registry=build_registry(controller, settings),
            settings=kopf_settings,
            standalone=True,  # one replica; no peering objects, no extra RBAC
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await probes.stop()
        await controller.stop()
        # Closed connections finish closing on later turns of the loop (see sockets.py).
        left = await controller.sockets.wait_closed(SOCKETS_CLOSE_SECONDS)
        if left:
            log.warning("dynaps-operator: %d connections still closing at exit", len(left))


class OperatorThread:
    """The operator in a background thread, for tests and benchmarks: ``with OperatorThread(s) as op``."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.settings = settings
        self.controller: Controller | None = None
        self.probe_port = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="dynaps-operator", daemon=True)

    def _attached(self, controller: Controller, port: int) -> None:
        self.controller = controller
        self.probe_port = port

    def _main(self) -> None:
        try:
            asyncio.run(operate(self.settings, self._stop, self._ready, self._attached))
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    def start(self, timeout: float = 60.0) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"the operator did not start within {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"the operator failed to start: {self.error}") from self.error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the operator did not stop within {timeout} s")

    def __enter__(self) -> OperatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
