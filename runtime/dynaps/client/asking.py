"""Waiting for the coordinator's answer to a question of the training program's (a barrier,
a clock, a data-shard lease, a stage unit), asking again after a silence.

A question or its answer can be lost on the way (a connection cut after it was written); a
program waiting for it would then wait out ``requestTimeoutSeconds`` and fail.  So it asks
again after the requests' silence limit (:data:`dynaps.client.retries.SILENCE_SECONDS`: 10 s,
or a quarter of a shorter timeout), then after twice as long, and so on.  The coordinator
answers a question asked again as the first: a barrier or a stage unit reached twice is one,
a clock reported again gets the slowest clock again, a lease asked for again the same data
shard (:mod:`dynaps.coordinator.leases`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dynaps.client.deadlines import Deadline
from dynaps.client.requests import Requests


def wait_for_answer(
    requests: Requests,
    answered: Callable[[], bool],
    deadline: Deadline,
    what: Callable[[], str],
    ask_again: Callable[[], None],
) -> None:
    """Handle messages until ``answered()``; ``ask_again()`` after each silence (see the
    module docstring).  Raises as :meth:`Requests.pump_until` does at ``deadline``."""
    silence = requests.retries.silence_seconds
    again = time.monotonic() + silence
    while not answered():
        requests.pump_until(deadline, what)
        if not answered() and time.monotonic() >= again:
            silence *= 2
            again = time.monotonic() + silence
            ask_again()
