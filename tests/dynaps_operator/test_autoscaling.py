"""The autoscaling example (examples/autoscaling): the HPA targets the job's /scale subresource,
its metric is the one the operator exports under the name the adapter's rule gives it, and on
the real control plane the HPA controller reads the job's scale."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from dynaps.contract import API_GROUP, API_VERSION, KIND, PLURAL, ParameterServerJob
from dynaps_operator.coordinator_view import parse_status
from dynaps_operator.metrics import Metrics
from dynaps_operator.runner import OperatorThread
from tests.dynaps_operator.conftest import CRD_FILE, REPO, create_job, quickstart_job, wait_phase
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.polling import wait_for

EXAMPLE = REPO / "examples" / "autoscaling"
JsonDict = dict[str, Any]


def load(name: str) -> JsonDict:
    doc: JsonDict = yaml.safe_load((EXAMPLE / name).read_text())
    return doc


def test_hpa_targets_the_jobs_scale_subresource_within_its_bounds() -> None:
    hpa, job = load("hpa.yaml"), ParameterServerJob.model_validate(load("job.yaml"))
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": job.metadata.name}
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = crd["spec"]["versions"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.workers.replicas"
    workers = job.spec.workers
    assert workers.min_replicas == hpa["spec"]["minReplicas"]
    assert workers.max_replicas == hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["object"]["describedObject"] == target


def test_the_adapter_rule_names_the_operators_series_as_the_hpa_asks() -> None:
    (rule,) = load("prometheus-adapter-rules.yaml")["rules"]
    metrics = Metrics()
    metrics.job_backlog(("ns", "mf"), 3)
    (family,) = metrics.data_shards_free.collect()
    (sample,) = family.samples
    series, labels = sample.name, sorted(sample.labels)
    assert series in rule["seriesQuery"]
    for label in labels:
        assert f"{label}!=" in rule["seriesQuery"]
    overrides = rule["resources"]["overrides"]
    assert set(overrides) == set(labels)
    assert {"group": API_GROUP, "resource": PLURAL} in overrides.values()
    assert {"resource": "namespace"} in overrides.values()
    # the adapter's renaming: a Go regexp with ${1}; Python's \1 is the same here
    renamed = re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), series)
    (metric,) = load("hpa.yaml")["spec"]["metrics"]
    assert renamed == metric["object"]["metric"]["name"]


def test_the_operator_exports_each_jobs_unleased_data_shards() -> None:
    view = parse_status(
        {"dataShards": {"3": {"shards": 8, "done": 8, "held": 0, "free": 0}, "4": {"free": 5, "held": 3}}}
    )
    assert view.data_shards_free == 5
    assert parse_status({"dataShards": {"4": {"free": "many"}, "5": None}}).data_shards_free == 0
    metrics = Metrics()
    metrics.job_backlog(("ns", "mf"), view.data_shards_free)
    text = metrics.exposition().decode()
    assert 'dynaps_operator_job_data_shards_free{psjob="mf",psjob_namespace="ns"} 5.0' in text
    metrics.job_backlog(("ns", "mf"), None)
    metrics.job_backlog(("ns", "never-set"), None)
    assert 'psjob="mf"' not in metrics.exposition().decode()


@pytest.mark.e2e
def test_the_hpa_controller_reads_the_jobs_scale(
    operator: OperatorThread, kube_api: KubeClient, kube_namespace: str
) -> None:
    """The control plane's HPA controller gets the job's scale (replicas and selector); with no
    metrics adapter here it stops at the metric, which is what it reports."""
    ns = kube_namespace
    job = quickstart_job("auto", runPolicy={"suspend": True})
    job["spec"]["workers"].update(minReplicas=2, maxReplicas=8)
    create_job(kube_api, ns, job)
    wait_phase(kube_api, ns, "auto", {"Suspended"}, 15)
    hpa = load("hpa.yaml")
    hpa["metadata"]["name"] = "auto"
    hpa["spec"]["scaleTargetRef"]["name"] = "auto"
    hpa["spec"]["metrics"][0]["object"]["describedObject"]["name"] = "auto"
    path = namespaced("horizontalpodautoscalers", ns, api="autoscaling/v2")
    kube_api.create(path, hpa)

    def conditions() -> dict[str, JsonDict] | None:
        status = kube_api.get(f"{path}/auto").get("status") or {}
        found = {c["type"]: c for c in status.get("conditions") or []}
        return found if "ScalingActive" in found else None

    found = wait_for(conditions, 60, "the HPA controller to sync the HPA")
    assert (found["AbleToScale"]["status"], found["AbleToScale"]["reason"]) == ("True", "SucceededGetScale")
    assert found["ScalingActive"]["status"] == "False"
    assert found["ScalingActive"]["reason"] == "FailedGetObjectMetric", found["ScalingActive"]
    status = kube_api.get(f"{path}/auto")["status"]
    assert status["currentReplicas"] == 2  # read from the job's /scale (spec.workers.replicas)
