"""Reading the progress logs that tests' training programs append to, one line per round.

A program SIGKILLed mid-write can leave its last line cut short: the kernel checks for a
fatal signal at each page a write crosses, so a line that straddles a page boundary may be
half written (a full run read "12" for "123 ..."). Only newline-terminated lines are rounds.
"""

from __future__ import annotations

from pathlib import Path


def whole_lines(path: Path) -> list[list[str]]:
    """The fields of each whole line of ``path`` (none if it does not exist)."""
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().split("\n")[:-1]]
