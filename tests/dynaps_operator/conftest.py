"""Fixtures for the operator's e2e tests: the CRD installed once, the operator running in-process.

The operator runs in a thread of the test process (fast to start, its failures are the test's
failures) and watches every namespace; each test works in its own ``kube_namespace``. The
job's pods are real dynaps processes started by the process kubelet.
"""

from __future__ import annotations

import copy
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynaps.contract import API_GROUP, API_VERSION, PLURAL
from dynaps_operator import gang
from dynaps_operator.runner import OperatorThread
from dynaps_operator.settings import OperatorSettings
from tests.kube import scheduler_plugins
from tests.kube.binaries import BinariesMissingError
from tests.kube.controlplane import ControlPlane
from tests.kube.fixtures import unavailable
from tests.kube.kubeapi import ApiError, KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet
from tests.kube.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / f"{API_GROUP}_{PLURAL}.yaml"
# The PodGroup CRDs of the gang schedulers (see tests/kube/crds/README.md)
POD_GROUP_CRDS = REPO / "tests" / "kube" / "crds"
GROUP = f"{API_GROUP}/{API_VERSION}"
JsonDict = dict[str, Any]


def jobs_path(namespace: str, name: str = "") -> str:
    return namespaced(PLURAL, namespace, name, api=GROUP)


@pytest.fixture(scope="session")
def crd(kube_control_plane: ControlPlane) -> str:
    """The ParameterServerJob CRD served (the session's control plane installs it at its start:
    this is a no-op then, and installs it on a plane that did not)."""
    kube_control_plane.install_crds([CRD_FILE])
    return f"{PLURAL}.{API_GROUP}"


@pytest.fixture(scope="session")
def pod_group_crds(kube_control_plane: ControlPlane) -> None:
    """Both PodGroup kinds served (cluster-wide, left installed: other tests ignore them; the
    session's control plane installs them at its start, as for ``crd``)."""
    kube_control_plane.install_crds(
        [
            POD_GROUP_CRDS / f"{api.split('/')[0]}_podgroups.yaml"
            for api in (gang.COSCHEDULING_API, gang.VOLCANO_API)
        ]
    )


@pytest.fixture(scope="module")
def coscheduling_scheduler(kube_control_plane: ControlPlane, pod_group_crds: None) -> Iterator[str]:
    """scheduler-plugins' scheduler with Coscheduling (tests/kube/scheduler_plugins.py) under the
    name the operator gives the pods of ``scheduler: coscheduling`` jobs; yields that name.
    Per module, and only where asked for: elsewhere such pods are expected to stay unbound."""
    name = gang.COSCHEDULING_SCHEDULER
    try:
        scheduler_plugins.start(kube_control_plane, name)
    except BinariesMissingError as exc:
        unavailable(str(exc))
    try:
        yield name
    finally:
        kube_control_plane.stop_component(scheduler_plugins.BINARY)


@pytest.fixture(scope="module")
def operator(crd: str, kubeconfig: Path, process_kubelet: ProcessKubelet) -> Iterator[OperatorThread]:
    """Per module, so that a module can run the chart's operator instead (two operators watching
    the same namespace would both act on its jobs)."""
    settings = OperatorSettings(
        probe_host="127.0.0.1", probe_port=0, poll_seconds=1.0, resync_seconds=10.0, instance="e2e"
    )
    with OperatorThread(settings) as running:
        yield running
    # Stopping waits for the connections kopf and the controller opened to close; one left
    # would reach the garbage collector later, in some other test (ResourceWarning).
    assert running.controller is not None
    assert running.controller.sockets.still_open() == []


@pytest.fixture(scope="module")
def module_namespace(kube_api: KubeClient) -> Iterator[str]:
    """A namespace shared by the tests of one module (for a job several tests look at)."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    kube_api.create("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    kube_api.delete(f"/api/v1/namespaces/{name}")


def quickstart_job(name: str, *, workers: int = 2, epochs: int = 3, **spec: Any) -> JsonDict:
    """A small job whose workers run the quickstart app (rows x cols matrix factorisation)."""
    job: JsonDict = {
        "apiVersion": GROUP,
        "kind": "ParameterServerJob",
        "metadata": {"name": name},
        "spec": {
            "tables": [
                {"name": "rows", "numKeys": 2000, "dim": 8},
                {"name": "cols", "numKeys": 500, "dim": 8},
            ],
            "servers": {"replicas": 1},
            "workers": {
                "replicas": workers,
                "command": ["python", "-m", "dynaps.apps.quickstart"],
                "args": ["--epochs", str(epochs), "--entries", "20000"],
            },
        },
    }
    for key, value in spec.items():
        job["spec"][key] = value
    return job


COUNTER_PROGRAM = Path(__file__).with_name("counter_program.py")
# A worker that attaches and then waits: the job stays Running at almost no CPU cost.
IDLE_WORKER = ["python", "-c", "import time, dynaps; dynaps.connect(); time.sleep(600)"]
# A worker that keeps touching a table until it is asked to drain (dynaps.Drained), then exits 0.
DRAINABLE_WORKER = [
    "python",
    "-c",
    "import time, dynaps\n"
    "ps = dynaps.connect()\n"
    "rows = ps.table('rows')\n"
    "try:\n"
    "    while True:\n"
    "        rows.pull([ps.rank])\n"
    "        time.sleep(0.1)\n"
    "except dynaps.Drained:\n"
    "    pass\n",
]
COUNTER_KEYS = 100


def counter_job(name: str, folder: Path, *, workers: int = 1, **spec: Any) -> JsonDict:
    """Two servers and ``workers`` that push +1 to every key of the table ``counts`` and record
    their acknowledged rounds in ``folder`` (counter_program.py); the pods are kept at the end,
    to compare their uids and read their logs."""
    job: JsonDict = {
        "apiVersion": GROUP,
        "kind": "ParameterServerJob",
        "metadata": {"name": name},
        "spec": {
            "tables": [{"name": "counts", "numKeys": COUNTER_KEYS, "dim": 1}],
            "servers": {"replicas": 2},
            "workers": {"replicas": workers, "command": [python_name(), str(COUNTER_PROGRAM), str(folder)]},
            "runPolicy": {"cleanPodPolicy": "None"},
        },
    }
    job["spec"].update(spec)
    return job


def until_stopped_job(name: str, folder: Path, **spec: Any) -> JsonDict:
    """The quickstart job's shape (a coordinator, one server, two workers, the default runPolicy)
    whose workers run counter_program.py until the test touches ``folder/stop``: for a test that
    needs the job Running through what it checks, and then its end, but not a training run's length."""
    job = counter_job(name, folder, workers=2, servers={"replicas": 1})
    del job["spec"]["runPolicy"]
    job["spec"].update(spec)
    return job


