"""Helm works against the test control plane: lint, template, install (pods really run), uninstall.

The operator's chart does not exist yet, so each test writes a throwaway chart into tmp_path.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet
from tests.kube.polling import wait_for


def write_chart(directory: Path) -> Path:
    chart = directory / "throwaway"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v2
            name: throwaway
            version: 0.1.0
            kubeVersion: ">=1.30.0-0"
            """
        )
    )
    (chart / "values.yaml").write_text("replicas: 2\nmessage: hi\n")
    (chart / "templates" / "configmap.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: v1
            kind: ConfigMap
            metadata:
              name: {{ .Release.Name }}-info
            data:
              message: {{ .Values.message | quote }}
              kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
            """
        )
    )
    # A Deployment whose pods sleep: `helm install --wait` then needs the controller manager, the
    # scheduler and the process kubelet to all do their part.
    python = os.path.basename(sys.executable)
    (chart / "templates" / "deployment.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: {{{{ .Release.Name }}}}-sleeper
            spec:
              replicas: {{{{ .Values.replicas }}}}
              selector:
                matchLabels: {{app: {{{{ .Release.Name }}}}-sleeper}}
              template:
                metadata:
                  labels: {{app: {{{{ .Release.Name }}}}-sleeper}}
                spec:
                  terminationGracePeriodSeconds: 5
                  containers:
                    - name: sleeper
                      image: example.invalid/sleeper:1
                      command: [{python}, -c, "import time; time.sleep(3600)"]
            """
        )
    )
    return chart


@pytest.mark.e2e
def test_helm_lint_and_template(kube_control_plane: ControlPlane, tmp_path: Path) -> None:
    chart = write_chart(tmp_path)
    lint = kube_control_plane.helm("lint", str(chart))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout
    rendered = kube_control_plane.helm("template", "demo", str(chart), "--set", "replicas=3").stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(rendered) if d}
    assert docs["Deployment"]["spec"]["replicas"] == 3
    assert docs["ConfigMap"]["metadata"]["name"] == "demo-info"


@pytest.mark.e2e
def test_helm_install_runs_pods_and_uninstall_removes_them(
    kube_control_plane: ControlPlane,
    kube_api: KubeClient,
    process_kubelet: ProcessKubelet,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    ns = kube_namespace
    chart = write_chart(tmp_path)
    kube_control_plane.helm(
        "install", "demo", str(chart), "-n", ns, "--wait", "--timeout", "90s", timeout=120
    )
    info = kube_api.get(namespaced("configmaps", ns, "demo-info"))
    # .Capabilities comes from the live server (1.37.2), not helm's built-in default.
    assert info["data"] == {"message": "hi", "kubeVersion": "v1.37.2"}
    pods = kube_api.items(namespaced("pods", ns), labelSelector="app=demo-sleeper")
    assert len(pods) == 2
    assert all(p["status"]["phase"] == "Running" for p in pods)
    assert len({p["status"]["podIP"] for p in pods}) == 2
    status = json.loads(kube_control_plane.helm("status", "demo", "-n", ns, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"

    kube_control_plane.helm("uninstall", "demo", "-n", ns, "--wait", timeout=120)
    wait_for(
        lambda: not kube_api.items(namespaced("pods", ns), labelSelector="app=demo-sleeper"),
        60,
        "the Deployment's pods to be deleted",
    )
    assert not kube_api.items(namespaced("configmaps", ns), fieldSelector="metadata.name=demo-info")
