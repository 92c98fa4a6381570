"""The operator's configuration: one object fed from ``DYNAPS_OPERATOR_*`` environment variables.

Every field names its variable and says what it does; ``dynaps-operator --help`` prints the
table, and the Helm chart sets each variable from a value of the same meaning in values.yaml
(a test keeps the three in step).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dynaps_operator.errors import OperatorConfigError

PREFIX = "DYNAPS_OPERATOR_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _setting(env: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": PREFIX + env, "help": help})


@dataclass(frozen=True)
class OperatorSettings:
    # Namespaces to watch, comma-separated; empty means every namespace (a ClusterRole is needed).
    namespaces: tuple[str, ...] = _setting(
        "NAMESPACES", (), "namespaces to watch, comma-separated; empty: all namespaces"
    )
    # Level of the operator's own log (kopf's and ours).
    log_level: str = _setting("LOG_LEVEL", "INFO", "log level: DEBUG, INFO, WARNING, ERROR")
    # Where /healthz and /metrics listen (the chart passes the pod IP).
    probe_host: str = _setting("PROBE_HOST", "0.0.0.0", "address of the /healthz and /metrics endpoint")
    # Their port; 0 picks a free one (tests).
    probe_port: int = _setting("PROBE_PORT", 8080, "port of the /healthz and /metrics endpoint (0: any)")
    # How many jobs are reconciled at the same time (one job is never reconciled twice at once).
    workers: int = _setting("WORKERS", 4, "jobs reconciled concurrently")
    # Every job is reconciled at least this often, even without any event (level-triggered safety net).
    resync_seconds: float = _setting("RESYNC_SECONDS", 30.0, "seconds between full resyncs of every job")
    # A running job's coordinator /status is polled this often (ownership, metrics, checkpoints).
    poll_seconds: float = _setting("POLL_SECONDS", 2.0, "seconds between polls of a running coordinator")
    # Timeout of one HTTP request to a coordinator.
    coordinator_timeout_seconds: float = _setting(
        "COORDINATOR_TIMEOUT_SECONDS", 2.0, "timeout of one request to a coordinator's HTTP endpoint"
    )
    # Timeout of one request to the Kubernetes API.
    api_timeout_seconds: float = _setting(
        "API_TIMEOUT_SECONDS", 15.0, "timeout of one Kubernetes API request"
    )
    # DYNAPS_LOG_LEVEL of the job pods the operator creates (a pod template's env overrides it).
    job_log_level: str = _setting("JOB_LOG_LEVEL", "INFO", "DYNAPS_LOG_LEVEL given to the jobs' pods")
    # Names this operator instance in the Events it posts (the chart passes the pod name).
    instance: str = _setting("INSTANCE", "", "reporting instance of Events (empty: the host name)")
    # Job pod templates may ask for privileged containers, host namespaces, hostPath volumes and
    # service accounts, and name any Secret, ConfigMap or claim of their namespace (labelled
    # dynaps.io/usable-by-jobs or not); job pods then run hardened only where their templates do
    # not say otherwise.
    allow_privileged_jobs: bool = _setting(
        "ALLOW_PRIVILEGED_JOBS", False, "let job templates ask for privileges (hostPath, privileged...)"
    )
    # Where the operator runs and its pods' labels: each job's NetworkPolicy lets only them reach
    # the coordinator's HTTP port (the chart passes both; empty: any source may, the token still guards it).
    pod_namespace: str = _setting("POD_NAMESPACE", "", "namespace of the operator's pod, for NetworkPolicies")
    pod_labels: str = _setting(
        "POD_LABELS", "", "labels of the operator's pods (k=v,k=v), for the jobs' NetworkPolicies"
    )

    def __post_init__(self) -> None:
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise OperatorConfigError(f"{PREFIX}LOG_LEVEL={self.log_level!r} is not a log level")
        if self.job_log_level.upper() not in logging.getLevelNamesMapping():
            raise OperatorConfigError(f"{PREFIX}JOB_LOG_LEVEL={self.job_log_level!r} is not a log level")
        if self.workers < 1:
            raise OperatorConfigError(f"{PREFIX}WORKERS must be at least 1, not {self.workers}")
        for name in ("resync_seconds", "poll_seconds", "coordinator_timeout_seconds", "api_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise OperatorConfigError(f"{env_name(name)} must be positive")
        if any(not key or not value for key, value in self.operator_labels.items()):
            raise OperatorConfigError(f"{PREFIX}POD_LABELS={self.pod_labels!r} is not k=v,k=v")
        if not 0 <= self.probe_port <= 65535:
            raise OperatorConfigError(f"{PREFIX}PROBE_PORT={self.probe_port} is not a port")

    @property
    def operator_labels(self) -> dict[str, str]:
        pairs = (item.partition("=") for item in self.pod_labels.split(",") if item.strip())
        return {key.strip(): value.strip() for key, _, value in pairs}

    @property
    def reporting_instance(self) -> str:
        return self.instance or socket.gethostname()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> OperatorSettings:
        """Settings from the environment; ``overrides`` (e.g. command-line options) win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in env:
                values[f.name] = _parse(name, env[name], f.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def env_name(field_name: str) -> str:
    found = next(f for f in dataclasses.fields(OperatorSettings) if f.name == field_name)
    return str(found.metadata["env"])


def describe() -> str:
    """The environment variables, their defaults and meanings (for --help and the docs)."""
    lines = []
    for f in dataclasses.fields(OperatorSettings):
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        lines.append(f"  {f.metadata['env']:<44} {f.metadata['help']} (default: {default!s})")
    return "\n".join(lines)


def _parse(name: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, tuple):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if isinstance(default, bool):
            word = text.strip().lower()
            if word not in _TRUE + _FALSE:  # a typo of "true" must not quietly mean false
                raise ValueError(word)
            return word in _TRUE
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError as exc:
        raise OperatorConfigError(f"{name}={text!r} is not a valid {type(default).__name__}") from exc
    return text.strip()
