"""Number types for the apps' command lines: a count of 0 or a negative step size is a usage
line naming the option (argparse's ``error: argument --batch: ...``), not a traceback from
deep inside the training."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from dynaps.client.hot_keys import MAX_SYNC_MS, MIN_SYNC_MS


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _checked(text: str, kind: type[int] | type[float], ok: Callable[[float], bool], rule: str) -> float:
    value = _number(text, kind)
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {value:g}")
    return value


def positive_int(text: str) -> int:
    """A count of at least 1 (epochs, a batch, a dimension, rows)."""
    return int(_checked(text, int, lambda v: v >= 1, "at least 1"))


def non_negative_int(text: str) -> int:
    """A count that may be 0 (a seed, look-ahead batches, a staleness bound)."""
    return int(_checked(text, int, lambda v: v >= 0, "0 or more"))


def positive_float(text: str) -> float:
    """A number above 0 (a step size, an interval)."""
    return _checked(text, float, lambda v: v > 0, "above 0")


def non_negative_float(text: str) -> float:
    """A number that may be 0 (a regularisation weight, a noise level, a skew)."""
    return _checked(text, float, lambda v: v >= 0, "0 or more")


def sync_ms(text: str) -> float:
    """Milliseconds between a replica's flushes: what ``Table.replicate`` accepts."""
    return _checked(
        text, float, lambda v: MIN_SYNC_MS <= v <= MAX_SYNC_MS, f"in [{MIN_SYNC_MS:g}, {MAX_SYNC_MS:g}] ms"
    )


def count_or_fraction(text: str) -> float:
    """How many of something: a whole count, or a fraction of them below 1 (hot keys)."""
    value = float(_number(text, float))
    if value < 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or a fraction in [0, 1), got {text!r}")
    return value
