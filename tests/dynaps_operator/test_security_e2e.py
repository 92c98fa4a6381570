"""A job on the real control plane keeps to itself (issue 12): its Secret, owned and mounted;
hardened pods; its NetworkPolicy; the coordinator's token; a privileged template refused.

The process kubelet mounts the Secret where a kubelet would and ignores securityContext (its
pods are processes of the test's user); what it proves here is that the pods the operator
builds run with the Secret mounted, and that the operator polls and drives the coordinator
with the token the coordinator derives from it.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from dynaps.contract import secret
from dynaps_operator import gang, names
from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import (
    condition,
    condition_of,
    create_job,
    events_of,
    get_job,
    jobs_path,
    pods_of,
    quickstart_job,
    wait_phase,
)
from tests.kube.kubeapi import ApiError, KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet
from tests.kube.polling import wait_for

pytestmark = pytest.mark.e2e
JsonDict = dict[str, Any]


def test_a_job_runs_with_its_secret_hardened_pods_and_network_policy(
    operator: OperatorThread, kube_api: KubeClient, module_namespace: str, process_kubelet: ProcessKubelet
) -> None:
    ns = module_namespace
    created = create_job(kube_api, ns, quickstart_job("guarded", workers=1, epochs=1))
    uid = created["metadata"]["uid"]
    # Succeeded: the operator read /status with the token (else it never sees the job end)
    done = wait_phase(kube_api, ns, "guarded", {"Succeeded", "Failed"}, 120)
    assert done["status"]["phase"] == "Succeeded", done["status"]

    stored = kube_api.get(namespaced("secrets", ns, "guarded-secret"))
    assert [o["uid"] for o in stored["metadata"]["ownerReferences"]] == [uid]
    assert stored["immutable"] is True
    value = secret.decode(base64.b64decode(stored["data"][secret.DATA_KEY]).decode(), "the Secret")
    assert len(value) == secret.SECRET_BYTES
    assert secret.encode(value) not in str(done["status"])

    pods = pods_of(kube_api, ns, "guarded")
    assert {p["metadata"]["name"] for p in pods} == {
        "guarded-coordinator",
        "guarded-server-0",
        "guarded-worker-0",
    }
    for pod in pods:
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        (container,) = spec["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == names.SECRET_VOLUME)
        assert (mount["mountPath"], mount["readOnly"]) == (secret.MOUNT_DIR, True)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[secret.FILE_ENV] == f"{secret.MOUNT_DIR}/{secret.DATA_KEY}"
        volume = next(v for v in spec["volumes"] if v["name"] == names.SECRET_VOLUME)
        assert volume["secret"]["secretName"] == "guarded-secret"

    policy = kube_api.get(namespaced("networkpolicies", ns, "guarded", api="networking.k8s.io/v1"))
    assert [o["uid"] for o in policy["metadata"]["ownerReferences"]] == [uid]
    job_pods = {"matchLabels": {names.LABEL_JOB: "guarded"}}
    assert policy["spec"]["podSelector"] == job_pods
    peers, to_http, _to_metrics = policy["spec"]["ingress"]
    assert peers["from"] == [{"podSelector": job_pods}]
    assert to_http["ports"] == [{"protocol": "TCP", "port": names.COORDINATOR_HTTP_PORT}]

    # the token was never written where a reader of the job or its Events would see it
    token = secret.http_token(value)
    events = kube_api.items(namespaced("events", ns), fieldSelector="involvedObject.name=guarded")
    assert token not in str(done)
    assert token not in str(events)


def test_a_privileged_template_is_refused_naming_the_field(
    operator: OperatorThread, kube_api: KubeClient, module_namespace: str
) -> None:
    ns = module_namespace
    job = quickstart_job("rooted")
    job["spec"]["workers"]["template"] = {
        "spec": {
            "hostNetwork": True,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        }
    }
    create_job(kube_api, ns, job)
    failed = wait_phase(kube_api, ns, "rooted", {"Failed"}, 60)
    message = condition_of(failed, "Failed")["message"]
    assert "spec.workers.template.spec.hostNetwork: refused" in message
    assert "spec.workers.template.spec.volumes[0].hostPath: refused" in message
    assert pods_of(kube_api, ns, "rooted") == []
    with pytest.raises(ApiError) as missing:  # refused before anything was made for it
        kube_api.get(namespaced("secrets", ns, "rooted-secret"))
    assert missing.value.status == 404


def test_a_leftover_secret_of_the_jobs_name_holds_it_with_a_reason_until_it_goes(
    operator: OperatorThread, kube_api: KubeClient, module_namespace: str, process_kubelet: ProcessKubelet
) -> None:
    ns = module_namespace
    leftover = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "reused-secret"},  # no owner: not this job's
        "data": {secret.DATA_KEY: base64.b64encode(secret.encode(secret.new_secret()).encode()).decode()},
    }
    kube_api.create(namespaced("secrets", ns), leftover)
    create_job(kube_api, ns, quickstart_job("reused", workers=1, epochs=1))

    def held() -> JsonDict | None:
        job = get_job(kube_api, ns, "reused")
        found = condition(job, "Running")
        return job if found is not None and found["reason"] == "SecretConflict" else None

    shown = wait_for(held, 20, "the SecretConflict condition")
    assert "Secret reused-secret is not this job's" in shown["status"]["message"]
    assert shown["status"]["phase"] == "Pending"
    assert pods_of(kube_api, ns, "reused") == []  # none would mount another owner's secret
    assert "SecretConflict" in [e["reason"] for e in events_of(kube_api, ns, "reused")]

    kube_api.delete(namespaced("secrets", ns, "reused-secret"))
    done = wait_phase(kube_api, ns, "reused", {"Succeeded", "Failed"}, 120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    stored = kube_api.get(namespaced("secrets", ns, "reused-secret"))
    assert [o["uid"] for o in stored["metadata"]["ownerReferences"]] == [done["metadata"]["uid"]]


def test_a_template_uses_only_what_its_namespace_marked_for_jobs(
    operator: OperatorThread, kube_api: KubeClient, module_namespace: str, process_kubelet: ProcessKubelet
) -> None:
    """Finding 4 of the audit: the operator creates pods with its own rights, so a job author
    who may not read a Secret must not get it into a pod of theirs through a template (whose
    program then reads it, and could send it anywhere)."""
    ns = module_namespace
    value = secret.encode(secret.new_secret())
    kube_api.create(
        namespaced("secrets", ns),
        {"metadata": {"name": "team-data"}, "stringData": {"token": value}},
    )
    job = quickstart_job("borrower", workers=1, epochs=1)
    borrowed = {"name": "TEAM_TOKEN", "valueFrom": {"secretKeyRef": {"name": "team-data", "key": "token"}}}
    job["spec"]["workers"]["template"] = {"spec": {"containers": [{"name": "dynaps", "env": [borrowed]}]}}
    create_job(kube_api, ns, job)

    def held() -> JsonDict | None:
        found = condition(get_job(kube_api, ns, "borrower"), "Running")
        return found if found is not None and found["reason"] == "ReferenceNotAllowed" else None

    shown = wait_for(held, 20, "the ReferenceNotAllowed condition")
    assert shown["message"].startswith(
        "spec.workers.template.spec.containers[0].env[0].valueFrom.secretKeyRef: "
        "Secret team-data is not labelled dynaps.io/usable-by-jobs=true"
    ), shown
    assert pods_of(kube_api, ns, "borrower") == []  # not even the coordinator
    assert "ReferenceNotAllowed" in [e["reason"] for e in events_of(kube_api, ns, "borrower")]

    # whoever may change the Secret marks it for the namespace's jobs: the job starts
    kube_api.patch(
        namespaced("secrets", ns, "team-data"), {"metadata": {"labels": {"dynaps.io/usable-by-jobs": "true"}}}
    )
    done = wait_phase(kube_api, ns, "borrower", {"Succeeded", "Failed"}, 120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert value not in str(done["status"])


def held_for(kube_api: KubeClient, ns: str, name: str, reason: str) -> JsonDict:
    """The job once its Running condition says ``reason`` (else the wait fails)."""

    def held() -> JsonDict | None:
        job = get_job(kube_api, ns, name)
        found = condition(job, "Running")
        return job if found is not None and found["reason"] == reason else None

    return wait_for(held, 20, f"{name}'s {reason} condition")


def test_a_foreign_network_policy_of_the_jobs_name_holds_the_job_until_it_goes(
    operator: OperatorThread, kube_api: KubeClient, module_namespace: str, process_kubelet: ProcessKubelet
) -> None:
    """Finding 7 of the audit: the operator skipped its own NetworkPolicy when one of that name
    existed (a leftover of a deleted job of the same name, or anyone's), and the job ran
    without it."""
    ns = module_namespace
    policies = namespaced("networkpolicies", ns, api="networking.k8s.io/v1")
    foreign = {"metadata": {"name": "fenced"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}
    kube_api.create(policies, foreign)
    create_job(kube_api, ns, quickstart_job("fenced", workers=1, epochs=1))
    shown = held_for(kube_api, ns, "fenced", "NameConflict")
    assert "NetworkPolicy fenced is not this job's" in shown["status"]["message"]
    assert pods_of(kube_api, ns, "fenced") == []  # none runs unprotected
    assert "NameConflict" in [e["reason"] for e in events_of(kube_api, ns, "fenced")]

    kube_api.delete(f"{policies}/fenced")
    done = wait_phase(kube_api, ns, "fenced", {"Succeeded", "Failed"}, 120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    policy = kube_api.get(f"{policies}/fenced")
    assert [o["uid"] for o in policy["metadata"]["ownerReferences"]] == [done["metadata"]["uid"]]


def test_a_foreign_config_map_or_pod_group_of_the_jobs_names_is_never_patched(
    operator: OperatorThread, pod_group_crds: None, kube_api: KubeClient, module_namespace: str
) -> None:
    """Finding 7 of the audit: the operator patched whatever ConfigMap ``<job>-config`` and
    PodGroup ``<job>`` it found, e.g. a team's own ConfigMap named ``app-config``."""
    ns = module_namespace
    team = {"metadata": {"name": "app-config"}, "data": {"config.json": "the team's own"}}
    kube_api.create(namespaced("configmaps", ns), team)
    create_job(kube_api, ns, quickstart_job("app", workers=1, epochs=1))
    shown = held_for(kube_api, ns, "app", "NameConflict")
    assert "ConfigMap app-config is not this job's" in shown["status"]["message"]
    assert kube_api.get(namespaced("configmaps", ns, "app-config"))["data"] == team["data"]
    assert pods_of(kube_api, ns, "app") == []
    kube_api.delete(jobs_path(ns, "app"))

    groups = f"/apis/{gang.COSCHEDULING_API}/namespaces/{ns}/podgroups"
    theirs = {"apiVersion": gang.COSCHEDULING_API, "kind": "PodGroup", "metadata": {"name": "grouped"}}
    kube_api.create(groups, {**theirs, "spec": {"minMember": 7}})
    grouped = quickstart_job(
        "grouped", workers=1, runPolicy={"schedulingPolicy": {"scheduler": "coscheduling"}}
    )
    create_job(kube_api, ns, grouped)
    shown = held_for(kube_api, ns, "grouped", "NameConflict")
    assert "PodGroup grouped is not this job's" in shown["status"]["message"]
    assert kube_api.get(f"{groups}/grouped")["spec"] == {"minMember": 7}
    assert pods_of(kube_api, ns, "grouped") == []
    kube_api.delete(jobs_path(ns, "grouped"))
