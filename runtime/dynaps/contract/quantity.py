"""Kubernetes resource quantities (``512Mi``, ``1.5Gi``, ``2G``, ``1e9``), read exactly.

The spec names memory sizes as Kubernetes does (``runPolicy.oomMemoryGrowth.maxMemory``, a
role's ``resources``), and the operator multiplies them: parsing to a :class:`~fractions.Fraction`
keeps ``1.5Gi`` and ``0.1Gi`` exact, where floats would round. Only what memory needs is read:
binary suffixes (``Ki`` .. ``Ei``), decimal ones (``k``, ``M`` .. ``E``; ``m``, milli, is legal
for memory too, if odd) and a decimal exponent; no signs other than ``+``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
DECIMAL = {"m": Fraction(1, 1000)} | {s: Fraction(1000) ** (i + 1) for i, s in enumerate("kMGTPE")}
# The number, then either a suffix or an exponent (Kubernetes' own grammar allows one of them).
QUANTITY_PATTERN = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)((Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)|[eE][-+]?[0-9]+)?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)


class QuantityError(ValueError):
    """Text that is not a Kubernetes quantity."""


def parse(text: str | int | float) -> Fraction:
    """The value of a quantity (bytes, for memory). Numbers are accepted as YAML gives them."""
    if isinstance(text, bool):
        raise QuantityError(f"{text!r} is not a Kubernetes quantity")
    if isinstance(text, int | float):
        text = repr(text)
    match = _QUANTITY.match(text) if isinstance(text, str) else None
    if match is None:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity (e.g. 512Mi, 1.5Gi, 2G)")
    number = Fraction(match.group(1))
    suffix = match.group(3) or ""
    if suffix in BINARY:
        return number * BINARY[suffix]
    if suffix in DECIMAL:
        return number * DECIMAL[suffix]
    if suffix:
        return number * Fraction(10) ** int(suffix[1:])
    return number


def bytes_of(text: str | int | float) -> int:
    """A memory quantity in whole bytes, rounded up (as the kubelet rounds a fractional byte)."""
    return math.ceil(parse(text))


def format_bytes(size: int) -> str:
    """``size`` as the largest binary unit that states it exactly (``1536Mi``, ``2Gi``, ``1000``)."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = BINARY[suffix]
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)
