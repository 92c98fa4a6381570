"""Gang scheduling and queueing, without a cluster: the PodGroup each scheduler gets, what ties
every pod to it, and the spec's checks of ``runPolicy.schedulingPolicy``."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dynaps.contract import describe_validation_error
from dynaps_operator import gang
from dynaps_operator.builders import build_pod_group
from dynaps_operator.names import Role
from dynaps_operator.pod_builder import build_pod
from dynaps_operator.validation import parse_job
from tests.dynaps_operator.helpers import REF, job

ALL_PODS = [(Role.COORDINATOR, 0), (Role.SERVER, 0), (Role.WORKER, 0), (Role.WORKER, 1)]


def gang_job(policy: dict[str, Any], **spec: Any) -> Any:
    return job(runPolicy={"schedulingPolicy": policy}, **spec)


def test_without_a_scheduler_no_pod_group_and_pods_as_before() -> None:
    plain = job()
    assert build_pod_group(plain, REF) is None
    for role, index in ALL_PODS:
        pod = build_pod(plain, REF, role, index)
        assert "schedulerName" not in pod["spec"]
        assert "annotations" not in pod["metadata"]
        assert not any(key.startswith(("scheduling.", "kueue.")) for key in pod["metadata"]["labels"])


def test_coscheduling_pod_group_and_pod_labels() -> None:
    the_job = gang_job({"scheduler": "coscheduling", "scheduleTimeoutSeconds": 120})
    group = build_pod_group(the_job, REF)
    assert group is not None
    assert (group["apiVersion"], group["kind"]) == ("scheduling.x-k8s.io/v1alpha1", "PodGroup")
    assert group["metadata"]["name"] == "mf"
    assert group["metadata"]["namespace"] == "ns"
    assert group["metadata"]["ownerReferences"][0]["uid"] == REF.uid
    assert group["metadata"]["labels"]["dynaps.io/job"] == "mf"
    # every pod by default: the coordinator, one server, two workers
    assert group["spec"] == {"minMember": 4, "scheduleTimeoutSeconds": 120}
    for role, index in ALL_PODS:
        pod = build_pod(the_job, REF, role, index)
        assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "mf"
        assert pod["metadata"]["labels"]["dynaps.io/role"] == role.value  # identity labels kept
        assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"


def test_volcano_pod_group_carries_queue_and_priority() -> None:
    the_job = gang_job(
        {"scheduler": "volcano", "queue": "research", "priorityClass": "high", "minAvailable": 3}
    )
    group = build_pod_group(the_job, REF)
    assert group is not None
    assert group["apiVersion"] == "scheduling.volcano.sh/v1beta1"
    assert group["spec"] == {"minMember": 3, "queue": "research", "priorityClassName": "high"}
    pod = build_pod(the_job, REF, Role.WORKER, 1)
    assert pod["metadata"]["annotations"] == {"scheduling.k8s.io/group-name": "mf"}
    assert pod["spec"]["schedulerName"] == "volcano"
    assert pod["spec"]["priorityClassName"] == "high"
    assert "scheduling.x-k8s.io/pod-group" not in pod["metadata"]["labels"]


def test_scheduler_name_from_the_spec_wins_over_template_and_default() -> None:
    template = {"spec": {"schedulerName": "someone-else"}}
    the_job = gang_job(
        {"scheduler": "coscheduling", "schedulerName": "default-scheduler"},
        workers={"replicas": 2, "command": ["python", "t.py"], "template": template},
    )
    assert build_pod(the_job, REF, Role.WORKER, 0)["spec"]["schedulerName"] == "default-scheduler"
    # without a gang scheduler or a schedulerName, the template's stays the user's choice
    untouched = job(workers={"replicas": 2, "command": ["python", "t.py"], "template": template})
    assert build_pod(untouched, REF, Role.WORKER, 0)["spec"]["schedulerName"] == "someone-else"


def test_kueue_labels_every_pod_as_one_group_of_all_pods() -> None:
    the_job = gang_job({"kueueQueue": "team-a"}, servers={"replicas": 2})
    assert build_pod_group(the_job, REF) is None  # Kueue alone needs no PodGroup
    for role, index in [(Role.COORDINATOR, 0), (Role.SERVER, 1), (Role.WORKER, 1)]:
        pod = build_pod(the_job, REF, role, index)
        labels = pod["metadata"]["labels"]
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert labels["kueue.x-k8s.io/pod-group-name"] == "mf"
        # Kueue admits the group once this many pods exist: all of them (1 + 2 + 2)
        assert pod["metadata"]["annotations"] == {"kueue.x-k8s.io/pod-group-total-count": "5"}
        assert "schedulerName" not in pod["spec"]


def test_kueue_with_volcano_gives_both() -> None:
    the_job = gang_job({"scheduler": "volcano", "kueueQueue": "team-a"})
    pod = build_pod(the_job, REF, Role.SERVER, 0)
    assert pod["metadata"]["annotations"] == {
        "scheduling.k8s.io/group-name": "mf",
        "kueue.x-k8s.io/pod-group-total-count": "4",
    }
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        ({"replicas": 4}, 1 + 2 + 4),  # no minReplicas: every worker
        ({"replicas": 4, "minReplicas": 2}, 1 + 2 + 2),  # the fewest workers the job runs on
        ({"replicas": 4, "minReplicas": 0}, 1 + 2 + 1),  # a job needs one worker at least
    ],
)
def test_default_min_available_is_coordinator_servers_and_min_workers(
    workers: dict[str, Any], expected: int
) -> None:
    the_job = gang_job(
        {"scheduler": "coscheduling"},
        servers={"replicas": 2},
        workers={**workers, "command": ["python", "t.py"]},
    )
    group = build_pod_group(the_job, REF)
    assert group is not None
    assert group["spec"]["minMember"] == expected


def test_min_member_follows_a_scale() -> None:
    small = gang_job({"scheduler": "volcano"}, workers={"replicas": 2, "command": ["t"]})
    large = gang_job({"scheduler": "volcano"}, workers={"replicas": 5, "command": ["t"]})
    small_group, large_group = build_pod_group(small, REF), build_pod_group(large, REF)
    assert small_group is not None
    assert large_group is not None
    assert (small_group["spec"]["minMember"], large_group["spec"]["minMember"]) == (4, 7)


def spec_errors(policy: dict[str, Any]) -> str:
    try:
        gang_job(policy)
    except ValidationError as exc:
        return describe_validation_error(exc)
    return ""


def test_min_available_must_fit_the_job() -> None:
    message = spec_errors({"scheduler": "coscheduling", "minAvailable": 5})
    assert "runPolicy.schedulingPolicy.minAvailable (5) is more than the job's 4 pods" in message
    assert "minAvailable" in spec_errors({"scheduler": "coscheduling", "minAvailable": 0})
    assert spec_errors({"scheduler": "coscheduling", "minAvailable": 4}) == ""
    assert spec_errors({"scheduler": "coscheduling", "minAvailable": 1}) == ""


def test_options_of_another_scheduler_are_refused_with_the_reason() -> None:
    assert "queue is a Volcano queue: it needs scheduler: volcano" in spec_errors({"queue": "q"})
    assert "needs scheduler: volcano" in spec_errors({"scheduler": "coscheduling", "queue": "q"})
    assert "needs scheduler: coscheduling" in spec_errors(
        {"scheduler": "volcano", "scheduleTimeoutSeconds": 5}
    )
    assert "scheduler" in spec_errors({"scheduler": "yunikorn"})
    assert "kueueQueue" in spec_errors({"kueueQueue": "Not_A_Name"})


def test_the_operator_reports_the_field_of_an_invalid_policy() -> None:
    body = {
        "apiVersion": "dynaps.io/v1alpha1",
        "kind": "ParameterServerJob",
        "metadata": {"name": "mf", "namespace": "ns"},
        "spec": {
            "tables": [{"name": "W", "numKeys": 10, "dim": 1}],
            "workers": {"replicas": 1, "command": ["t"]},
            "runPolicy": {"schedulingPolicy": {"scheduler": "volcano", "minAvailable": 9}},
        },
    }
    parsed, message = parse_job(body)
    assert parsed is None
    assert message.startswith("spec: ")
    assert "minAvailable (9) is more than the job's 3 pods" in message


def test_pod_group_api_and_scheduler_names() -> None:
    assert gang.pod_group_api(job()) is None
    assert gang.pod_group_api(gang_job({"scheduler": "coscheduling"})) == gang.COSCHEDULING_API
    assert gang.scheduler_name(gang_job({"schedulerName": "mine"})) == "mine"
    assert gang.scheduler_name(job()) is None
