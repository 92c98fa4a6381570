"""The runtime's configuration: the job's RuntimeConfig plus this process's own settings.

The job-wide document comes from ``DYNAPS_CONFIG`` (JSON) or ``DYNAPS_CONFIG_FILE`` (a
mounted ConfigMap); what differs per pod comes from its own variables:

    DYNAPS_BIND_HOST       address to listen on (a pod binds 0.0.0.0)
    DYNAPS_ADVERTISE_HOST  address peers reach this process at (the pod IP)
    DYNAPS_DATA_PORT       port of the node's inbox (0: any free port)
    DYNAPS_COORDINATOR     host:port of the coordinator, overriding the document's
    DYNAPS_NODE_NAME       a readable name for logs and status (the pod name)
    DYNAPS_RANK            the worker rank this node asks for (the pod's ordinal)
    DYNAPS_ATTACH_TOKEN    a worker node's: let one process attach by this token instead of
                           starting a program (LocalCluster's runners); never on a command
                           line, which any user can read
    DYNAPS_LOG_LEVEL       logging level of dynaps' own loggers (default INFO)
    DYNAPS_SPIN_MICROS     how long a node or training process polls for an answer that
                           is due before it blocks (default 100; 0: block at once); a
                           program polls up to ten times that for a localize that usually
                           takes that long (dynaps.wire.spin)
    DYNAPS_TRANSPORT       tcp (default) or zmq: how the job's processes send each other
                           messages (every process of a job must use the same; zmq is the
                           transport before 2026-12-06, kept for comparison)
    DYNAPS_LAUNCHER_PID    set by a local launcher (LocalCluster, `dynaps run`) for the
                           processes it starts: they stop once it is gone
                           (dynaps.launcher_watch)
    DYNAPS_PROFILE_DIR     off by default: profile this process's CPU there (benchmarks;
                           see dynaps.profiling)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from dynaps.contract import CONFIG_ENV, CONFIG_FILE_ENV, RuntimeConfig, secret
from dynaps.errors import ConfigError


def job_secret(environ: Mapping[str, str] | None = None) -> bytes:
    """The job secret (the keys that sign its messages and prove a local attach derive from it).

    Every process of a job has it (``DYNAPS_SECRET`` or ``DYNAPS_SECRET_FILE``); a process
    without it stops here with a ConfigError instead of running unauthenticated.
    """
    try:
        return secret.load_secret(environ)
    except secret.SecretError as exc:
        raise ConfigError(f"{exc}: every dynaps process needs its job's secret") from exc


LAUNCHER_PID_ENV = "DYNAPS_LAUNCHER_PID"
ATTACH_TOKEN_ENV = "DYNAPS_ATTACH_TOKEN"  # noqa: S105  # the variable's name, not a token
# a worker node's child program attaches by this (the node sets it; dynaps.node.program)
ATTACH_ENV = "DYNAPS_ATTACH"


@dataclass(frozen=True)
class ProcessSettings:
    """Per-process settings that are not part of the job-wide document."""

    node_name: str  # how this process is named in logs and status
    rank: int | None  # the worker rank to ask the coordinator for
    log_level: str  # dynaps' log level
    attach_token: str | None = None  # a worker node's: one process attaches by it (ATTACH_TOKEN_ENV)
    launcher_pid: int | None = None  # a local launcher's pid: this process stops once it is gone


def load_config(environ: dict[str, str] | None = None) -> RuntimeConfig:
    """The RuntimeConfig of this process, with its per-pod overrides applied."""
    env = dict(os.environ if environ is None else environ)
    text = env.get(CONFIG_ENV)
    source = CONFIG_ENV
    if text is None and CONFIG_FILE_ENV in env:
        source = env[CONFIG_FILE_ENV]
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {CONFIG_FILE_ENV}={source}: {exc}") from exc
    if text is None:
        raise ConfigError(f"no job configuration: set {CONFIG_ENV} or {CONFIG_FILE_ENV}")
    try:
        config = RuntimeConfig.from_json(text)
    except ValidationError as exc:
        raise ConfigError(f"invalid job configuration in {source}:\n{exc}") from exc
    overrides: dict[str, object] = {}
    if "DYNAPS_BIND_HOST" in env:
        overrides["bind_host"] = env["DYNAPS_BIND_HOST"]
    if "DYNAPS_ADVERTISE_HOST" in env:
        overrides["advertise_host"] = env["DYNAPS_ADVERTISE_HOST"]
    if "DYNAPS_COORDINATOR" in env:
        overrides["coordinator"] = env["DYNAPS_COORDINATOR"]
    if "DYNAPS_DATA_PORT" in env:
        overrides["data_port"] = _int(env, "DYNAPS_DATA_PORT")
    return config.model_copy(update=overrides) if overrides else config


def process_settings(environ: dict[str, str] | None = None) -> ProcessSettings:
    env = os.environ if environ is None else environ
    rank = _int(dict(env), "DYNAPS_RANK") if env.get("DYNAPS_RANK") else None
    return ProcessSettings(
        node_name=env.get("DYNAPS_NODE_NAME", ""),
        rank=rank,
        log_level=env.get("DYNAPS_LOG_LEVEL", "INFO").upper(),
        attach_token=env.get(ATTACH_TOKEN_ENV) or None,
        launcher_pid=_int(dict(env), LAUNCHER_PID_ENV) if env.get(LAUNCHER_PID_ENV) else None,
    )


SPIN_ENV = "DYNAPS_SPIN_MICROS"
DEFAULT_SPIN_MICROS = 100


def spin_seconds(environ: Mapping[str, str] | None = None) -> float:
    """The spin budget of this process's transport, from ``DYNAPS_SPIN_MICROS``."""
    env = dict(os.environ if environ is None else environ)
    if not env.get(SPIN_ENV, "").strip():
        return DEFAULT_SPIN_MICROS * 1e-6
    micros = _int(env, SPIN_ENV)
    if not 0 <= micros <= 100_000:
        raise ConfigError(f"{SPIN_ENV}={env[SPIN_ENV]!r}: expected microseconds from 0 to 100000")
    return micros * 1e-6


def is_log_level(level: str) -> bool:
    """Whether ``level`` names a logging level (DEBUG, INFO, WARNING, ERROR, ...)."""
    return level in logging.getLevelNamesMapping()


def setup_logging(level: str) -> None:
    if not is_log_level(level):
        raise ConfigError(f"DYNAPS_LOG_LEVEL={level!r} is not a logging level")
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    logging.getLogger("dynaps").setLevel(level)


def _int(env: dict[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as exc:
        raise ConfigError(f"{name}={env[name]!r} is not an integer") from exc


TRANSPORT_ENV = "DYNAPS_TRANSPORT"
TRANSPORTS = ("tcp", "zmq")


def transport_kind(environ: Mapping[str, str] | None = None) -> str:
    """Which transport this process uses, from ``DYNAPS_TRANSPORT`` (default tcp)."""
    env = os.environ if environ is None else environ
    kind = env.get(TRANSPORT_ENV, "").strip().lower() or TRANSPORTS[0]
    if kind not in TRANSPORTS:
        raise ConfigError(f"{TRANSPORT_ENV}={env[TRANSPORT_ENV]!r}: expected one of {', '.join(TRANSPORTS)}")
    return kind
