"""``spec.runPolicy``: how the operator runs the job's pods (retries, failure rules, memory
growth after OOMKilled, deadlines, clean-up, suspension, gang scheduling)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from dynaps.contract import quantity
from dynaps.contract.base import WHOLE_NUMBER, Model


class CleanPodPolicy(StrEnum):
    RUNNING = "Running"
    ALL = "All"
    NONE = "None"


class GangScheduler(StrEnum):
    """``runPolicy.schedulingPolicy.scheduler``: who places the job's pods all or nothing."""

    NONE = "none"  # the cluster's scheduler places each pod on its own
    COSCHEDULING = "coscheduling"  # scheduler-plugins' Coscheduling (PodGroup scheduling.x-k8s.io)
    VOLCANO = "volcano"  # Volcano (PodGroup scheduling.volcano.sh)


_K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class SchedulingPolicy(Model):
    """``runPolicy.schedulingPolicy``: gang scheduling and queueing, with the names Kubeflow's
    training and MPI operators use (``minAvailable``, ``queue``, ``priorityClass``,
    ``scheduleTimeoutSeconds``); see the operator's ``gang`` module for what each one makes."""

    scheduler: Annotated[
        GangScheduler,
        Field(
            description="The gang scheduler that gets a PodGroup for the job: none, coscheduling or volcano."
        ),
    ] = GangScheduler.NONE
    scheduler_name: Annotated[
        str | None,
        Field(
            max_length=253,
            pattern=_K8S_NAME,
            description="The pods' schedulerName; default: scheduler-plugins-scheduler for coscheduling, "
            "volcano for volcano, the cluster's default otherwise.",
        ),
    ] = None
    min_available: Annotated[
        int | None,
        Field(
            ge=1,
            description="Pods the gang scheduler must place together before any starts; default: "
            "the coordinator, every server and workers.minReplicas (else workers.replicas).",
        ),
    ] = None
    queue: Annotated[
        str | None,
        Field(max_length=253, pattern=_K8S_NAME, description="The Volcano queue (scheduler: volcano)."),
    ] = None
    priority_class: Annotated[
        str | None,
        Field(max_length=253, description="The pods' priorityClassName (and the Volcano PodGroup's)."),
    ] = None
    schedule_timeout_seconds: Annotated[
        int | None,
        Field(
            ge=1,
            description="How long Coscheduling waits for the whole group (scheduler: coscheduling).",
        ),
    ] = None
    kueue_queue: Annotated[
        str | None,
        Field(
            max_length=63,
            pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            description="A Kueue LocalQueue: the pods are labelled as one Kueue pod group, admitted whole.",
        ),
    ] = None

    @model_validator(mode="after")
    def _options_of_the_scheduler(self) -> SchedulingPolicy:
        if self.queue is not None and self.scheduler != GangScheduler.VOLCANO:
            raise ValueError(
                "queue is a Volcano queue: it needs scheduler: volcano "
                "(for a Kueue LocalQueue set kueueQueue)"
            )
        if self.schedule_timeout_seconds is not None and self.scheduler != GangScheduler.COSCHEDULING:
            raise ValueError("scheduleTimeoutSeconds is Coscheduling's: it needs scheduler: coscheduling")
        return self


class FailureAction(StrEnum):
    RESTART = "Restart"  # replace the pod; counts against backoffLimit
    IGNORE = "Ignore"  # replace the pod; does not count (as a preemption)
    FAIL_JOB = "FailJob"  # fail the job at once


class FailureRule(Model):
    """One rule of ``runPolicy.failurePolicy`` (the first that matches a node pod's end wins):
    any listed exit code, termination reason (``OOMKilled``) or pod condition (``DisruptionTarget``)."""

    action: FailureAction
    """Restart (replace the pod; counts against backoffLimit), Ignore (replace it; does not count) or
    FailJob."""
    exit_codes: list[Annotated[int, Field(ge=0, le=255), WHOLE_NUMBER]] = Field(
        default_factory=list, max_length=64
    )
    """Exit codes of the pod's main container that match."""
    reasons: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=16)
    """Termination reasons that match, e.g. OOMKilled, Error."""
    pod_conditions: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=16)
    """Pod conditions that match, e.g. DisruptionTarget (evictions, preemption)."""

    @model_validator(mode="after")
    def _matches_something(self) -> FailureRule:
        if not (self.exit_codes or self.reasons or self.pod_conditions):
            raise ValueError("a failure rule needs exitCodes, reasons or podConditions")
        return self


class OomMemoryGrowth(Model):
    """``runPolicy.oomMemoryGrowth``: a node pod killed for exceeding its memory (``OOMKilled``)
    comes back with its role's memory request and limit multiplied by ``factor``, up to
    ``maxMemory``; the role's later pods keep the grown memory. At the cap, the next OOMKilled is
    left to ``failurePolicy`` as any other end."""

    factor: Annotated[
        float, Field(gt=1.0, le=10.0, description="Each OOMKilled pod multiplies its role's memory by this.")
    ] = 1.5
    # The pattern is for the CRD (kubectl apply refuses a typo); the validator says it in words.
    max_memory: Annotated[
        str,
        Field(
            max_length=32,
            json_schema_extra={"pattern": quantity.QUANTITY_PATTERN},
            description="The most memory (request and limit) growth gives a pod, e.g. 8Gi.",
        ),
    ]

    @field_validator("max_memory")
    @classmethod
    def _positive_quantity(cls, value: str) -> str:
        try:
            size = quantity.bytes_of(value)
        except quantity.QuantityError as exc:
            raise ValueError(str(exc)) from exc
        if size < 1 << 20:
            raise ValueError(f"{value!r} is less than 1Mi: no container runs in that")
        return value

    def max_bytes(self) -> int:
        return quantity.bytes_of(self.max_memory)


class RunPolicy(Model):
    backoff_limit: Annotated[int, Field(ge=0), WHOLE_NUMBER] = 3
    """Pod failures tolerated; preemptions (evictions, 137/143) do not count."""
    active_deadline_seconds: Annotated[int, Field(ge=1), WHOLE_NUMBER] | None = None
    """The job fails once it ran this long (reset on resume)."""
    start_timeout_seconds: Annotated[int, Field(ge=0), WHOLE_NUMBER] = 600
    """How long a pod may stay unstarted (unschedulable, image not pulled, ...) and the job may wait for its
    nodes to register before it fails with StartTimeoutExceeded; 0: no limit."""
    failure_policy: list[FailureRule] = Field(default_factory=list, max_length=32)
    """Rules for a node pod's end, the first match wins; unmatched ends keep the defaults: 137/143 and
    disruptions are Ignore, other exits Restart."""
    oom_memory_growth: OomMemoryGrowth | None = None
    """An OOMKilled pod comes back with more memory; unset: with the same memory (and the failure policy
    decides)."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0), WHOLE_NUMBER] | None = None
    """Delete the job (and its pods) this long after it finished."""
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING
    """Pods deleted when the job finishes: Running ones, All, or None."""
    suspend: bool = False
    """true: checkpoint and delete the pods; false again: resume."""
    scheduling_policy: SchedulingPolicy = SchedulingPolicy()
    """Gang scheduling (a PodGroup for Coscheduling or Volcano), Kueue queueing, priority (Kubeflow's names:
    minAvailable, queue, priorityClass)."""
