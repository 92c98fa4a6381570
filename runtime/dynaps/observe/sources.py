"""Reading a job: through ``kubectl`` on Kubernetes, over HTTP from a coordinator.

The runtime imports no Kubernetes client (an import-linter contract), and the user's
``kubectl`` already knows their cluster, context, credentials and plugins; so Kubernetes is
read by running it. Every failure a user can cause (no kubectl, no such job, a wrong token,
a coordinator that is not there) becomes a :class:`~dynaps.errors.DynapsError` with a
message, never a traceback.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from dynaps.contract import API_GROUP, KIND, PLURAL
from dynaps.errors import ClusterError, ConfigError
from dynaps.observe.view import LABEL_JOB, JobView, from_coordinator, from_kubernetes

KUBECTL_TIMEOUT = 60.0  # seconds one kubectl call may take
# kubectl's own log lines (klog: "E1207 08:56:11.453051   32291 memcache.go:265] ..."), which
# it prints before its one-line message when it cannot reach the API server
_KLOG_LINE = re.compile(r"^[IWEF]\d{4} \d{2}:\d{2}:\d{2}\.\d+ +\d+ [^ ]+:\d+\] ")
HTTP_TIMEOUT = 10.0
MAX_STATUS = 16 << 20  # bytes of /status read at most (it is bounded, and this is a client)
RESOURCE = f"{PLURAL}.{API_GROUP}"


class CoordinatorGoneError(ClusterError):
    """Nothing listens at the coordinator's address (a local run that ended, or a wrong one)."""


class CoordinatorDroppedError(ClusterError):
    """The coordinator closed a connection without answering: it may be stopping (a watch
    asks again, and then finds it gone or answering)."""


@dataclass(frozen=True)
class Kubectl:
    """How to run kubectl: the flags that pick the cluster and namespace."""

    namespace: str | None = None  # None: the context's namespace
    context: str | None = None
    kubeconfig: str | None = None

    def command(self, *args: str) -> list[str]:
        binary = shutil.which("kubectl")
        if binary is None:
            raise ConfigError("kubectl is not on PATH: install it, or give --address for a local run")
        flags = [f"--{name}={value}" for name, value in self._flags() if value]
        return [binary, *flags, *args]

    def _flags(self) -> list[tuple[str, str | None]]:
        return [("namespace", self.namespace), ("context", self.context), ("kubeconfig", self.kubeconfig)]

    @property
    def where(self) -> str:
        return f"namespace {self.namespace}" if self.namespace else "the current namespace"

    def run(self, *args: str) -> str:
        """kubectl's output; its error message (not a traceback) when it fails."""
        try:
            done = subprocess.run(
                self.command(*args), capture_output=True, text=True, timeout=KUBECTL_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"kubectl {' '.join(args)} did not answer in {KUBECTL_TIMEOUT:.0f} s") from exc
        except OSError as exc:
            raise ConfigError(f"cannot run kubectl: {exc}") from exc
        if done.returncode != 0:
            said = [line for line in done.stderr.strip().splitlines() if not _KLOG_LINE.match(line)]
            message = "\n".join(said) or done.stderr.strip() or f"exit code {done.returncode}"
            raise ClusterError(f"kubectl {args[0]}: {message}")
        return done.stdout

    def get(self, *args: str) -> Any:
        text = self.run("get", *args, "-o", "json")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ClusterError(f"kubectl get {' '.join(args)} printed something other than JSON") from exc

    def job(self, name: str) -> dict[str, Any]:
        """The ParameterServerJob as stored."""
        try:
            found = self.get(RESOURCE, name)
        except ClusterError as exc:
            if "NotFound" in str(exc) or "not found" in str(exc):
                raise ConfigError(f"no {KIND} {name!r} in {self.where}") from exc
            raise
        if not isinstance(found, dict):
            raise ClusterError(f"kubectl get {RESOURCE} {name} printed something other than an object")
        return found

    def items(self, *args: str) -> list[Any]:
        found = self.get(*args)
        items = found.get("items") if isinstance(found, dict) else None
        return items if isinstance(items, list) else []

    def pods(self, job: str) -> list[Any]:
        return self.items("pods", "-l", f"{LABEL_JOB}={job}")

    def events(self, job: str) -> list[Any]:
        return self.items(
            "events", "--field-selector", f"involvedObject.kind={KIND},involvedObject.name={job}"
        )


def read_kubernetes(kubectl: Kubectl, job: str) -> tuple[dict[str, Any], JobView]:
    """The job object (what ``-o json`` prints) and its view (with its pods and events)."""
    found = kubectl.job(job)
    return found, from_kubernetes(found, kubectl.pods(job), kubectl.events(job))


def coordinator_url(address: str) -> str:
    """``http://host:port`` from what a user types (``host:port``, with or without ``/status``)."""
    address = address.strip().rstrip("/").removesuffix("/status")
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address {address!r}: expected http://HOST:PORT")
    return address


def read_coordinator(address: str, token: str) -> tuple[dict[str, Any], JobView]:
    """A coordinator's /status document and its view."""
    url = coordinator_url(address)
    headers = {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"{url}/status", headers=headers)  # noqa: S310 (http(s) only, checked)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 (http(s) only, checked)
            body = response.read(MAX_STATUS + 1)
    except urllib.error.HTTPError as exc:
        if exc.code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
            raise ConfigError(
                f"the coordinator at {url} refused the token (check --token or --token-file)"
            ) from exc
        raise ClusterError(f"the coordinator at {url} answered {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise CoordinatorGoneError(f"no coordinator listens at {url}") from exc
        if isinstance(exc.reason, ConnectionResetError):
            raise CoordinatorDroppedError(
                f"the coordinator at {url} closed the connection: {exc.reason}"
            ) from exc
        raise ClusterError(f"cannot reach the coordinator at {url}: {exc.reason}") from exc
    except ConnectionResetError as exc:  # closed before it answered (http.client.RemoteDisconnected)
        raise CoordinatorDroppedError(f"the coordinator at {url} closed the connection: {exc}") from exc
    except (OSError, ValueError) as exc:  # a timeout, a reset, an address urllib cannot use
        raise ClusterError(f"cannot read the coordinator at {url}: {exc}") from exc
    if len(body) > MAX_STATUS:
        raise ClusterError(f"the coordinator at {url} sent a /status larger than {MAX_STATUS} bytes")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ClusterError(f"{url}/status is not JSON: is this a dynaps coordinator?") from exc
    return doc, from_coordinator(doc, url)
