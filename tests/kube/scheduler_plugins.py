"""scheduler-plugins' scheduler as a second scheduler of the test control plane, with the
Coscheduling plugin: what places a gang's pods all or nothing
(tests/dynaps_operator/test_coscheduling_e2e.py).

It runs beside the plane's kube-scheduler with one profile, named like the scheduler the pods
ask for (``spec.schedulerName``); every other pod stays the default scheduler's. It reads the
PodGroups (``scheduling.x-k8s.io/v1alpha1``, whose CRD the caller installs) and binds pods with the
plane's admin kubeconfig, so no RBAC is set up. Leader election is off: one instance, no Lease.

The binary (``scheduler-plugins``, built by scripts/k8s-binaries.sh) is release v0.31.8 on
Kubernetes 1.31's libraries, against the plane's 1.37 API server: it reaches only stable APIs
(pods, nodes, bindings, events.k8s.io/v1, storage.k8s.io/v1, PodGroups).
"""

from __future__ import annotations

import os

import yaml

from tests.kube.binaries import BinariesMissingError
from tests.kube.controlplane import ControlPlane, ControlPlaneError, free_port

BINARY = "scheduler-plugins"
CONFIG_API = "kubescheduler.config.k8s.io/v1"
PLUGIN = "Coscheduling"


def scheduler_config(plane: ControlPlane, scheduler_name: str) -> dict[str, object]:
    """A KubeSchedulerConfiguration with one profile that enables Coscheduling at every extension
    point it has (the way scheduler-plugins' own manifests do), including the queue sort that keeps
    a group's pods together in the queue (a profile has one queue sort: the default one is off)."""
    return {
        "apiVersion": CONFIG_API,
        "kind": "KubeSchedulerConfiguration",
        "leaderElection": {"leaderElect": False},
        "clientConnection": {"kubeconfig": str(plane.kubeconfig), "qps": 100, "burst": 200},
        "profiles": [
            {
                "schedulerName": scheduler_name,
                "plugins": {
                    "multiPoint": {"enabled": [{"name": PLUGIN}]},
                    "queueSort": {"enabled": [{"name": PLUGIN}], "disabled": [{"name": "*"}]},
                },
                # How long the first pods of a group wait at Permit for the rest (its default); a
                # PodGroup's scheduleTimeoutSeconds overrides it.
                "pluginConfig": [{"name": PLUGIN, "args": {"permitWaitingTimeSeconds": 60}}],
            }
        ],
    }


def start(plane: ControlPlane, scheduler_name: str, timeout: float = 60.0) -> None:
    """Starts the scheduler (``plane.stop_component(BINARY)`` stops it); returns once it is healthy.
    Raises BinariesMissingError when the binary is not built."""
    if not os.access(plane.bin_dir / BINARY, os.X_OK):
        raise BinariesMissingError(f"{plane.bin_dir} lacks {BINARY}; run scripts/k8s-binaries.sh")
    folder = plane.root / BINARY
    folder.mkdir(exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(scheduler_config(plane, scheduler_name), sort_keys=False))
    for attempt in range(2):
        port = free_port()
        args = [f"--config={config}", "--bind-address=127.0.0.1", f"--secure-port={port}", "--v=2"]
        try:
            plane.start_component(BINARY, args, port, timeout)
            return
        except ControlPlaneError as exc:
            # The free port was taken before the bind: once more with another (as ControlPlane.start).
            if attempt == 1 or "address already in use" not in str(exc):
                raise
