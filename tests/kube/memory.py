"""Memory for the process kubelet: quantities (``512Mi``) and the resident memory of a container.

There are no cgroups here, so a container's memory is what the kernel counts as resident (RSS)
for the processes of its process group (each container is a session and group leader of its
own, see procs.start_process). Reading /proc/<pid>/stat of every process costs a few
milliseconds, so the kubelet does it only while some container has a memory limit.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
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


def rss_by_group() -> Counter[int]:
    """Resident bytes of every process group on the machine (zombies count 0)."""
    groups: Counter[int] = Counter()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # the process exited meanwhile
        # Fields after the command (which may contain spaces and parentheses): state is field 3.
        fields = stat[stat.rfind(b")") + 2 :].split()
        pgrp, rss_pages = int(fields[2]), int(fields[21])
        groups[pgrp] += rss_pages * PAGE_SIZE
    return groups
