"""Splitting a request by destination: the one helper clients and nodes share for routing."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Index = npt.NDArray[np.intp]


def group_by(dests: npt.NDArray[Any]) -> list[tuple[int, Index | None]]:
    """Split request indices by destination; ``None`` means "all of them" (the common case)."""
    if len(dests) == 0:
        return []
    first = dests[0]
    if len(dests) == 1 or bool((dests == first).all()):
        return [(int(first), None)]
    order = np.argsort(dests, kind="stable")
    ordered = dests[order]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    return [(int(dests[part[0]]), part) for part in np.split(order, cuts)]
