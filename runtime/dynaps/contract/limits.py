"""Bounds every document of the contract shares: how many nodes, tables and stages a job may
have, and what a name of a table or a stage may look like."""

from __future__ import annotations

import re

# Node ids are int16 on the wire and in the per-key directory; the top bit of the
# positive range marks a node's client endpoint, which leaves this many nodes.
MAX_NODES = 16_000
MAX_TABLES = 1024
MAX_STAGES = 64
# What the workers report (ps.report): the coordinator keeps at most this many names, of at
# most this many characters, and the operator reads no more of a /status than that.
MAX_REPORTED_NAMES = 64
MAX_REPORTED_NAME_LENGTH = 128

# a table's or a stage's name (the same rule for both: a letter or '_' first, at most 63 characters)
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")


def checked_name(kind: str, value: str) -> str:
    """``value`` if it is a valid name of a ``kind`` ("table", "stage"), else ValueError."""
    if not NAME_PATTERN.match(value):
        raise ValueError(
            f"{kind} name {value!r} must start with a letter or '_' and contain only "
            "letters, digits, '_', '.', '-' (at most 63 characters)"
        )
    return value
