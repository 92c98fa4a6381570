"""Number types for the apps' command lines: a count of 0 or a negative step size is a usage
line naming the option (argparse's ``error: argument --batch: ...``), not a traceback from
deep inside the training."""

from __future__ import annotations

import argparse
import math

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


def positive_int(text: str) -> int:
    """A count of at least 1 (epochs, a batch, a dimension, rows)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A count that may be 0 (a seed, look-ahead batches, a staleness bound)."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number above 0 (a step size, an interval)."""
    value = float(_number(text, float))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


def non_negative_float(text: str) -> float:
    """A number that may be 0 (a regularisation weight, a noise level, a skew)."""
    value = float(_number(text, float))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value:g}")
    return value


def sync_ms(text: str) -> float:
    """Milliseconds between a replica's flushes: what ``Table.replicate`` accepts."""
    value = float(_number(text, float))
    if not MIN_SYNC_MS <= value <= MAX_SYNC_MS:
        raise argparse.ArgumentTypeError(f"must be in [{MIN_SYNC_MS:g}, {MAX_SYNC_MS:g}] ms, got {value:g}")
    return value
