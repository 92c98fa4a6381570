"""Memory for the process kubelet: quantities (``512Mi``) and the resident memory of a container.

There are no cgroups here, so a container's memory is what the kernel counts as resident (RSS)
for its process and every descendant, found through the parent links in /proc/<pid>/stat
(/proc/<pid>/task/<tid>/children is not available on every kernel). A process that leaves the
tree (a daemon reparented to init) is not counted. Reading every process's stat costs a few
milliseconds, so the kubelet does it only while some container has a memory limit.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_SUFFIX = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|k|M|G)?$")


def memory_bytes(text: str | int) -> int:
    """A memory quantity in bytes, rounded up (the suffixes the test manifests use)."""
    match = _QUANTITY.match(str(text))
    if match is None:
        raise ValueError(f"unsupported memory quantity {text!r}")
    return math.ceil(Fraction(match.group(1)) * _SUFFIX.get(match.group(2) or "", 1))


@dataclass(frozen=True)
class Process:
    parent: int
    resident: int  # bytes


def processes() -> dict[int, Process]:
    """Every process on the machine: its parent and resident bytes (a zombie holds 0)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # the process exited meanwhile
        # The fields after the command (which may hold spaces and parentheses), from field 3 on.
        fields = stat[stat.rfind(b")") + 2 :].split()
        found[int(entry)] = Process(parent=int(fields[1]), resident=int(fields[21]) * PAGE_SIZE)
    return found


def tree(root: int, table: dict[int, Process]) -> list[int]:
    """``root`` and its descendants, as a container's cgroup would hold them: programs that start
    a session of their own (the dynaps worker node's training program does) included."""
    children: dict[int, list[int]] = {}
    for pid, process in table.items():
        children.setdefault(process.parent, []).append(pid)
    members, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            members.append(pid)
            stack.extend(children.get(pid, ()))
    return members
