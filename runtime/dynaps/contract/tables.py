"""``spec.tables``: a table's shape, element type, initial values, updater and cache."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from dynaps.contract.base import A_NUMBER, WHOLE_NUMBER, Model
from dynaps.contract.limits import checked_name


class DType(StrEnum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class InitKind(StrEnum):
    ZEROS = "zeros"
    NORMAL = "normal"
    UNIFORM = "uniform"


class InitSpec(Model):
    """How a table's values start: zeros, normal(0, scale) or uniform(-scale, scale)."""

    kind: InitKind = InitKind.ZEROS
    scale: Annotated[float, Field(ge=0.0), A_NUMBER] = 0.01
    seed: Annotated[int, Field(ge=0), WHOLE_NUMBER] = 0


class UpdaterKind(StrEnum):
    ADD = "add"
    SGD = "sgd"
    ADAGRAD = "adagrad"
    ADAM = "adam"
    CUSTOM = "custom"


class UpdaterSpec(Model):
    """What a push does on the owner: add the update, or apply an optimiser step.

    A flat ``kind`` + parameters shape (rather than ``{adagrad: {lr: ...}}``) keeps the
    CRD schema structural and lets the API server validate ``kind`` as an enum.
    """

    kind: UpdaterKind = UpdaterKind.ADD
    lr: Annotated[float, Field(gt=0.0), A_NUMBER] = 0.1
    eps: Annotated[float, Field(gt=0.0), A_NUMBER] = 1e-8
    beta1: Annotated[float, Field(ge=0.0, lt=1.0), A_NUMBER] = 0.9
    beta2: Annotated[float, Field(ge=0.0, lt=1.0), A_NUMBER] = 0.999
    initial_accumulator: Annotated[float, Field(ge=0.0), A_NUMBER] = 0.0
    name: str | None = None  # the registered function, for kind=custom

    @model_validator(mode="after")
    def _custom_needs_name(self) -> UpdaterSpec:
        if self.kind == UpdaterKind.CUSTOM and not self.name:
            raise ValueError("updater kind 'custom' needs 'name' (the registered updater)")
        return self


class TableCache(StrEnum):
    NONE = "none"  # every pull of a remote key asks its owner
    CLOCK = "clock"  # a remote key pulled again within one clock is read from the worker's copy


class TableSpec(Model):
    """A table of ``num_keys`` rows of ``dim`` values: ``dynaps.TableSpec(num_keys=, dim=)``."""

    num_keys: Annotated[int, Field(gt=0, le=2**40), WHOLE_NUMBER]
    dim: Annotated[int, Field(gt=0, le=1_000_000), WHOLE_NUMBER]
    dtype: DType = DType.FLOAT32
    init: InitSpec = InitSpec()
    updater: UpdaterSpec = UpdaterSpec()
    # repeated pulls of a remote key within one clock served from a copy (dynaps.client.value_cache)
    cache: TableCache = TableCache.NONE


class NamedTable(TableSpec):
    """A table as declared in a manifest: a TableSpec with its name."""

    name: str

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return checked_name("table", value)
