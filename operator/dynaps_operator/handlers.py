"""The kopf side: thin handlers that only tell the controller which job to look at.

kopf watches ParameterServerJobs and the operator's pods (a server-side label selector keeps
other pods off the wire); the controller does the rest.  Only event handlers are used, so kopf
writes nothing to the objects: no finalizers, no progress annotations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from dynaps.contract import API_GROUP, API_VERSION, PLURAL
from dynaps_operator import kube, names
from dynaps_operator.reconciler import Controller
from dynaps_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


def configure_kopf(kopf_settings: kopf.OperatorSettings) -> None:
    # Our own Events, with documented reasons, replace kopf's per-handler ones.
    kopf_settings.posting.enabled = False
    # Least privilege: no cluster-wide list/watch of CRDs and namespaces. The CRD must exist when
    # the operator starts (the chart installs it first; the operator checks).
    kopf_settings.scanning.disabled = True
    kopf_settings.watching.label_selectors["pods"] = f"{names.LABEL_MANAGED_BY}={names.MANAGER}"
    # Reconnect watches regularly so a silently dropped connection heals within minutes.
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.networking.request_timeout = 30


def build_registry(controller: Controller, settings: OperatorSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        return await kube.kopf_login(controller.sockets)

    @kopf.on.startup(registry=registry)
    async def startup(**_: Any) -> None:
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.stop()

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
    async def job_event(type: str, name: str, namespace: str | None, **_: Any) -> None:
        if namespace:
            controller.job_event(type, namespace, name)

    @kopf.on.event("v1", "pods", labels={names.LABEL_JOB: kopf.PRESENT}, registry=registry)
    async def pod_event(labels: Mapping[str, str], namespace: str | None, **_: Any) -> None:
        if namespace:
            controller.pod_event(namespace, labels[names.LABEL_JOB])

    return registry
