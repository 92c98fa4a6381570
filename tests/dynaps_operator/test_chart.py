"""The Helm chart: lint, render, dry-run apply, and its operator running a job under its own RBAC.

The last test installs the chart for real: the process kubelet runs the Deployment's pod
(`dynaps-operator` from this checkout's virtual environment; the image is ignored), which logs
in with a token of the chart's ServiceAccount, so a verb missing from the chart's Role fails it.
No in-process operator runs in this module.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynaps.contract import ParameterServerJob
from dynaps.coordinator import metrics as coordinator_metrics
from dynaps.node import metrics as node_metrics
from dynaps_operator import names
from dynaps_operator.builders import JobRef, build_service
from dynaps_operator.names import Role
from dynaps_operator.pod_builder import build_pod
from dynaps_operator.references import USABLE_LABEL
from dynaps_operator.settings import OperatorSettings
from tests.dynaps_operator.conftest import REPO, create_job, quickstart_job, wait_phase
from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet

CHART = REPO / "charts" / "dynaps-operator"
ACCOUNT = "dynaps-ops"


def render(plane: ControlPlane, *args: str) -> list[dict[str, Any]]:
    out = plane.helm("template", "ops", str(CHART), "-n", "dynaps-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.e2e
def test_chart_lints_cleanly(kube_control_plane: ControlPlane) -> None:
    lint = kube_control_plane.helm("lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout


@pytest.mark.e2e
def test_values_mirror_every_operator_setting(kube_control_plane: ControlPlane) -> None:
    docs = render(kube_control_plane)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = {f.metadata["env"] for f in dataclasses.fields(OperatorSettings)}
    assert set(env) == settings
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, entry in env.items():
        if "value" in entry and name != "DYNAPS_OPERATOR_NAMESPACES":
            assert entry["value"] not in ("", None), f"{name} renders empty: is its value in values.yaml?"
    assert OperatorSettings.from_env({k: v["value"] for k, v in env.items() if "value" in v})
    assert values["watchNamespaces"] == []
    assert env["DYNAPS_OPERATOR_NAMESPACES"]["value"] == ""
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert deployment["spec"]["replicas"] == 1


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("setting", "told"),
    [
        ("workers=0", "at '/workers': minimum: got 0, want 1"),
        ("logLvel=DEBUG", "additional properties 'logLvel' not allowed"),  # a typo is not ignored
        ("logLevel=LOUD", "at '/logLevel': value must be one of"),
        ("resyncSeconds=0", "at '/resyncSeconds': exclusiveMinimum"),
        ("probePort=70000", "at '/probePort': maximum"),
        ("allowPrivilegedJobs=ture", "at '/allowPrivilegedJobs': got string, want boolean"),
        ("watchNamespaces={Team_A}", "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
    ],
)
def test_a_wrong_value_is_refused_at_install_naming_it(
    kube_control_plane: ControlPlane, setting: str, told: str
) -> None:
    """values.schema.json: without it such a value installed, and the operator's pod crashed
    at start (or, for a typo, the value was silently ignored)."""
    done = kube_control_plane.helm("template", "ops", str(CHART), "--set", setting, check=False)
    assert done.returncode != 0
    assert told in done.stderr


def test_the_values_schema_names_every_value() -> None:
    """A value added to values.yaml but not to the schema would be refused at install."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])
    assert schema["additionalProperties"] is False


@pytest.mark.e2e
@pytest.mark.parametrize("namespaced_mode", [False, True], ids=["cluster-wide", "namespaced"])
def test_rendered_chart_applies_with_server_side_dry_run(
    crd: str, kube_control_plane: ControlPlane, kube_namespace: str, tmp_path: Path, namespaced_mode: bool
) -> None:
    args = ["--set", f"watchNamespaces={{{kube_namespace}}}"] if namespaced_mode else []
    docs = render(kube_control_plane, *args)
    kinds = sorted(d["kind"] for d in docs)
    expected = ["Role", "RoleBinding"] if namespaced_mode else ["ClusterRole", "ClusterRoleBinding"]
    assert kinds == sorted(["Deployment", "ServiceAccount", *expected])
    for doc in docs:
        if doc["metadata"].get("namespace") == "dynaps-system":
            doc["metadata"]["namespace"] = kube_namespace
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    dry = kube_control_plane.kubectl("apply", "--dry-run=server", "-f", str(manifest))
    assert dry.stdout.count("(server dry run)") == len(docs)


MONITORS = ("ServiceMonitor", "PodMonitor")
DASHBOARD = CHART / "dashboards" / "dynaps.json"


