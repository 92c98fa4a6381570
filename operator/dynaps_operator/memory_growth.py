"""``runPolicy.oomMemoryGrowth``: an OOMKilled node pod comes back with more memory. Pure.

A role's growth is one number, ``status.<role>.memoryGrowths`` (kept in the job's status, so a
restarted operator builds the same pods): its pods get their memory request and limit
multiplied by ``factor`` that many times, each step rounded up to a whole Mi and capped at
``maxMemory``. The request and the limit grow alike, so a request below its limit stays below
it. A role's base is its main container's resources as the pod is built (``resources``, else
the ``template``'s); changing them, or the factor, in the spec applies to the pods created next.

When a node pod ends ``OOMKilled``:

* it had less memory than its role has now (it was created before another pod of the role
  grew it): it is replaced with the role's memory as it is, and the count stays;
* the role can grow (it has a memory request or limit, below ``maxMemory``): the count goes
  up by one and the pod is replaced; neither counts against ``backoffLimit``, the cap bounds it;
* otherwise (at the cap, or no memory to grow): ``runPolicy.failurePolicy`` decides as for any
  other end, and an Event says why the memory did not grow.

The coordinator is not grown: its exit is the job's outcome (see :mod:`dynaps_operator.planner`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any

from dynaps.contract import OomMemoryGrowth, quantity

OOM_KILLED = "OOMKilled"
KINDS = ("requests", "limits")
_MI = 1 << 20

JsonDict = dict[str, Any]


def memory_sizes(resources: JsonDict) -> dict[str, int]:
    """The memory request and limit of ``resources`` in bytes (only those that are set).

    Raises :class:`quantity.QuantityError` for a value that is not a quantity."""
    sizes = {}
    for kind in KINDS:
        value = (resources.get(kind) or {}).get("memory")
        if value is not None:
            sizes[kind] = quantity.bytes_of(value)
    return sizes


def grown_size(size: int, growth: OomMemoryGrowth, steps: int) -> int:
    """``size`` after ``steps`` growths: times ``factor`` each, rounded up to a Mi, capped.

    A size already at or over the cap stays as it is (the spec's own value is never cut)."""
    cap = growth.max_bytes()
    if size >= cap:
        return size
    factor = Fraction(str(growth.factor))
    for _ in range(steps):  # step by step: each rounding is part of the result
        grown = min(math.ceil(size * factor / _MI) * _MI, cap)
        if grown == size:
            break
        size = grown
    return size


def grown_resources(resources: JsonDict, growth: OomMemoryGrowth | None, steps: int) -> JsonDict:
    """``resources`` with its memory request and limit grown ``steps`` times (a new dict)."""
    if growth is None or steps <= 0:
        return resources
    result = {key: dict(value) if isinstance(value, dict) else value for key, value in resources.items()}
    for kind, size in memory_sizes(resources).items():
        result[kind]["memory"] = quantity.format_bytes(grown_size(size, growth, steps))
    return result


def shown_size(resources: JsonDict, growth: OomMemoryGrowth | None, steps: int) -> int | None:
    """The memory a role's pods get (the limit, else the request); None when neither is set."""
    sizes = memory_sizes(resources)
    size = sizes.get("limits", sizes.get("requests"))
    if size is None or growth is None:
        return size
    return grown_size(size, growth, steps)


def shown_memory(resources: JsonDict, growth: OomMemoryGrowth | None, steps: int) -> str | None:
    """``status.<role>.memory``: the grown memory, or None while the spec's own applies."""
    if growth is None or steps <= 0:
        return None
    size = shown_size(resources, growth, steps)
    return quantity.format_bytes(size) if size is not None else None


class Verdict(StrEnum):
    GROW = "grow"  # replace the pod; the role's memory grows one step
    CATCH_UP = "catch-up"  # replace the pod with the role's (already grown) memory
    NO_GROWTH = "no-growth"  # the failure policy decides; ``message`` says why


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    steps: int  # the role's growth count after the decision
    message: str  # for the Event and the status


def decide(
    pod_name: str, pod_memory: str, resources: JsonDict, growth: OomMemoryGrowth, steps: int
) -> Decision:
    """What to do about the OOMKilled pod ``pod_name``, created with ``pod_memory`` ("" if
    unknown: taken to be the role's memory now), of a role at ``steps`` growths."""
    now = shown_size(resources, growth, steps)
    if now is None:
        return Decision(
            Verdict.NO_GROWTH,
            steps,
            f"pod {pod_name} was OOMKilled but its role sets no memory request or limit to grow "
            "(runPolicy.oomMemoryGrowth); runPolicy.failurePolicy decides",
        )
    had = _size_or(pod_memory, now)
    if had < now:
        return Decision(
            Verdict.CATCH_UP,
            steps,
            f"pod {pod_name} was OOMKilled with {quantity.format_bytes(had)}; its role has grown since: "
            f"replacing it with {quantity.format_bytes(now)}",
        )
    after = shown_size(resources, growth, steps + 1) or now  # set whenever ``now`` is
    if after <= had:
        return Decision(
            Verdict.NO_GROWTH,
            steps,
            f"pod {pod_name} was OOMKilled with {quantity.format_bytes(had)}; its role's memory cannot "
            f"grow past that (runPolicy.oomMemoryGrowth.maxMemory: {growth.max_memory}); "
            "runPolicy.failurePolicy decides",
        )
    return Decision(
        Verdict.GROW,
        steps + 1,
        f"pod {pod_name} was OOMKilled with {quantity.format_bytes(had)}; replacing it with "
        f"{quantity.format_bytes(after)} (runPolicy.oomMemoryGrowth: x{growth.factor:g}, "
        f"at most {growth.max_memory})",
    )


def _size_or(text: str, default: int) -> int:
    try:
        return quantity.bytes_of(text) if text else default
    except quantity.QuantityError:
        return default
