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
    """zeros, normal (mean 0, standard deviation scale) or uniform (-scale to scale)."""
    scale: Annotated[float, Field(ge=0.0), A_NUMBER] = 0.01
    """The spread of normal and uniform initial values."""
    seed: Annotated[int, Field(ge=0), WHOLE_NUMBER] = 0
    """Seeds the initial values: the same seed gives the same start on any number of servers."""


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
    """add (value += update), sgd (value -= lr * update), adagrad, adam, or custom (name)."""
    lr: Annotated[float, Field(gt=0.0), A_NUMBER] = 0.1
    """Learning rate of sgd, adagrad, adam (and of a custom updater that uses it)."""
    eps: Annotated[float, Field(gt=0.0), A_NUMBER] = 1e-8
    """adagrad's and adam's epsilon, added under the square root."""
    beta1: Annotated[float, Field(ge=0.0, lt=1.0), A_NUMBER] = 0.9
    """adam's decay of the first moment (momentum's, for the custom momentum updater)."""
    beta2: Annotated[float, Field(ge=0.0, lt=1.0), A_NUMBER] = 0.999
    """adam's decay of the second moment."""
    initial_accumulator: Annotated[float, Field(ge=0.0), A_NUMBER] = 0.0
    """adagrad's accumulator before the first update of a key."""
    name: str | None = None
    """kind custom: the updater, as package.module:factory (importable in every pod's image) or a name
    registered with dynaps.register_updater."""

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
    """Rows of the table (keys 0 to numKeys - 1)."""
    dim: Annotated[int, Field(gt=0, le=1_000_000), WHOLE_NUMBER]
    """Values per row."""
    dtype: DType = DType.FLOAT32
    """float32 or float64."""
    init: InitSpec = InitSpec()
    """The rows' initial values."""
    updater: UpdaterSpec = UpdaterSpec()
    """What a push does to a row on its owner."""
    cache: TableCache = TableCache.NONE
    """clock: a worker pulling a remote key again within one clock reads its own copy (updated by its own
    pushes); none: every pull asks the owner."""


class NamedTable(TableSpec):
    """A table as declared in a manifest: a TableSpec with its name."""

    name: str
    """The table's name, as the training program asks for it (ps.table("name"))."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return checked_name("table", value)