@pytest.mark.e2e
def test_job_monitors_and_the_dashboard_render_only_when_enabled(kube_control_plane: ControlPlane) -> None:
    kinds = {d["kind"] for d in render(kube_control_plane)}
    assert not kinds & {*MONITORS, "ConfigMap"}
    on = ",".join(
        f"metrics.{part}.enabled=true" for part in ("serviceMonitor", "podMonitor", "grafanaDashboard")
    )
    docs = render(kube_control_plane, "--set", on, "--set", "metrics.podMonitor.labels.release=prom")
    monitors = {d["kind"]: d for d in docs if d["kind"] in MONITORS}
    assert set(monitors) == set(MONITORS)
    # what the operator builds for a job: the label both select by, the port both scrape
    ref = JobRef("mf", "team", "uid-1")
    job = ParameterServerJob.model_validate(quickstart_job("mf"))
    service, pod = build_service(ref), build_pod(job, ref, Role.SERVER)
    selector = {"matchExpressions": [{"key": names.LABEL_JOB, "operator": "Exists"}]}
    for monitor in monitors.values():
        spec = monitor["spec"]
        assert spec["selector"] == selector
        assert spec["namespaceSelector"] == {"any": True}
        assert spec["podTargetLabels"] == [names.LABEL_JOB, names.LABEL_ROLE]
    assert names.LABEL_JOB in service["metadata"]["labels"]
    assert names.LABEL_JOB in pod["metadata"]["labels"]
    (endpoint,) = monitors["ServiceMonitor"]["spec"]["endpoints"]
    (pod_endpoint,) = monitors["PodMonitor"]["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == pod_endpoint["port"] == "metrics"
    assert endpoint["path"] == pod_endpoint["path"] == "/metrics"
    assert {"name": "metrics", "port": names.METRICS_PORT, "targetPort": names.METRICS_PORT} in service[
        "spec"
    ]["ports"]
    assert {"name": "metrics", "containerPort": names.METRICS_PORT} in pod["spec"]["containers"][0]["ports"]
    assert monitors["PodMonitor"]["metadata"]["labels"]["release"] == "prom"
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["dynaps.json"]) == json.loads(DASHBOARD.read_text())
    # scraping the watched namespaces only, when the operator watches some
    watched = render(kube_control_plane, "--set", on, "--set", "watchNamespaces={a,b}")
    for monitor in (d for d in watched if d["kind"] in MONITORS):
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_the_dashboard_queries_only_metrics_the_runtime_exports() -> None:
    exported = {
        sample
        for table in (node_metrics.FAMILIES, coordinator_metrics.FAMILIES)
        for family in table.values()
        for sample in family.samples
    }
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= len(dashboard["panels"]) > 10
    # metric names: what is left without the label matchers ({...}) and groupings (by (...))
    bare = [re.sub(r"\{[^}]*\}|\bby \([^)]*\)", "", expr) for expr in exprs]
    queried = {name for expr in bare for name in re.findall(r"\bdynaps_[a-z0-9_]+", expr)}
    assert queried, "the dashboard queries no dynaps metric"
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "label_values(dynaps_job_phase, dynaps_io_job)" in json.dumps(variables["job"])
    # the job label the monitors attach (podTargetLabels), as Prometheus spells it
    assert all('dynaps_io_job=~"$job"' in expr for expr in exprs)


def token_kubeconfig(plane: ControlPlane, namespace: str) -> str:
    token = plane.kubectl("create", "token", ACCOUNT, "-n", namespace, "--duration=1h").stdout.strip()
    ca = base64.b64encode(Path(plane.pki.ca_cert).read_bytes()).decode()
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "test", "cluster": {"server": plane.server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": ACCOUNT, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": ACCOUNT}}],
            "current-context": "test",
        }
    )


def can_i(plane: ControlPlane, namespace: str, *what: str) -> bool:
    done = plane.kubectl(
        "auth",
        "can-i",
        *what,
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:{ACCOUNT}",
        check=False,
    )
    return done.stdout.strip() == "yes"


