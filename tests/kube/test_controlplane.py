"""The test control plane is a real, working Kubernetes API, and it leaves nothing behind."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.kube import procs
from tests.kube.binaries import REPO_ROOT
from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import ApiError, KubeClient, namespaced
from tests.kube.polling import wait_for

KUBE_VERSION = "v1.37.2"


@pytest.mark.e2e
def test_api_server_reports_the_pinned_version(kube_api: KubeClient) -> None:
    assert kube_api.get("/version")["gitVersion"] == KUBE_VERSION


@pytest.mark.e2e
def test_requests_without_a_client_certificate_are_rejected(kube_control_plane: ControlPlane) -> None:
    context = ssl.create_default_context(cafile=str(kube_control_plane.pki.ca_cert))
    conn = http.client.HTTPSConnection(kube_control_plane.host, kube_control_plane.port, context=context)
    try:
        conn.request("GET", "/api/v1/namespaces")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    # Anonymous requests are authenticated as system:anonymous, whom RBAC forbids everything.
    assert response.status == 403


@pytest.mark.e2e
def test_kubectl_applies_and_reads_back(kube_control_plane: ControlPlane, kube_namespace: str) -> None:
    version = json.loads(kube_control_plane.kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == KUBE_VERSION
    assert version["serverVersion"]["gitVersion"] == KUBE_VERSION
    manifest = textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {{name: applied, namespace: {kube_namespace}}}
        data: {{answer: "42"}}
        """
    )
    kube_control_plane.kubectl("apply", "--server-side", "-f", "-", input_text=manifest)
    got = kube_control_plane.kubectl("get", "configmap", "applied", "-n", kube_namespace, "-o", "json")
    assert json.loads(got.stdout)["data"] == {"answer": "42"}


@pytest.mark.e2e
def test_controller_manager_creates_service_accounts_and_collects_garbage(
    kube_api: KubeClient, kube_namespace: str
) -> None:
    ns = kube_namespace
    wait_for(
        lambda: any(
            sa["metadata"]["name"] == "default" for sa in kube_api.items(namespaced("serviceaccounts", ns))
        ),
        30,
        "the default ServiceAccount (serviceaccount controller)",
    )
    owner = kube_api.create(namespaced("configmaps", ns), {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    kube_api.create(namespaced("configmaps", ns), {"metadata": {"name": "owned", "ownerReferences": [ref]}})
    kube_api.delete(namespaced("configmaps", ns, "owner"))

    def owned_gone() -> bool:
        try:
            kube_api.get(namespaced("configmaps", ns, "owned"))
        except ApiError as e:
            return e.status == 404
        return False

    wait_for(owned_gone, 30, "garbage collection of the owned ConfigMap")


@pytest.mark.e2e
def test_scheduler_binds_pods_to_the_process_node(
    kube_api: KubeClient, process_kubelet: object, kube_namespace: str
) -> None:
    body = {
        "metadata": {"name": "sched"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "c", "image": "x", "command": ["true"], "resources": {"requests": {"cpu": "1"}}}
            ],
        },
    }
    kube_api.create(namespaced("pods", kube_namespace), body)
    node = wait_for(
        lambda: kube_api.get(namespaced("pods", kube_namespace, "sched"))["spec"].get("nodeName"),
        30,
        "the scheduler to bind the pod",
    )
    assert node == "process-node"


CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.kube import procs
from tests.kube.controlplane import ControlPlane
root = procs.make_root()
plane = ControlPlane(Path({bin_dir!r}), root)
plane.start()
print(root, flush=True)
time.sleep(600)
"""


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_nothing_survives_a_killed_test_process(k8s_bin_dir: Path, sig: signal.Signals) -> None:
    """A test run killed outright leaves no process (pdeathsig); the next session removes its folder."""
    script = CHILD.format(repo=str(REPO_ROOT), bin_dir=str(k8s_bin_dir))
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    root: Path | None = None
    try:
        assert child.stdout is not None
        root = Path(child.stdout.readline().strip())
        assert root.is_dir()
        assert procs.processes_marked(root), "the child's control plane should run"
        os.kill(child.pid, sig)
        child.wait(30)
        wait_for(
            lambda: not procs.processes_marked(root), 15, "control-plane processes to die with their parent"
        )
        procs.reap_stale_roots()
        assert not root.exists()
    finally:
        # Also when this test itself is interrupted: leave nothing of the child behind.
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        if root is not None and root.exists():
            procs.remove_root(root)


def test_a_session_leaves_the_mount_points_another_live_session_uses(tmp_path: Path) -> None:
    """Two sessions on one host (pytest-xdist workers): the first made a mount point, the
    second's container is bound on it; the first's teardown must not remove it (the bind
    mount would be detached under the running container), and removes it once no live
    session uses it."""
    mine, theirs = procs.make_root(), procs.make_root()
    point = tmp_path / "etc" / "dynaps"
    point.mkdir(parents=True)
    try:
        procs.record_created_path(mine, point)
        procs.record_used_path(mine, point)
        procs.record_used_path(theirs, point)
        procs.remove_root(mine)
        assert point.is_dir(), "removed under a live session's container"
        again = procs.make_root()
        procs.record_created_path(again, point)
        procs.remove_root(theirs)  # the other session ended
        procs.remove_root(again)
        assert not point.exists()
    finally:
        for root in (mine, theirs):
            if root.exists():
                procs.remove_root(root)
