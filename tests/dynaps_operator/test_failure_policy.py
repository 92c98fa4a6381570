"""runPolicy.failurePolicy: exit codes, reasons and pod conditions mapped to Restart, Ignore or
FailJob; without rules, today's defaults (pure: no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from dynaps.contract import ConditionType, FailureRule, JobPhase
from dynaps_operator.failure_policy import outcome
from dynaps_operator.names import Role
from dynaps_operator.planner import Plan, plan
from dynaps_operator.podstate import Outcome, PodView, pod_view
from tests.dynaps_operator import helpers
from tests.dynaps_operator.helpers import full_set, job, observed, pod, running_coordinator

RULES = [
    FailureRule.model_validate({"action": "FailJob", "exitCodes": [42]}),
    FailureRule.model_validate({"action": "Restart", "exitCodes": [143]}),
    FailureRule.model_validate({"action": "Ignore", "reasons": ["OOMKilled"]}),
    FailureRule.model_validate({"action": "FailJob", "podConditions": ["DisruptionTarget"]}),
]


@pytest.mark.parametrize(
    ("the_pod", "default", "ruled"),
    [
        (pod(Role.SERVER, exit_code=42), Outcome.FAILED, Outcome.FATAL),
        (pod(Role.SERVER, exit_code=143), Outcome.PREEMPTED, Outcome.FAILED),
        (pod(Role.SERVER, exit_code=137, reason="OOMKilled"), Outcome.FAILED, Outcome.PREEMPTED),
        (
            pod(Role.SERVER, exit_code=143, disrupted=True, conditions=frozenset({"DisruptionTarget"})),
            Outcome.PREEMPTED,
            Outcome.FAILED,  # the first rule that matches wins: exit code 143 -> Restart
        ),
        (pod(Role.SERVER, exit_code=1), Outcome.FAILED, Outcome.FAILED),  # no rule: the default
        (pod(Role.SERVER, exit_code=0), Outcome.SUCCEEDED, Outcome.SUCCEEDED),  # never a failure
        (pod(Role.SERVER), None, None),  # running
    ],
)
def test_the_first_matching_rule_decides(
    the_pod: PodView, default: Outcome | None, ruled: Outcome | None
) -> None:
    assert outcome(the_pod, []) is default
    assert outcome(the_pod, RULES) is ruled


def test_pod_conditions_are_read_from_the_pod() -> None:
    raw: dict[str, Any] = {
        "metadata": {"name": "mf-server-0", "labels": {"dynaps.io/role": "server", "dynaps.io/index": "0"}},
        "status": {"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True"}]},
    }
    view = pod_view(raw)
    assert view is not None
    assert view.conditions == frozenset({"DisruptionTarget"})


def started(**spec: Any) -> tuple[Any, Plan]:
    the_job = job(**spec)
    return the_job, helpers.started(the_job)


def test_fail_job_fails_at_once_naming_the_pod() -> None:
    the_job, p = started(runPolicy={"failurePolicy": [{"action": "FailJob", "exitCodes": [42]}]})
    pods = full_set()
    pods[1] = pod(Role.SERVER, exit_code=42, message="bad shard file")
    done = plan(
        observed(the_job, pods=pods, status=p.status, memory=p.memory, coordinator=running_coordinator())
    )
    assert done.status.phase == JobPhase.FAILED
    failed = done.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert failed.reason == "FailurePolicy"
    assert failed.message == (
        "pod mf-server-0 exited with code 42: bad shard file; a runPolicy.failurePolicy rule says FailJob"
    )
    assert done.status.restarts == 0


def test_ignore_replaces_without_counting_and_restart_counts() -> None:
    rules = [{"action": "Ignore", "exitCodes": [3]}, {"action": "Restart", "exitCodes": [137]}]
    the_job, p = started(runPolicy={"failurePolicy": rules, "backoffLimit": 0})
    pods = full_set()
    pods[1] = pod(Role.SERVER, exit_code=3)
    ignored = plan(
        observed(the_job, pods=pods, status=p.status, memory=p.memory, coordinator=running_coordinator())
    )
    assert [d.name for d in ignored.delete] == ["mf-server-0"]
    assert (ignored.status.restarts, ignored.status.preemptions) == (0, 1)
    pods[1] = pod(Role.SERVER, exit_code=137)
    counted = plan(
        observed(the_job, pods=pods, status=p.status, memory=p.memory, coordinator=running_coordinator())
    )
    assert counted.status.phase == JobPhase.FAILED, "137 counts under this policy: backoffLimit 0 is exceeded"


def test_a_rule_must_match_something() -> None:
    with pytest.raises(ValueError, match="needs exitCodes, reasons or podConditions"):
        job(runPolicy={"failurePolicy": [{"action": "Ignore"}]})


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        ([{"action": "Ignore", "exitCodes": [256]}], "less than or equal to 255"),
        ([{"action": "Ignore", "exitCodes": list(range(65))}], "at most 64"),
        ([{"action": "Ignore", "reasons": ["x" * 64]}], "at most 63"),
        ([{"action": "Ignore", "exitCodes": [1]}] * 33, "at most 32"),
    ],
)
def test_a_failure_policy_is_bounded(rules: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        job(runPolicy={"failurePolicy": rules})
