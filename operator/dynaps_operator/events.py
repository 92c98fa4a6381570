"""Kubernetes Events for the operator's decisions (``kubectl describe psjob`` shows them).

The operator posts its own Events instead of kopf's: the source is ``dynaps-operator``, every
reason is one of the documented condition reasons or an action name, and kopf's per-handler
messages (which would only say that a handler ran) stay in the log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from dynaps_operator import kube, names
from dynaps_operator.builders import JobRef
from dynaps_operator.errors import KubeApiError, NamespaceTerminatingError
from dynaps_operator.kube import KubeClient

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 1024  # the API server's limit on an Event's message


class EventRecorder:
    def __init__(self, api: KubeClient, instance: str) -> None:
        self._api = api
        self._instance = instance
        self.posted = 0

    async def post(self, ref: JobRef, type_: str, reason: str, message: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": names.JOB_API_VERSION,
                "kind": names.JOB_KIND,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "type": type_,
            "reason": reason,
            "message": message[:MESSAGE_LIMIT],
            "source": {"component": names.MANAGER, "host": self._instance},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        log.info("%s/%s: %s %s: %s", ref.namespace, ref.name, type_, reason, message)
        try:
            await self._api.create(kube.path("events", ref.namespace), event)
            self.posted += 1
        except NamespaceTerminatingError:
            log.debug("no Event for %s/%s: its namespace is being deleted", ref.namespace, ref.name)
        except KubeApiError as exc:  # an Event is best effort: never fail a reconcile for it
            log.warning("could not post an Event for %s/%s: %s", ref.namespace, ref.name, exc)
