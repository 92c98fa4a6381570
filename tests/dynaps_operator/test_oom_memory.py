"""runPolicy.oomMemoryGrowth: quantities, the growth steps, the pods built with them and the
planner's decisions about OOMKilled pods (pure: no cluster)."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any

import pytest

from dynaps.contract import ConditionType, JobPhase, OomMemoryGrowth, quantity
from dynaps_operator import memory_growth
from dynaps_operator.memory_growth import Verdict
from dynaps_operator.names import Role
from dynaps_operator.planner import Plan, plan
from dynaps_operator.pod_builder import build_pod
from dynaps_operator.podstate import pod_view
from dynaps_operator.validation import parse_job
from tests.dynaps_operator import helpers
from tests.dynaps_operator.helpers import REF, full_set, job, observed, pod, running_coordinator

MI = 1 << 20
GI = 1 << 30


# --------------------------------------------------------------------------------------- quantities


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512Mi", 512 * MI),
        ("1.5Gi", Fraction(3, 2) * GI),
        ("0.1Gi", Fraction(GI, 10)),  # exact, not a float's approximation
        ("2G", 2 * 10**9),
        ("1M", 10**6),
        ("3k", 3000),
        ("+3Ki", 3072),
        ("1e9", 10**9),
        ("5E-1", Fraction(1, 2)),
        ("1500m", Fraction(3, 2)),
        (".5Ki", 512),
        ("7", 7),
        (7, 7),  # YAML numbers
        (1.5, Fraction(3, 2)),
        ("1Ei", 1 << 60),
    ],
)
def test_quantities_parse_exactly(text: str | int | float, value: Fraction | int) -> None:
    assert quantity.parse(text) == value


@pytest.mark.parametrize(
    "text", ["", "Gi", "-1Gi", "1.5Gb", "1gi", "1 Gi", "1Gi ", "1e", "1KiB", "abc", True]
)
def test_what_is_not_a_quantity_is_refused(text: Any) -> None:
    with pytest.raises(quantity.QuantityError, match="is not a Kubernetes quantity"):
        quantity.parse(text)


def test_bytes_round_up_and_format_in_the_largest_exact_unit() -> None:
    assert quantity.bytes_of("0.1Gi") == 107374183  # 107374182.4 rounded up
    assert quantity.bytes_of("1500m") == 2
    assert [quantity.format_bytes(n) for n in (2 * GI, 1536 * MI, 3072, 1000, 0)] == [
        "2Gi",
        "1536Mi",
        "3Ki",
        "1000",
        "0",
    ]


# ------------------------------------------------------------------------------------------ growth


def growth(factor: float = 1.5, max_memory: str = "2Gi") -> OomMemoryGrowth:
    return OomMemoryGrowth(factor=factor, max_memory=max_memory)


def test_each_step_multiplies_rounds_up_to_a_mi_and_stops_at_the_cap() -> None:
    g = growth(1.5, "2Gi")
    sizes = [memory_growth.grown_size(512 * MI, g, steps) for steps in range(5)]
    assert sizes == [512 * MI, 768 * MI, 1152 * MI, 1728 * MI, 2 * GI]
    assert memory_growth.grown_size(10**9, g, 1) == 1431 * MI  # 1.5e9 bytes is 1430.5 Mi
    assert memory_growth.grown_size(3 * GI, g, 2) == 3 * GI, "a spec over the cap is never cut"


def test_request_and_limit_grow_alike_and_other_resources_stay() -> None:
    resources = {"requests": {"memory": "256Mi", "cpu": "1"}, "limits": {"memory": "512Mi"}}
    grown = memory_growth.grown_resources(resources, growth(2.0, "768Mi"), 1)
    assert grown == {"requests": {"memory": "512Mi", "cpu": "1"}, "limits": {"memory": "768Mi"}}
    assert resources["limits"] == {"memory": "512Mi"}, "the spec's dict is not modified"
    assert memory_growth.grown_resources(resources, None, 3) is resources
    assert memory_growth.shown_memory(resources, growth(2.0, "768Mi"), 1) == "768Mi"
    assert memory_growth.shown_memory(resources, growth(2.0, "768Mi"), 0) is None


def test_decide_grows_catches_up_or_leaves_it_to_the_policy() -> None:
    resources = {"limits": {"memory": "512Mi"}}
    g = growth(2.0, "1Gi")
    grow = memory_growth.decide("w-0", "512Mi", resources, g, 0)
    assert (grow.verdict, grow.steps) == (Verdict.GROW, 1)
    assert grow.message == (
        "pod w-0 was OOMKilled with 512Mi; replacing it with 1Gi (runPolicy.oomMemoryGrowth: x2, at most 1Gi)"
    )
    # A pod created before its role grew: replaced with the role's memory, no further step.
    behind = memory_growth.decide("w-1", "512Mi", resources, g, 1)
    assert (behind.verdict, behind.steps) == (Verdict.CATCH_UP, 1)
    capped = memory_growth.decide("w-0", "1Gi", resources, g, 1)
    assert (capped.verdict, capped.steps) == (Verdict.NO_GROWTH, 1)
    assert "maxMemory: 1Gi" in capped.message
    assert "failurePolicy decides" in capped.message
    bare = memory_growth.decide("w-0", "", {}, g, 0)
    assert bare.verdict is Verdict.NO_GROWTH
    assert "sets no memory request or limit" in bare.message


# ---------------------------------------------------------------------------------------- builders

GROWTH = {"oomMemoryGrowth": {"factor": 2, "maxMemory": "1Gi"}}


def test_pods_are_built_with_their_roles_grown_memory() -> None:
    the_job = job(
        runPolicy=GROWTH,
        workers={
            "replicas": 2,
            "command": ["python", "train.py"],
            "resources": {"requests": {"memory": "256Mi"}, "limits": {"memory": "512Mi", "cpu": "2"}},
        },
    )
    plain = build_pod(the_job, REF, Role.WORKER, 0)
    grown = build_pod(the_job, REF, Role.WORKER, 0, memory_growths=1)
    capped = build_pod(the_job, REF, Role.WORKER, 1, memory_growths=5)
    assert plain["spec"]["containers"][0]["resources"]["limits"] == {"memory": "512Mi", "cpu": "2"}
    assert grown["spec"]["containers"][0]["resources"] == {
        "requests": {"memory": "512Mi"},
        "limits": {"memory": "1Gi", "cpu": "2"},
    }
    assert capped["spec"]["containers"][0]["resources"]["limits"]["memory"] == "1Gi"
    view = pod_view(grown)
    assert view is not None
    assert view.memory == "1Gi", "the operator reads a pod's memory back from its spec"


def test_memory_in_a_template_grows_too() -> None:
    template = {"spec": {"containers": [{"name": "dynaps", "resources": {"limits": {"memory": "300Mi"}}}]}}
    the_job = job(runPolicy=GROWTH, servers={"replicas": 1, "template": template})
    grown = build_pod(the_job, REF, Role.SERVER, 0, memory_growths=1)
    assert grown["spec"]["containers"][0]["resources"] == {"limits": {"memory": "600Mi"}}


# ----------------------------------------------------------------------------------------- planner


def grown_job(**spec: Any) -> Any:
    workers = {"replicas": 2, "command": ["python", "train.py"], "resources": {"limits": {"memory": "512Mi"}}}
    return job(runPolicy={**GROWTH, "backoffLimit": 0, **spec}, workers=workers)


def after_oom(the_job: Any, p: Plan, memory: str = "512Mi", index: int = 0) -> Plan:
    pods = full_set()
    pods[2 + index] = replace(pod(Role.WORKER, index, exit_code=137, reason="OOMKilled"), memory=memory)
    return plan(
        observed(the_job, pods=pods, status=p.status, memory=p.memory, coordinator=running_coordinator())
    )


def test_an_oom_killed_worker_is_replaced_with_more_memory_without_counting() -> None:
    the_job = grown_job()
    p = helpers.started(the_job)
    grown = after_oom(the_job, p)
    assert [d.name for d in grown.delete] == ["mf-worker-0"]
    assert (grown.status.restarts, grown.status.preemptions) == (0, 0), "backoffLimit 0 is not exceeded"
    assert (grown.status.workers.memory_growths, grown.status.workers.memory) == (1, "1Gi")
    assert grown.status.servers.memory_growths == 0
    assert grown.status.phase == JobPhase.RECOVERING
    degraded = grown.status.condition(ConditionType.DEGRADED)
    assert degraded is not None
    assert degraded.reason == "MemoryGrown"
    assert "replacing it with 1Gi" in degraded.message
    assert [(e.type, e.reason) for e in grown.events] == [("Warning", "MemoryGrown")]
    # The count survives in the status: a later pass (an operator restart: no memory) keeps it.
    later = plan(observed(the_job, pods=full_set(), status=grown.status, coordinator=running_coordinator()))
    assert (later.status.workers.memory_growths, later.status.workers.memory) == (1, "1Gi")


def test_a_second_oom_of_a_pod_built_before_the_growth_does_not_grow_again() -> None:
    the_job = grown_job()
    grown = after_oom(the_job, helpers.started(the_job))
    other = after_oom(the_job, grown, memory="512Mi", index=1)
    assert [d.name for d in other.delete] == ["mf-worker-1"]
    assert other.status.workers.memory_growths == 1


def test_at_the_cap_the_failure_policy_decides_and_an_event_says_so() -> None:
    the_job = grown_job()
    grown = after_oom(the_job, helpers.started(the_job))
    capped = after_oom(the_job, grown, memory="1Gi")
    assert capped.status.workers.memory_growths == 1
    assert capped.status.phase == JobPhase.FAILED, "the default policy counts it: backoffLimit 0 exceeded"
    failed = capped.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert failed.reason == "BackoffLimitExceeded"
    limit = [e for e in capped.events if e.reason == "MemoryLimitReached"]
    assert len(limit) == 1
    assert limit[0].type == "Warning"
    assert "runPolicy.oomMemoryGrowth.maxMemory: 1Gi" in limit[0].message


def test_at_the_cap_an_ignore_rule_replaces_the_pod() -> None:
    the_job = grown_job(failurePolicy=[{"action": "Ignore", "reasons": ["OOMKilled"]}])
    grown = after_oom(the_job, helpers.started(the_job))
    capped = after_oom(the_job, grown, memory="1Gi")
    assert [d.name for d in capped.delete] == ["mf-worker-0"]
    assert (capped.status.preemptions, capped.status.workers.memory_growths) == (1, 1)
    degraded = capped.status.condition(ConditionType.DEGRADED)
    assert degraded is not None
    assert "cannot grow past that" in degraded.message


def test_growth_comes_before_a_fail_job_rule_for_oom() -> None:
    the_job = grown_job(failurePolicy=[{"action": "FailJob", "reasons": ["OOMKilled"]}])
    grown = after_oom(the_job, helpers.started(the_job))
    assert grown.status.phase == JobPhase.RECOVERING
    capped = after_oom(the_job, grown, memory="1Gi")
    assert capped.status.phase == JobPhase.FAILED
    failed = capped.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert failed.reason == "FailurePolicy"


def test_without_the_field_an_oom_kill_is_a_plain_failure() -> None:
    workers = {"replicas": 2, "command": ["python", "train.py"], "resources": {"limits": {"memory": "512Mi"}}}
    the_job = job(workers=workers, runPolicy={"backoffLimit": 5})
    failed = after_oom(the_job, helpers.started(the_job))
    assert failed.status.restarts == 1
    assert (failed.status.workers.memory_growths, failed.status.workers.memory) == (0, None)
    assert not [e for e in failed.events if e.reason.startswith("Memory")]


def test_an_oom_killed_worker_is_not_left_for_the_coordinator_to_end_the_job() -> None:
    # A worker program's failure gets a grace period for the coordinator to end the job; an OOM
    # kill takes the whole container, so no program reports anything: replace it at once.
    the_job = job(
        workers={
            "replicas": 2,
            "command": ["python", "train.py"],
            "resources": {"limits": {"memory": "1Gi"}},
        },
        runPolicy={"backoffLimit": 5},
    )
    p = helpers.started(the_job)
    pods = full_set()
    pods[2] = pod(Role.WORKER, 0, exit_code=137, reason="OOMKilled", finished=helpers.T0)
    done = plan(
        observed(the_job, pods=pods, status=p.status, memory=p.memory, coordinator=running_coordinator())
    )
    assert [d.name for d in done.delete] == ["mf-worker-0"]


# -------------------------------------------------------------------------------------- validation


def body(run_policy: dict[str, Any], workers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "dynaps.io/v1alpha1",
        "kind": "ParameterServerJob",
        "metadata": {"name": "mf"},
        "spec": {
            "tables": [{"name": "W", "numKeys": 10, "dim": 2}],
            "workers": workers or {"command": ["python", "train.py"]},
            "runPolicy": run_policy,
        },
    }


FIELD = "spec.runPolicy.oomMemoryGrowth."


@pytest.mark.parametrize(
    ("growth_spec", "problem"),
    [
        ({"factor": 1, "maxMemory": "1Gi"}, "factor: Input should be greater than 1"),
        ({"factor": 0.5, "maxMemory": "1Gi"}, "factor: Input should be greater than 1"),
        ({"factor": 11, "maxMemory": "1Gi"}, "factor: Input should be less than or equal to 10"),
        ({"maxMemory": "8GB"}, "maxMemory: '8GB' is not a Kubernetes quantity"),
        ({"maxMemory": "100Ki"}, "maxMemory: '100Ki' is less than 1Mi"),
        ({"factor": 2}, "maxMemory: Field required"),
    ],
)
def test_bad_growth_settings_are_refused_naming_the_field(growth_spec: dict[str, Any], problem: str) -> None:
    parsed, message = parse_job(body({"oomMemoryGrowth": growth_spec}))
    assert parsed is None
    assert message.startswith(FIELD + problem), message


def test_a_roles_memory_must_be_a_quantity_when_it_may_grow() -> None:
    workers = {"command": ["python", "train.py"], "resources": {"limits": {"memory": "lots"}}}
    parsed, message = parse_job(body({"oomMemoryGrowth": {"maxMemory": "2Gi"}}, workers))
    assert parsed is None
    assert message == (
        "spec.workers.resources: memory: 'lots' is not a Kubernetes quantity (e.g. 512Mi, 1.5Gi, 2G) "
        "(runPolicy.oomMemoryGrowth multiplies it)"
    )
    accepted, _ = parse_job(body({}, workers))
    assert accepted is not None, "without growth the operator does not read the memory (the API server does)"
