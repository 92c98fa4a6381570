"""``spec.consistency``: how far the workers' clocks may drift apart (async, BSP, SSP)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from dynaps.contract.base import WHOLE_NUMBER, Model


class ConsistencyModel(StrEnum):
    ASYNC = "async"
    BSP = "bsp"
    SSP = "ssp"


class Consistency(Model):
    model: ConsistencyModel = ConsistencyModel.ASYNC
    """async: no waiting; bsp: every clock waits for all workers; ssp: a worker may be staleness clocks ahead
    of the slowest."""
    staleness: Annotated[int, Field(ge=0), WHOLE_NUMBER] = 0
    """ssp: how many clocks a worker may run ahead of the slowest (0 is bsp)."""
