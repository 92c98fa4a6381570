"""How a shard map's columns of node ids travel inside a JSON body: base64 of little-endian
int16, one entry per shard (row after row for the backups).

A JSON list spends up to six bytes on a node id (``"999, "``) and a backup row adds its
brackets: at the contract's million shards with a thousand servers and three backups the
map came to 17.6 MiB, past the 16 MiB a body may hold, so no membership could be sent.
Base64 costs 2.67 bytes per id whatever the ids, the whole map at most 10.7 MiB, and numpy
packs and unpacks it without a Python object per shard.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import numpy.typing as npt

from dynaps.errors import ProtocolError

_WIRE = np.dtype("<i2")


def pack(ids: npt.NDArray[np.int16]) -> str:
    """The ids (any shape), row after row, as base64 text."""
    return base64.b64encode(np.ascontiguousarray(ids, dtype=_WIRE).tobytes()).decode("ascii")


def unpack(text: object, count: int) -> npt.NDArray[np.int16]:
    """``count`` ids from :func:`pack`'s text; ProtocolError for anything else (not text,
    not base64, another number of ids)."""
    if not isinstance(text, str) or len(text) != 4 * -(-2 * count // 3):
        raise ProtocolError(f"a shard map column must be base64 text of {count} node ids")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"a shard map column is not base64: {exc}") from exc
    if len(raw) != 2 * count:
        raise ProtocolError(f"a shard map column must hold {count} node ids")
    return np.frombuffer(raw, dtype=_WIRE).astype(np.int16)
