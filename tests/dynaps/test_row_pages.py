"""A program allocates the shared pages of rows it localizes, and only those (row_pages)."""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterator

import numpy as np
import pytest

from dynaps.store.row_pages import MADV_POPULATE_WRITE, PAGE, RowPages
from dynaps.store.shm import Segment

ROWS, DIM = 2_000, 100  # float32: 400-byte rows, about ten to a page
ROW_BYTES = DIM * 4


@pytest.fixture
def segments() -> Iterator[list[Segment]]:
    """Two arrays of the table's shape (values and one updater state), nothing allocated."""
    made = [Segment.create(f"test.{i}", (ROWS, DIM), np.dtype(np.float32)) for i in range(2)]
    try:
        made[0].mapping.madvise(MADV_POPULATE_WRITE, 0, PAGE)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux 5.14)")
        raise
    made[0].mapping.madvise(mmap.MADV_REMOVE, 0, PAGE)  # back to nothing allocated
    yield made
    for seg in made:
        seg.close()  # the mapping goes with its numpy view


def allocated_pages(seg: Segment) -> int:
    return os.fstat(seg.fd).st_blocks * 512 // PAGE


def pages_of(first_key: int, last_key: int) -> int:
    return ((last_key + 1) * ROW_BYTES - 1) // PAGE - first_key * ROW_BYTES // PAGE + 1


def test_the_pages_of_close_keys_are_allocated_in_every_array(segments: list[Segment]) -> None:
    assert [allocated_pages(seg) for seg in segments] == [0, 0]
    pages = RowPages([seg.mapping for seg in segments], ROW_BYTES, ROWS)
    pages.allocate(np.arange(100, 200, dtype=np.int64))
    assert [allocated_pages(seg) for seg in segments] == [pages_of(100, 199)] * 2
    # keys with gaps, within twice the pages their rows fill: the span is allocated
    pages.allocate(np.arange(1000, 1200, 2, dtype=np.int64))
    assert allocated_pages(segments[1]) == pages_of(100, 199) + pages_of(1000, 1198)
    assert segments[0].array[100:200].sum() == 0  # allocated, not written


def test_scattered_keys_allocate_nothing(segments: list[Segment]) -> None:
    pages = RowPages([segments[0].mapping], ROW_BYTES, ROWS)
    pages.allocate(np.array([0, 700, 1999], dtype=np.int64))
    pages.allocate(np.arange(0, 2000, 40, dtype=np.int64))  # 50 keys over 200 pages
    assert allocated_pages(segments[0]) == 0


def test_pages_allocated_once_are_not_asked_for_again(segments: list[Segment]) -> None:
    seg = segments[0]
    pages = RowPages([seg.mapping], ROW_BYTES, ROWS)
    keys = np.arange(500, 600, dtype=np.int64)
    pages.allocate(keys)
    seg.mapping.madvise(mmap.MADV_REMOVE, 0, ROWS * ROW_BYTES)  # freed behind its back
    pages.allocate(keys)
    assert allocated_pages(seg) == 0  # no second system call for the same pages
    pages.allocate(np.arange(550, 650, dtype=np.int64))  # half of them new: the span again
    assert allocated_pages(seg) == pages_of(550, 649)


def test_nothing_shared_nothing_done() -> None:
    RowPages([], ROW_BYTES, ROWS).allocate(np.arange(10, dtype=np.int64))  # a server's store
