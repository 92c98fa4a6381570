"""How a shard map's columns of node ids travel inside a JSON body: little-endian int16, one
entry per shard (row after row for the backups), deflated, as base64 text.

A JSON list spends up to six bytes on a node id (``"999, "``) and a backup row adds its
brackets: at the contract's million shards with a thousand servers and three backups the
map came to 17.6 MiB, past the 16 MiB a body may hold, so no membership could be sent.
Packed, an id costs at most 2.67 bytes whatever the ids (the whole map at most 10.7 MiB),
and far less in practice: homes come in runs (each server a range of shards) and backups
follow their homes, so a thousand joiners of a million-shard job are sent kilobytes each,
not 10 MiB.  numpy and zlib do the work, never a Python object per shard; the receiver
inflates at most the bytes the ids take (a deflate bomb stops there).
"""

from __future__ import annotations

import base64
import binascii
import threading
import zlib
from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from dynaps.errors import ProtocolError
from dynaps.wire.protocol import inflate

NO_BACKUP = -1  # a backup slot that names no server (too few servers for the chain)

_WIRE = np.dtype("<i2")
_LEVEL = 1  # the fastest: shard maps compress well at any level
_KEPT = 4  # columns remembered: a process holds one map's two and makes the next one's


class _Recent:
    """The raw ids of the last few columns packed or unpacked in this process, by their text.

    A process applying a membership delta unpacks the map it holds, packs the changed
    columns, and then reads the new map: three passes through zlib for each column, 15-28 ms
    at a million shards in every process at every epoch.  Text keys this memo and stands
    for exactly one array (what :func:`unpack` makes of it), so a hit is the answer.  The
    ids are kept as the bytes that pack deflates or unpack inflated (immutable, no copy);
    each caller gets its own array of them.  At most :data:`_KEPT` columns: 16 MB at the
    largest map (2^20 shards, 3 backups), kilobytes at the default 1,024 shards.
    """

    def __init__(self) -> None:
        self._raw: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()  # a node's threads may read maps at the same time

    def keep(self, text: str, raw: bytes) -> None:
        with self._lock:
            self._raw[text] = raw
            self._raw.move_to_end(text)
            while len(self._raw) > _KEPT:
                self._raw.popitem(last=False)

    def forget(self) -> None:
        with self._lock:
            self._raw.clear()

    def find(self, text: str, count: int) -> bytes | None:
        with self._lock:
            raw = self._raw.get(text)
        return raw if raw is not None and len(raw) == 2 * count else None


_recent = _Recent()


def forget() -> None:
    """Drop the remembered columns: the next unpack decodes (a receiver's first read, as
    benchmarks measure it; tests)."""
    _recent.forget()


def pack(ids: npt.NDArray[np.int16]) -> str:
    """The ids (any shape), row after row, as text."""
    raw = np.ascontiguousarray(ids, dtype=_WIRE).tobytes()
    text = base64.b64encode(zlib.compress(raw, _LEVEL)).decode("ascii")
    _recent.keep(text, raw)
    return text


def unpack(text: object, count: int) -> npt.NDArray[np.int16]:
    """``count`` ids from :func:`pack`'s text; ProtocolError for anything else (not text,
    not base64, not deflate, another number of ids)."""
    size = 2 * count
    # deflate adds at most 5 bytes per 16 KiB block and 11 for the stream: base64 of that
    if not isinstance(text, str) or len(text) > 4 * ((size + 5 * (size >> 14) + 64) // 3 + 1):
        raise ProtocolError(f"a shard map column must be packed text of {count} node ids")
    raw = _recent.find(text, count)
    if raw is not None:
        return np.frombuffer(raw, dtype=_WIRE).astype(np.int16)
    try:
        deflated = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"a shard map column is not base64: {exc}") from exc
    raw = inflate(deflated, size, "a shard map column")  # never more than the ids take
    if len(raw) != size:
        raise ProtocolError(f"a shard map column must hold {count} node ids")
    _recent.keep(text, raw)
    return np.frombuffer(raw, dtype=_WIRE).astype(np.int16)
