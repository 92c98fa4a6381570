"""Allocating the shared pages of rows about to arrive, before they arrive.

A worker node's store is shared memory committed lazily (:mod:`dynaps.store.shm`): the
first write to a page allocates and zeroes it, in a page fault.  When a localize brings
rows the node never held, the node took those faults while it installed the TRANSFER, on
the localize's critical path: 100 rows of 400 bytes are ten pages, about 40 us on the
benchmark VM (bench/README.md).  The training program allocates them instead, with one
``MADV_POPULATE_WRITE`` per array, right after its LOCALIZE has left, while the request
travels to the home and the rows come back; the node then only maps pages that exist.

Only for keys that lie close together (their rows' pages at most about twice the pages
the rows fill): for keys scattered over the table it would take a call per page, or
allocate the pages of keys that never come.
"""

from __future__ import annotations

import errno
import mmap
from collections.abc import Sequence
from typing import Any

import numpy.typing as npt

MADV_POPULATE_WRITE = 23  # Linux 5.14 and later; Python 3.11's mmap module has no name for it
PAGE = mmap.PAGESIZE


class RowPages:
    """The pages of rows in ``mappings`` (one per array: values, then updater states), each
    ``row_bytes`` long, that this process has had allocated."""

    def __init__(self, mappings: Sequence[mmap.mmap], row_bytes: int, num_rows: int) -> None:
        self._mappings = list(mappings)
        self._row_bytes = row_bytes
        # one byte per page; its own pages are committed lazily too (0.025 % of the arrays)
        self._allocated = bytearray(num_rows * row_bytes // PAGE + 1)
        self._available = bool(self._mappings)  # a server's store is not shared: nothing to do

    def allocate(self, keys: npt.NDArray[Any]) -> None:
        """Have the pages of the rows of ``keys`` (sorted) allocated, unless done before."""
        if not self._available or not len(keys):
            return
        row_bytes = self._row_bytes
        first = int(keys[0]) * row_bytes // PAGE
        last = ((int(keys[-1]) + 1) * row_bytes - 1) // PAGE
        if last - first > 2 * (len(keys) * row_bytes // PAGE) + 2:
            return  # scattered keys: their pages are allocated when their rows are written
        if 0 not in self._allocated[first : last + 1]:
            return
        try:
            for mapping in self._mappings:
                mapping.madvise(MADV_POPULATE_WRITE, first * PAGE, (last - first + 1) * PAGE)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                self._available = False  # a kernel before 5.14: the node allocates, as before
            return  # else no memory now: the node's own write will find out
        self._allocated[first : last + 1] = b"\x01" * (last - first + 1)