def progress(folder: Path, worker: int | None = None) -> int:
    """The acknowledged pushes the counter program's workers (or one, by rank) recorded in
    ``folder`` so far."""
    pattern = "progress-*" if worker is None else f"progress-{worker}"
    return sum(int(f.read_text() or 0) for f in folder.glob(pattern))


def wait_pushing(folder: Path, worker: int | None = None, timeout: float = 60) -> None:
    """Waits until the counter program's workers (or one, by rank) push on: more acknowledged
    pushes than now."""
    before = progress(folder, worker)
    who = "the workers" if worker is None else f"worker {worker}"
    wait_for(lambda: progress(folder, worker) > before, timeout, f"{who} to push on from {before} pushes")


def create_job(kube_api: KubeClient, namespace: str, job: JsonDict) -> JsonDict:
    return kube_api.create(jobs_path(namespace), copy.deepcopy(job))


def get_job(kube_api: KubeClient, namespace: str, name: str) -> JsonDict:
    return kube_api.get(jobs_path(namespace, name))


def wait_phase(kube_api: KubeClient, namespace: str, name: str, phases: set[str], timeout: float) -> JsonDict:
    last: list[JsonDict] = [{}]

    def reached() -> JsonDict | None:
        job = get_job(kube_api, namespace, name)
        last[0] = job
        return job if job.get("status", {}).get("phase") in phases else None

    try:
        return wait_for(reached, timeout, f"job {name} to reach {sorted(phases)}", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {yaml.safe_dump(last[0].get('status'))}") from None


def wait_succeeded(kube_api: KubeClient, namespace: str, name: str, timeout: float) -> JsonDict:
    """The job once it has finished, which must be Succeeded; else the failure names what
    the status, the job's Events and its pods' containers say (the pods may go soon after)."""
    done = wait_phase(kube_api, namespace, name, {"Succeeded", "Failed"}, timeout)
    if done["status"]["phase"] == "Succeeded":
        return done
    events = [f"{e['type']} {e['reason']}: {e.get('message')}" for e in events_of(kube_api, namespace, name)]
    containers = {
        pod["metadata"]["name"]: [c.get("state") for c in pod.get("status", {}).get("containerStatuses", [])]
        for pod in pods_of(kube_api, namespace, name)
    }
    raise AssertionError(
        f"job {name} failed: {yaml.safe_dump(done['status'])}events: {events}\ncontainers: {containers}"
    )


def pods_of(kube_api: KubeClient, namespace: str, job: str) -> list[JsonDict]:
    return kube_api.items(namespaced("pods", namespace), labelSelector=f"dynaps.io/job={job}")


def events_of(kube_api: KubeClient, namespace: str, name: str) -> list[JsonDict]:
    return kube_api.items(namespaced("events", namespace), fieldSelector=f"involvedObject.name={name}")


def wait_for_warnings(kube_api: KubeClient, namespace: str, name: str, reason: str, count: int) -> list[str]:
    """The reasons of the job's Warning Events once ``count`` have ``reason``: the operator
    posts a transition's Events right after the status write that shows it, so a test that
    has seen the status may read the Events a moment too early."""

    def posted() -> list[str] | None:
        reasons = [e["reason"] for e in events_of(kube_api, namespace, name) if e["type"] == "Warning"]
        return reasons if reasons.count(reason) >= count else None

    return wait_for(posted, 15, f"{count} Warning Events {reason} of {namespace}/{name}")


def condition(job: JsonDict, kind: str) -> JsonDict | None:
    return next((c for c in job.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def condition_of(job: JsonDict, kind: str) -> JsonDict:
    """The condition, which must be there."""
    found = condition(job, kind)
    assert found is not None, f"no {kind} condition in {job.get('status')}"
    return found


def pod_logs(kubelet: ProcessKubelet, namespace: str, pods: list[str]) -> str:
    return "\n".join(f"--- {p}\n{kubelet.logs(namespace, p)[-3000:]}" for p in pods)


def python_name() -> str:
    return Path(sys.executable).name


__all__ = [
    "ApiError",
    "Callable",
    "condition",
    "condition_of",
    "create_job",
    "events_of",
    "get_job",
    "jobs_path",
    "pod_logs",
    "pods_of",
    "quickstart_job",
    "wait_phase",
]
