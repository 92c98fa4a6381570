"""Checking what a caller gives a table: keys in range, rows of the right shape and dtype.

Every error names the table and what was expected; conversions that lose nothing (a list
of ints, another integer or float dtype) are made, anything else is a UsageError (or a
KeyRangeError for a key outside the table).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.client.handles import Array, Keys
from dynaps.errors import KeyRangeError, UsageError

_INT64 = np.dtype(np.int64)  # keys as users usually pass them: checked by identity, not equality


class Arguments:
    """The argument checks of one table (``name``: ``num_keys`` rows of ``dim`` ``dtype``)."""

    def __init__(self, name: str, num_keys: int, dim: int, dtype: np.dtype[Any]) -> None:
        self.name = name
        self.num_keys = num_keys
        self.dim = dim
        self.dtype = dtype
        self._row_shape = (dim,)

    def keys(self, keys: Any) -> Keys:
        """``keys`` as a 1-D int64 array, each in the table's range."""
        if type(keys) is not np.ndarray or keys.dtype is not _INT64 or keys.ndim != 1:
            keys = self._convert(keys)
        checked: Keys = keys
        n = len(checked)
        if n == 1:  # one entry per call (Lapse's granularity): a Python int compares fastest
            key = checked.item(0)
            if key < 0 or key >= self.num_keys:
                raise self._outside(np.array([key]))
        elif n and (checked.min() < 0 or checked.max() >= self.num_keys):
            raise self._outside(checked[(checked < 0) | (checked >= self.num_keys)])
        return checked

    def _outside(self, bad: npt.NDArray[Any]) -> KeyRangeError:
        which = f"key {int(bad[0])} is" if len(bad) == 1 else f"{len(bad)} keys are"
        example = "" if len(bad) == 1 else f", e.g. {int(bad[0])}"
        bounds = f"[0, {self.num_keys})"
        return KeyRangeError(f"{which} outside table {self.name!r}, whose keys are {bounds}{example}")

    def _convert(self, keys: Any) -> Keys:
        """Anything key-like (a list, an int, another integer dtype) as a 1-D int64 array."""
        array = np.asarray(keys)
        if array.ndim == 0:
            array = array.reshape(1)
        if array.ndim != 1:
            raise UsageError(f"keys for table {self.name!r} must be one-dimensional, got shape {array.shape}")
        kind = array.dtype.kind
        if kind not in "iu":
            if array.size == 0:
                return array.astype(np.int64)
            raise UsageError(f"keys for table {self.name!r} must be integers, got {array.dtype}")
        if kind == "u" and array.size and int(array.max()) >= self.num_keys:
            # before the cast: an unsigned key of 2**63 or more would wrap to a negative one
            raise self._outside(array[array >= self.num_keys])
        converted: Keys = array.astype(np.int64, copy=False)
        return converted

    def rows(self, values: Any, n: int, what: str) -> Array:
        """``values`` as ``n`` rows of the table's dim and dtype (one row may be 1-D)."""
        array = values if type(values) is np.ndarray else np.asarray(values)
        if array.dtype is not self.dtype and array.dtype != self.dtype:
            if array.dtype.kind not in "fiub":
                raise UsageError(f"{what} for table {self.name!r} must be numbers, got dtype {array.dtype}")
            array = array.astype(self.dtype)
        if array.shape != (n, self.dim):
            if n == 1 and array.shape == (self.dim,):
                array = array.reshape(1, self.dim)
            else:
                raise UsageError(
                    f"{what} for table {self.name!r} must have shape ({n}, {self.dim}) "
                    f"for {n} key{'' if n == 1 else 's'}, got {array.shape}"
                )
        return array

    def one_key(self, key: Any) -> Keys:
        """``pull_one``'s or ``push_one``'s key, checked, as a one-key array."""
        if isinstance(key, bool | np.bool_):
            raise UsageError(f"a key for table {self.name!r} must be an integer, got {key!r}")
        try:
            index = operator.index(key)
        except TypeError:
            raise UsageError(
                f"a key for table {self.name!r} must be one integer, got {type(key).__name__} {key!r}"
            ) from None
        if not 0 <= index < self.num_keys:
            raise self._outside(np.array([index]))
        return np.array([index], dtype=np.int64)

    def out(self, out: Any) -> None:
        """Raise unless ``out`` can take one row: ``(dim,)``, writeable, a dtype the table's converts to."""
        if type(out) is not np.ndarray or out.shape != self._row_shape:
            shape = getattr(out, "shape", type(out).__name__)
            raise UsageError(
                f"out for table {self.name!r} must be an array of shape ({self.dim},), got {shape}"
            )
        if not np.can_cast(self.dtype, out.dtype, "same_kind") or not out.flags.writeable:
            raise UsageError(
                f"out for table {self.name!r} must be a writeable array of a dtype {self.dtype} "
                f"converts to, got a {'' if out.flags.writeable else 'read-only '}{out.dtype} array"
            )
