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
    staleness: Annotated[int, Field(ge=0), WHOLE_NUMBER] = 0
