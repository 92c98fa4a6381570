"""pytest plugin (registered in the repository's conftest.py): the e2e test cluster.

Session fixtures (one control plane for the whole run, started on first use):
- kube_control_plane -> ControlPlane: .kubeconfig, .server, .api (KubeClient), .kubectl(), .helm(), .env()
- kubeconfig -> Path of a kubeconfig file (admin, client certificate) for kopf, kubectl, helm, clients
- kube_api -> KubeClient (tests/kube/kubeapi.py), dict in, dict out
- process_kubelet -> ProcessKubelet: runs pods as local processes, pod IPs 127.R.x.y
- real_node (package scope) -> RealNode: its own control plane, kubelet, containerd, kube-proxy and
  CoreDNS in a network namespace, running the images we ship (tests marked `containers`; node.py)
Function fixture:
- kube_namespace -> str: a fresh namespace, deleted after the test

Missing binaries skip the e2e tests with the reason, except under CI=true, where they fail: CI must
never go green by running nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from tests.kube import procs
from tests.kube.binaries import REPO_ROOT, BinariesMissingError, find_bin_dir, find_images_dir
from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import KubeClient
from tests.kube.kubelet import ProcessKubelet
from tests.kube.node import RealNode

# What signal.getsignal() returns.
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

KUBE_FIXTURES = {
    "k8s_bin_dir",
    "kube_control_plane",
    "kubeconfig",
    "kube_api",
    "process_kubelet",
    "kube_namespace",
    "real_node",
}


# The CRDs every session's control plane serves from its start, before its controller manager
# runs (controlplane.py says why): the repository's own and the gang schedulers' PodGroups
# (tests/kube/crds). The fixtures that need one still ask for it (tests/dynaps_operator/conftest.py).
SESSION_CRDS = (
    *sorted((REPO_ROOT / "crds").glob("*.yaml")),
    *sorted((REPO_ROOT / "tests" / "kube" / "crds").glob("*.yaml")),
)

# How long the session's control plane took to become healthy, for the run's summary.
_started_in: list[float] = []
_node_timings: list[dict[str, float]] = []
_node_failed: list[str] = []  # why the real node did not start


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skips, or fails under CI, with the reason."""
    if in_ci():
        pytest.fail(f"CI=true and the e2e test cluster is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `pytest -m "not e2e"` must stay fast: a test that reaches the cluster must say so.
    unmarked = [
        item.nodeid
        for item in items
        if KUBE_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("e2e")
    ]
    if unmarked:
        raise pytest.UsageError("tests using the kube fixtures must be marked e2e: " + ", ".join(unmarked))
    # and `pytest -m "not containers"` leaves out the real node (minutes to start the first time)
    unmarked = [
        item.nodeid
        for item in items
        if "real_node" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("containers")
    ]
    if unmarked:
        raise pytest.UsageError("tests using real_node must be marked containers: " + ", ".join(unmarked))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for seconds in _started_in:
        terminalreporter.write_line(
            f"test control plane: etcd, kube-apiserver, controller manager and scheduler healthy in "
            f"{seconds:.1f} s (goal <= 15 s)"
        )
    for timings in _node_timings:
        steps = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in timings.items())
        terminalreporter.write_line(f"real node (containers): {steps}")


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    try:
        return find_bin_dir()
    except BinariesMissingError as e:
        unavailable(str(e))
        raise  # unreachable: unavailable() always raises


@pytest.fixture(scope="session")
def kube_control_plane(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    procs.reap_stale_roots()
    root = procs.make_root()
    plane = ControlPlane(k8s_bin_dir, root, crds=SESSION_CRDS)
    previous = _raise_on_sigterm()
    try:
        plane.start()
        _started_in.append(plane.started_in)
        yield plane
    finally:
        plane.stop()
        procs.remove_root(root)
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def kubeconfig(kube_control_plane: ControlPlane) -> Iterator[Path]:
    """Also exported as KUBECONFIG for the rest of the session, for code that finds its cluster
    on its own (kopf's login, kubectl, helm). The kubernetes client reads KUBECONFIG once, at import,
    so its default is updated too."""
    path = str(kube_control_plane.kubeconfig)
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = path
    client_config = sys.modules.get("kubernetes.config.kube_config")
    client_default = getattr(client_config, "KUBE_CONFIG_DEFAULT_LOCATION", None)
    if client_config is not None:
        vars(client_config)["KUBE_CONFIG_DEFAULT_LOCATION"] = path
    yield kube_control_plane.kubeconfig
    if client_config is not None:
        vars(client_config)["KUBE_CONFIG_DEFAULT_LOCATION"] = client_default
    if previous is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = previous


@pytest.fixture(scope="session")
def kube_api(kube_control_plane: ControlPlane) -> KubeClient:
    return kube_control_plane.api


@pytest.fixture(scope="session")
def process_kubelet(kube_control_plane: ControlPlane) -> Iterator[ProcessKubelet]:
    if os.geteuid() != 0:
        unavailable("the process kubelet needs root (a mount namespace per container)")
    kubelet = ProcessKubelet(kube_control_plane.api, kube_control_plane.root)
    try:
        kubelet.start()
        yield kubelet
    finally:
        kubelet.stop()
    assert not kubelet.errors, "process kubelet errors:\n" + "\n".join(kubelet.errors[-10:])


@pytest.fixture(scope="package")
def real_node(k8s_bin_dir: Path) -> Iterator[RealNode]:
    """Per package of tests (tests/containers): stopped once its last test ran, so the rest of
    the session does not carry its daemons, and another session's node waits minutes, not the
    whole of this session."""
    if _node_failed:  # pytest would start it again for every test
        pytest.fail(f"the real node did not start: {_node_failed[0]}", pytrace=False)
    if os.geteuid() != 0:
        unavailable("the real node needs root (network namespace, containerd, kubelet)")
    try:
        images = find_images_dir()
    except BinariesMissingError as e:
        unavailable(str(e))
        raise  # unreachable
    procs.reap_stale_roots()
    root = procs.make_root()
    node = RealNode(k8s_bin_dir, images, root)
    previous = _raise_on_sigterm()
    try:
        try:
            node.start()
        except Exception as exc:
            _node_failed.append(str(exc))
            raise
        _node_timings.append(node.timings)
        yield node
    finally:
        node.stop()
        leftovers = node.leftovers()
        procs.remove_root(root)
        signal.signal(signal.SIGTERM, previous)
    assert not leftovers, f"the real node left these on the host: {leftovers}"


@pytest.fixture
def kube_namespace(kube_api: KubeClient) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    kube_api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    # The namespace controller deletes the contents; pods go through the kubelet's graceful path.
    kube_api.delete(f"/api/v1/namespaces/{name}")


def _raise_on_sigterm() -> SignalHandler:
    """Turns SIGTERM into KeyboardInterrupt: pytest then stops the run as on Ctrl-C and still runs
    the finalizers above (SystemExit would only fail the current test)."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:

        def handler(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, handler)
    return previous
