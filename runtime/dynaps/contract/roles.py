"""``spec.coordinator``, ``spec.servers`` and ``spec.workers``: the pods of each role."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from dynaps.contract.base import WHOLE_NUMBER, Model
from dynaps.contract.limits import MAX_NODES


class RoleSpec(Model):
    """Pods of one role. ``template`` is merged into the generated pod spec."""

    replicas: Annotated[int, Field(ge=0, le=MAX_NODES), WHOLE_NUMBER] = 1
    """Pods of this role. May change while the job runs: servers and workers join or drain."""
    min_replicas: Annotated[int, Field(ge=0), WHOLE_NUMBER] | None = None
    """The fewest pods the role may be scaled to (an autoscaler's lower bound); for workers, also the
    gang's count."""
    max_replicas: Annotated[int, Field(ge=1), WHOLE_NUMBER] | None = None
    """The most pods the role may be scaled to (an autoscaler's upper bound)."""
    resources: dict[str, Any] = Field(default_factory=dict)
    """Requests and limits of the role's main container (a ResourceRequirements)."""
    template: dict[str, Any] = Field(default_factory=dict)
    """A pod template merged into each of the role's pods (image, node selector, tolerations, sidecars, env);
    it cannot change what ties a pod to its job."""

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
    """Server pods (at least one). May change while the job runs: shards migrate to new servers and away from
    drained ones."""


class WorkerSpec(RoleSpec):
    """Workers run the user's training program: ``command`` + ``args``."""

    replicas: Annotated[int, Field(ge=1, le=MAX_NODES), WHOLE_NUMBER] = 1
    """Worker pods, each running the training program (the scale subresource: kubectl scale and an HPA set
    it). Unused with stages."""
    command: list[str] = Field(default_factory=list)
    """The training program (run as dynaps worker -- COMMAND ARGS)."""
    args: list[str] = Field(default_factory=list)
    """Arguments of the training program."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables of the training program, name to value."""


class CoordinatorSpec(Model):
    resources: dict[str, Any] = Field(default_factory=dict)
    """Requests and limits of the coordinator's container (a ResourceRequirements)."""
    template: dict[str, Any] = Field(default_factory=dict)
    """A pod template merged into the coordinator's pod."""
