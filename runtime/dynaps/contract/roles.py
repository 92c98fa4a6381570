"""``spec.coordinator``, ``spec.servers`` and ``spec.workers``: the pods of each role."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from dynaps.contract.base import WHOLE_NUMBER, Model
from dynaps.contract.limits import MAX_NODES


class RoleSpec(Model):
    """Pods of one role. ``template`` is merged into the generated pod spec."""

    replicas: Annotated[int, Field(ge=0, le=MAX_NODES), WHOLE_NUMBER] = 1
    min_replicas: Annotated[int, Field(ge=0), WHOLE_NUMBER] | None = None
    max_replicas: Annotated[int, Field(ge=1), WHOLE_NUMBER] | None = None
    resources: dict[str, Any] = Field(default_factory=dict)
    template: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounds(self) -> RoleSpec:
        low = self.min_replicas if self.min_replicas is not None else 0
        high = self.max_replicas if self.max_replicas is not None else MAX_NODES
        if low > high:
            raise ValueError(f"minReplicas ({low}) is greater than maxReplicas ({high})")
        if not low <= self.replicas <= high:
            raise ValueError(f"replicas ({self.replicas}) is outside [minReplicas, maxReplicas]")
        return self


class ServerSpec(RoleSpec):
    replicas: Annotated[int, Field(ge=1, le=MAX_NODES), WHOLE_NUMBER] = 1


class WorkerSpec(RoleSpec):
    """Workers run the user's training program: ``command`` + ``args``."""

    replicas: Annotated[int, Field(ge=1, le=MAX_NODES), WHOLE_NUMBER] = 1
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class CoordinatorSpec(Model):
    resources: dict[str, Any] = Field(default_factory=dict)
    template: dict[str, Any] = Field(default_factory=dict)