@pytest.mark.e2e
def test_installed_chart_runs_a_job_under_its_least_privilege_role(
    crd: str,
    pod_group_crds: None,
    kube_control_plane: ControlPlane,
    kube_api: KubeClient,
    kube_namespace: str,
    process_kubelet: ProcessKubelet,
    tmp_path: Path,
) -> None:
    ns = kube_namespace
    kube_api.create(namespaced("serviceaccounts", ns), {"metadata": {"name": ACCOUNT}})
    kube_api.create(
        namespaced("secrets", ns),
        {
            "metadata": {"name": "operator-kubeconfig"},
            "stringData": {"config": token_kubeconfig(kube_control_plane, ns)},
        },
    )
    values = {
        "watchNamespaces": [ns],
        "serviceAccount": {"create": False, "name": ACCOUNT},
        "pollSeconds": 1,
        "extraEnv": [{"name": "KUBECONFIG", "value": "/var/run/dynaps/kubeconfig/config"}],
        "extraVolumes": [{"name": "kubeconfig", "secret": {"secretName": "operator-kubeconfig"}}],
        "extraVolumeMounts": [
            {"name": "kubeconfig", "mountPath": "/var/run/dynaps/kubeconfig", "readOnly": True}
        ],
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    kube_control_plane.helm(
        "install",
        "ops",
        str(CHART),
        "-n",
        ns,
        "-f",
        str(values_file),
        "--wait",
        "--timeout",
        "90s",
        timeout=120,
    )
    operator_pod = kube_api.items(namespaced("pods", ns), labelSelector="app.kubernetes.io/instance=ops")[0]
    try:
        assert can_i(kube_control_plane, ns, "create", "pods")
        assert can_i(kube_control_plane, ns, "patch", "parameterserverjobs.dynaps.io", "--subresource=status")
        # issue 12: a job's Secret is created and read back, its NetworkPolicy created; no more
        assert can_i(kube_control_plane, ns, "create", "secrets")
        assert can_i(kube_control_plane, ns, "get", "secrets")
        assert can_i(kube_control_plane, ns, "create", "networkpolicies.networking.k8s.io")
        # the audit's finding 4: the labels of what a template names (metadata only); finding 7:
        # whose a child of the job's name is, when one exists already
        for kind in (
            "secrets",
            "configmaps",
            "persistentvolumeclaims",
            "services",
            "networkpolicies.networking.k8s.io",
        ):
            assert can_i(kube_control_plane, ns, "get", kind), kind
        # issue 16: the gang scheduler's PodGroup is created, and patched when minMember changes
        # (if it is the job's: get)
        for group in ("scheduling.x-k8s.io", "scheduling.volcano.sh"):
            for verb in ("create", "patch", "get"):
                assert can_i(kube_control_plane, ns, verb, f"podgroups.{group}"), (verb, group)
            for verb in ("list", "watch", "delete"):
                assert not can_i(kube_control_plane, ns, verb, f"podgroups.{group}"), (verb, group)
        for forbidden in (
            ("list", "secrets"),
            ("watch", "secrets"),
            ("update", "secrets"),
            ("delete", "secrets"),
            ("patch", "networkpolicies.networking.k8s.io"),
            ("delete", "networkpolicies.networking.k8s.io"),
            ("list", "networkpolicies.networking.k8s.io"),
            ("watch", "networkpolicies.networking.k8s.io"),
            ("list", "services"),
            ("watch", "services"),
            ("watch", "persistentvolumeclaims"),
            ("patch", "services"),
            ("delete", "services"),
            ("patch", "pods"),
            ("delete", "configmaps"),
            ("list", "configmaps"),
            ("watch", "configmaps"),
            ("list", "persistentvolumeclaims"),
            ("patch", "persistentvolumeclaims"),
            ("delete", "persistentvolumeclaims"),
            ("update", "parameterserverjobs.dynaps.io"),
            ("create", "deployments.apps"),
        ):
            assert not can_i(kube_control_plane, ns, *forbidden), forbidden
        assert not can_i(kube_control_plane, "default", "create", "pods")  # a Role, not a ClusterRole

        # a template that names a Secret and a ConfigMap marked for jobs: the operator reads
        # their labels under the chart's role before it creates a pod
        marked = {"labels": {USABLE_LABEL: "true"}}
        kube_api.create(
            namespaced("secrets", ns), {"metadata": {"name": "creds", **marked}, "stringData": {"k": "v"}}
        )
        kube_api.create(
            namespaced("configmaps", ns), {"metadata": {"name": "tuning", **marked}, "data": {"k": "v"}}
        )
        charted = quickstart_job("charted")
        env = [
            {"name": "CREDS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}},
            {"name": "TUNING", "valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "k"}}},
        ]
        charted["spec"]["workers"]["template"] = {"spec": {"containers": [{"name": "dynaps", "env": env}]}}
        create_job(kube_api, ns, charted)
        done = wait_phase(kube_api, ns, "charted", {"Succeeded", "Failed"}, 120)
        assert done["status"]["phase"] == "Succeeded", done["status"]
        # what the chart's RBAC let it make: the job's Secret and NetworkPolicy
        assert kube_api.get(namespaced("secrets", ns, "charted-secret"))["metadata"]["ownerReferences"]
        policy = kube_api.get(f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/charted")
        (operator_peer,) = policy["spec"]["ingress"][1]["from"]
        assert operator_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": ns}
        assert operator_peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "ops"
        events = kube_api.items(namespaced("events", ns), fieldSelector="involvedObject.name=charted")
        assert {e["source"].get("host") for e in events} == {operator_pod["metadata"]["name"]}
    except AssertionError:
        print(process_kubelet.logs(ns, operator_pod["metadata"]["name"])[-5000:])
        raise
    finally:
        kube_control_plane.helm("uninstall", "ops", "-n", ns, "--wait", timeout=120)
    print(json.dumps(done["status"]))
