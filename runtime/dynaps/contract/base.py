"""The base of every contract document: camelCase on the wire, snake_case in Python."""

from __future__ import annotations

import numbers
from typing import Any, TypeGuard

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic.alias_generators import to_camel


def is_whole_number(value: object) -> TypeGuard[numbers.Integral]:
    """An int or numpy's integer, not a bool: pydantic's lax mode would read True as 1 and "10"
    or 10.0 as 10, a mistake each where a count is meant."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _whole_number(value: object) -> int:
    if not is_whole_number(value):
        raise ValueError(f"a whole number, not {value!r}")
    return int(value)


# in a field's Annotated, after its Field: Annotated[int, Field(gt=0), WHOLE_NUMBER]
WHOLE_NUMBER = BeforeValidator(_whole_number)


def _number(value: object) -> float:
    # lax mode would read True as 1.0 and "0.1" as 0.1; Kubernetes' CRD validation refuses both
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"a number, not {value!r}")
    return float(value)


# likewise for a float: Annotated[float, Field(gt=0), A_NUMBER]
A_NUMBER = BeforeValidator(_number)


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's annotation holds (through Optional, list, Annotated...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for arg in getattr(annotation, "__args__", ()) for found in models_in(arg)]


class Model(BaseModel):
    """Base: camelCase aliases, snake_case names, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The document as written to Kubernetes or to DYNAPS_CONFIG (camelCase, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(Model):
    """Base of the status documents: like :class:`Model`, but tolerant of fields it does not
    know, so that an older operator (or ``kubectl get``) can read what a newer one wrote."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        use_enum_values=True,
    )
