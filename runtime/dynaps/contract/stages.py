"""``spec.stages``: the stages a job runs in order, each with its own worker count."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from dynaps.contract.base import WHOLE_NUMBER, Model
from dynaps.contract.limits import MAX_NODES, checked_name
from dynaps.contract.roles import RoleSpec


class StageUnit(StrEnum):
    """What a stage counts: passes over the data, or training steps."""

    EPOCHS = "epochs"
    STEPS = "steps"


class StageSpec(Model):
    """One entry of ``spec.stages``: ``workers`` workers for ``epochs`` epochs or ``steps`` steps.

    The coordinator counts the units the workers complete; at a stage's end the job scales
    its workers live to the next stage's count (docs/stages.md)."""

    name: str
    """The stage's name (unique in the job)."""
    epochs: Annotated[int, Field(ge=1, le=1_000_000), WHOLE_NUMBER] | None = None
    """The stage's length in epochs (passes over the data), as the workers count them; or steps."""
    steps: Annotated[int, Field(ge=1, le=1_000_000_000), WHOLE_NUMBER] | None = None
    """The stage's length in training steps, as the workers count them; or epochs."""
    workers: Annotated[int, Field(ge=1, le=MAX_NODES), WHOLE_NUMBER]
    """Workers during the stage: the job scales to this count live when the stage begins."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return checked_name("stage", value)

    @model_validator(mode="after")
    def _one_length(self) -> StageSpec:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError(f"stage {self.name!r} needs exactly one of epochs or steps")
        return self

    @property
    def unit(self) -> StageUnit:
        return StageUnit.EPOCHS if self.epochs is not None else StageUnit.STEPS

    @property
    def length(self) -> int:
        """How many units (epochs or steps) the stage runs."""
        length = self.epochs if self.epochs is not None else self.steps
        assert length is not None  # _one_length
        return length


def check_stages(stages: list[StageSpec], workers: RoleSpec | None) -> list[StageSpec]:
    """Stage names are unique and every stage's worker count is within the workers' bounds;
    the message names the stage (``stages[1].workers``)."""
    seen: set[str] = set()
    for i, stage in enumerate(stages):
        if stage.name in seen:
            raise ValueError(f"stages[{i}].name: stage {stage.name!r} is declared twice")
        seen.add(stage.name)
        if workers is None:
            continue
        if workers.min_replicas is not None and stage.workers < workers.min_replicas:
            raise ValueError(
                f"stages[{i}].workers ({stage.workers}) is below workers.minReplicas ({workers.min_replicas})"
            )
        if workers.max_replicas is not None and stage.workers > workers.max_replicas:
            raise ValueError(
                f"stages[{i}].workers ({stage.workers}) is above workers.maxReplicas ({workers.max_replicas})"
            )
    return stages
