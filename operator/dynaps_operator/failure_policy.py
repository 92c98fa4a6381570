"""``runPolicy.failurePolicy``: what a node pod's end means, when the user says so. Pure.

Rules are tried in order and the first that matches decides (as Kubernetes' podFailurePolicy
and Volcano's policies do): a rule matches a pod whose main container exited with one of its
``exitCodes``, whose termination reason is one of its ``reasons`` (``OOMKilled``, ``Error``),
or that has one of its ``podConditions`` True (``DisruptionTarget``). ``Restart`` replaces the pod
and counts against ``backoffLimit``, ``Ignore`` replaces it without counting, ``FailJob`` fails
the job at once. A pod no rule matches keeps the defaults of :mod:`dynaps_operator.podstate`.
The coordinator's own exit is the job's outcome and is not subject to the policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynaps.contract import FailureAction, FailureRule
from dynaps_operator.podstate import Outcome, PodView

ACTION_OUTCOME = {
    FailureAction.RESTART: Outcome.FAILED,
    FailureAction.IGNORE: Outcome.PREEMPTED,
    FailureAction.FAIL_JOB: Outcome.FATAL,
}


def outcome(pod: PodView, rules: Sequence[FailureRule]) -> Outcome | None:
    """How the pod ended under the policy (None while it runs)."""
    default = pod.outcome
    if default is None or default is Outcome.SUCCEEDED:
        return default
    rule = next((r for r in rules if matches(r, pod)), None)
    return ACTION_OUTCOME[FailureAction(rule.action)] if rule is not None else default


def matches(rule: FailureRule, pod: PodView) -> bool:
    return (
        (pod.exit_code is not None and pod.exit_code in rule.exit_codes)
        or (bool(pod.exit_reason) and pod.exit_reason in rule.reasons)
        or bool(pod.conditions & set(rule.pod_conditions))
    )
