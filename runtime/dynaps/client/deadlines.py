"""When a wait of the training program's gives up, and how its timeout error names why.

Every blocking call (``handle.result(timeout)``, ``ps.barrier(timeout)``, ``ps.wait_all``...)
waits either as long as its ``timeout`` argument says or, without one, the job's
``requestTimeoutSeconds``; the error names whichever it was, so a program that passed
``timeout=5`` is not told about a limit of 120 s it never set.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass

from dynaps.errors import UsageError


@dataclass(frozen=True, slots=True)
class Deadline:
    at: float  # time.monotonic() when the wait gives up
    seconds: float
    source: str  # what set it, for the error: "timeout=5" or "request_timeout_seconds=120"

    def describe(self) -> str:
        return f"within {self.seconds:g} s ({self.source})"


def deadline_after(timeout: object, request_timeout: float) -> Deadline:
    """The deadline of a wait starting now: ``timeout`` seconds, or the job's default."""
    if timeout is None:
        source = f"request_timeout_seconds={request_timeout:g}"
        return Deadline(time.monotonic() + request_timeout, request_timeout, source)
    seconds = -1.0 if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) else float(timeout)
    if not seconds >= 0:  # not a number, negative, or NaN
        raise UsageError(f"timeout must be seconds >= 0, or None for the default; got {timeout!r}")
    return Deadline(time.monotonic() + seconds, seconds, f"timeout={seconds:g}")
