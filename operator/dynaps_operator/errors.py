"""The operator's exceptions, by kind.

kopf decides from the class whether to retry: a user's invalid spec is permanent (retrying
cannot help; the spec has to change), a child that is not ready yet is temporary.  Library
errors (aiohttp, the API server's answers) are wrapped so that callers catch ours only::

    kopf.PermanentError
    └── InvalidSpecError             the spec is invalid; the message names the field
    kopf.TemporaryError
    └── ChildNotReadyError           a child is not there yet (e.g. a replaced pod still terminating)
    OperatorError
    ├── OperatorConfigError          a DYNAPS_OPERATOR_* setting is invalid
    ├── KubeApiError                 the Kubernetes API answered with an error or not at all
    │   ├── NotFoundError            404
    │   ├── ConflictError            409 (already exists, or a stale resourceVersion)
    │   └── NamespaceTerminatingError  403: the namespace is being deleted (nothing to do)
    └── CoordinatorError             a coordinator's HTTP endpoint failed or refused a request
        └── CoordinatorUnsupportedError   the runtime has no such endpoint (404): an older runtime
"""

from __future__ import annotations

import kopf


class InvalidSpecError(kopf.PermanentError):
    """The job's spec is invalid; the message names the field (``spec.workers.command: ...``)."""


class ChildNotReadyError(kopf.TemporaryError):
    """A child the next step depends on is not ready; the reconcile is retried after ``delay``."""


class OperatorError(Exception):
    """Base class of the operator's own errors."""


class OperatorConfigError(OperatorError):
    """The operator's configuration (environment, command line) is invalid."""


class KubeApiError(OperatorError):
    """The Kubernetes API answered with an error status (0 when it could not be reached)."""

    def __init__(self, method: str, path: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(KubeApiError):
    """404: the object does not exist."""


class ConflictError(KubeApiError):
    """409: the object already exists, or it changed since it was read."""


class NamespaceTerminatingError(KubeApiError):
    """403: nothing can be created in a namespace being deleted; its jobs go with it."""


class CoordinatorError(OperatorError):
    """A coordinator's HTTP endpoint could not be reached or answered with an error."""


class CoordinatorUnsupportedError(CoordinatorError):
    """The coordinator has no such endpoint: the job runs a runtime that predates it."""
