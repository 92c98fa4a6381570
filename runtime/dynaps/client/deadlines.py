"""When a wait of the training program's gives up, and how its timeout error names why.

Every blocking call (``handle.result(timeout)``, ``ps.barrier(timeout)``, ``ps.wait_all``...)
waits either as long as its ``timeout`` argument says or, without one, the job's
``requestTimeoutSeconds``; the error names whichever it was, so a program that passed
``timeout=5`` is not told about a limit of 120 s it never set.
"""

from __future__ import annotations

import numbers
import time
from typing import NamedTuple

from dynaps.errors import UsageError


class Deadline(NamedTuple):  # a tuple: made on every wait, cheaper than a frozen dataclass
    at: float  # time.monotonic() when the wait gives up
    seconds: float
    given: bool  # by the caller's timeout, else the job's request_timeout_seconds

    def describe(self) -> str:
        """For the timeout's error only: not formatted on the waits that end in time."""
        source = "timeout" if self.given else "request_timeout_seconds"
        return f"within {self.seconds:g} s ({source}={self.seconds:g})"


def deadline_after(timeout: object, request_timeout: float) -> Deadline:
    """The deadline of a wait starting now: ``timeout`` seconds, or the job's default."""
    if timeout is None:
        return Deadline(time.monotonic() + request_timeout, request_timeout, False)
    if type(timeout) is float or type(timeout) is int:  # the usual: no ABC check
        seconds = float(timeout)
    else:  # numpy's numbers too, not a bool
        real = not isinstance(timeout, bool) and isinstance(timeout, numbers.Real)
        seconds = float(timeout) if real else -1.0  # type: ignore[arg-type]
    if not seconds >= 0:  # not a number, negative, or NaN
        raise UsageError(f"timeout must be seconds >= 0, or None for the default; got {timeout!r}")
    return Deadline(time.monotonic() + seconds, seconds, True)
