"""The job secret: one random value per job, from which every credential of the job is derived.

The operator creates it (a Secret per job, key :data:`DATA_KEY`, mounted in every pod at
:data:`MOUNT_DIR`, the path in :data:`FILE_ENV`); ``dynaps run`` and ``LocalCluster``
make one in memory and hand it to their children in :data:`HEX_ENV`. It is never logged nor
written to a status.

Each use gets its own key derived from it, so a credential that leaks from one use (the HTTP
token the operator holds) does not give another (the key that signs ZeroMQ messages).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

HEX_ENV = "DYNAPS_SECRET"  # hex, for processes started by dynaps itself
FILE_ENV = "DYNAPS_SECRET_FILE"  # a file holding it (the mounted Secret)
DATA_KEY = "secret"  # the Secret's data key
MOUNT_DIR = "/var/run/secrets/dynaps"  # where job pods mount the Secret
SECRET_BYTES = 32


class SecretError(ValueError):
    """No usable job secret (missing, unreadable or too short)."""


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def encode(secret: bytes) -> str:
    """The text form kept in a Secret or an environment variable."""
    return secret.hex()


def decode(text: str, source: str) -> bytes:
    try:
        value = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise SecretError(f"the job secret in {source} is not hexadecimal") from exc
    if len(value) < SECRET_BYTES:
        raise SecretError(f"the job secret in {source} is {len(value)} bytes; at least {SECRET_BYTES}")
    return value


def load_secret(environ: Mapping[str, str] | None = None) -> bytes:
    env = os.environ if environ is None else environ
    if HEX_ENV in env:
        return decode(env[HEX_ENV], HEX_ENV)
    if FILE_ENV in env:
        path = env[FILE_ENV]
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SecretError(f"cannot read the job secret {FILE_ENV}={path}: {exc}") from exc
        return decode(text, path)
    raise SecretError(f"no job secret: set {HEX_ENV} or {FILE_ENV}")


def derive(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose (``"wire"``, ``"http"``...); HMAC-SHA256 as the derivation."""
    return hmac.new(secret, b"dynaps/" + purpose.encode(), hashlib.sha256).digest()


def wire_key(secret: bytes) -> bytes:
    """Signs and checks the job's ZeroMQ messages."""
    return derive(secret, "wire")


def http_token(secret: bytes) -> str:
    """The bearer token of the coordinator's HTTP endpoints (the operator sends it)."""
    return derive(secret, "http").hex()
