"""How long a receiver polls for an answer before it blocks.

Waking a blocked process costs more than a round trip itself on a virtual machine whose
idle cores halt, so a receiver that expects an answer soon polls first, yielding the CPU
between polls (the transports' ``recv(spin=...)``).  Each process has a budget
(``DYNAPS_SPIN_MICROS``, default 100 us: :func:`dynaps.config.spin_seconds`): what a node
spins after serving a message, and a program for the answer to a lone request.

A localize's answer takes longer than the budget by its structure: it goes through three
processes (requester, home, new owner: about 400 us for 100 keys on the benchmark VM), so a
program that spun 100 us always blocked before it came back and paid the wake-up
(bench/README.md, "Spinning as long as a localize usually takes").  A program therefore
spins as long as a localize of that table usually took (:func:`spin_for`), up to
:data:`LONG_SPIN_FACTOR` times its budget; one expected later than that is not worth
polling for beyond the budget.  Pulls and pushes are one hop: when one takes longer than
the budget the machine is busy, and a longer spin there cost the training processes CPU
(3-5 % more at 8 nodes, same bench/README.md section).  A spin still ends as soon as a
yield let another task run: the CPU is wanted elsewhere.
"""

from __future__ import annotations

# A turn of a spin loop longer than this means sched_yield ran another task.
YIELDED_SECONDS = 10e-6

# The longest spin, in budgets: 1 ms by default.
LONG_SPIN_FACTOR = 10

# Spin a little past the usual time: waits vary, and a spin that ends just before the
# answer pays the whole wake-up.
HEADROOM = 1.25


def spin_for(expected: float, budget: float) -> float:
    """Seconds to poll for an answer expected in ``expected`` seconds, given this process's
    ``budget``: the budget, or up to the expected time when it is within the longest spin."""
    if expected <= budget or expected > budget * LONG_SPIN_FACTOR:
        return budget
    return expected


def longest(budget: float) -> float:
    """The longest a transport with this ``budget`` polls, whatever it is asked."""
    return budget * LONG_SPIN_FACTOR
