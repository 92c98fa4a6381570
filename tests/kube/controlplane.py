"""A real Kubernetes control plane on 127.0.0.1 for the e2e tests: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler as local processes, with client-certificate authentication.

Everything lives in one temporary root (see procs.py for why nothing outlives the tests). Ports are
picked free at start; every component binds 127.0.0.1 only. CRDs given to the constructor are
installed before the controller manager starts: its garbage collector and the HPA controller's REST
mapper learn a kind installed later only at their next rediscovery (every 30 s).
"""

from __future__ import annotations

import functools
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.kube import procs
from tests.kube.kubeapi import ApiError, KubeClient
from tests.kube.pki import Pki, make_pki, write_kubeconfig
from tests.kube.polling import wait_for
from tests.kube.tools import ClusterTools

# Service ClusterIPs come from loopback: nothing proxies them here (no kube-proxy), so a connection to
# one is refused on this machine instead of leaving it through the default route.
SERVICE_CIDR = "127.240.0.0/16"


class ControlPlaneError(RuntimeError):
    """A component did not start; the message names it and ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ControlPlane(ClusterTools):
    def __init__(self, bin_dir: Path, root: Path, crds: Sequence[Path] = ()) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pki: Pki = make_pki(root / "pki")
        self.kubeconfig = root / "kubeconfig"
        self.host = "127.0.0.1"
        self.port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.client: KubeClient | None = None
        self.started_in: float = 0.0
        self.crds = tuple(crds)  # manifests installed before the controllers start
        self._installed_crds: set[Path] = set()

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def api(self) -> KubeClient:
        assert self.client is not None, "control plane not started"
        return self.client

    # -- start and stop ----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        try:
            self._start(timeout)
        except ControlPlaneError as e:
            # A free port can be taken by someone else between our check and the bind; try once more
            # with new ports and a fresh etcd.
            if "address already in use" not in str(e):
                raise
            self.stop()
            shutil.rmtree(self.root / "etcd", ignore_errors=True)
            self._start(timeout)

    def _start(self, timeout: float) -> None:
        began = time.monotonic()
        deadline = began + timeout
        etcd_port, etcd_peer, self.port = free_port(), free_port(), free_port()
        kcm_port, sched_port = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",  # test data: durability only costs time
                "--log-level=warn",
            ],
        )
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--cert-dir={self.root / 'pki'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--bind-address=127.0.0.1",
                # The machine has a default route; auto-detection would advertise a non-loopback address.
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--service-account-issuer=https://127.0.0.1:{self.port}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                # Without it a pod needs its ServiceAccount to exist already (racy in fresh namespaces)
                # and gets a projected token volume that the process kubelet does not serve.
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                # The 'kubernetes' Service would otherwise point at 127.0.0.1 from inside pods.
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._write_kubeconfig()
        self.client = KubeClient(self.host, self.port, pki.ca_cert, pki.admin_cert, pki.admin_key)
        self._wait_healthy("kube-apiserver", self.port, "/readyz", deadline, client_cert=True)
        self.install_crds(self.crds, max(deadline - time.monotonic(), 1.0))
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
        self._spawn(
            "kube-controller-manager",
            [
                *common,
                f"--secure-port={kcm_port}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=false",
                # Pod IPs are loopback addresses, which EndpointSlices refuse: these controllers would
                # only retry and emit warning Events (the process kubelet's DNS reads pods instead).
                "--controllers=*,-endpoints-controller,-endpointslice-controller,"
                "-endpointslice-mirroring-controller",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                # The HPA controller syncs each HPA once per period (15 s by default): a test of
                # what it reports would mostly wait for the next pass.
                "--horizontal-pod-autoscaler-sync-period=1s",
                "--v=1",
            ],
        )
        self._spawn("kube-scheduler", [*common, f"--secure-port={sched_port}", "--v=1"])
        self._wait_healthy("kube-controller-manager", kcm_port, "/healthz", deadline)
        self._wait_healthy("kube-scheduler", sched_port, "/healthz", deadline)
        self.started_in = time.monotonic() - began

    def install_crds(self, manifests: Sequence[Path], timeout: float = 30.0) -> None:
        """Applies CRD manifests (server-side: applying one again changes nothing) and waits until
        the API server serves and lists in discovery each served version. One this plane installed
        already is skipped, so fixtures may ask for what the start installed."""
        todo = [m.resolve() for m in manifests if m.resolve() not in self._installed_crds]
        if not todo:
            return
        self.kubectl("apply", "--server-side", *(arg for m in todo for arg in ("-f", str(m))))
        deadline = time.monotonic() + timeout
        for manifest in todo:
            self._wait_crd_served(yaml.safe_load(manifest.read_text()), deadline)
            self._installed_crds.add(manifest)

    def _wait_crd_served(self, crd: dict[str, Any], deadline: float) -> None:
        name, group = crd["metadata"]["name"], crd["spec"]["group"]
        plural = crd["spec"]["names"]["plural"]
        api = self.api

        def established() -> bool:
            doc = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = {c["type"]: c["status"] for c in (doc.get("status") or {}).get("conditions") or []}
            return conditions.get("Established") == "True"

        wait_for(established, deadline - time.monotonic(), f"the CRD {name} to be established")
        for version in (v["name"] for v in crd["spec"]["versions"] if v.get("served")):
            wait_for(
                functools.partial(self._serves, f"{group}/{version}", plural),
                deadline - time.monotonic(),
                f"the API server to serve {group}/{version} {plural}",
            )

    def _serves(self, group_version: str, plural: str) -> bool:
        # Lists answer 429 while a new resource's storage initialises (an operator's first list
        # would then back off for a second or more), and discovery, which the controllers read,
        # lists the kind a moment after its CRD is established.
        try:
            self.api.get(f"/apis/{group_version}/{plural}")
            resources = self.api.get(f"/apis/{group_version}").get("resources") or []
        except ApiError as exc:
            if exc.status in (404, 429):
                return False
            raise
        return any(r.get("name") == plural for r in resources)

    def start_component(
        self, name: str, args: Sequence[str], health_port: int, timeout: float = 60.0
    ) -> None:
        """Starts one more binary of ``bin_dir`` against this plane (a second scheduler) and waits for
        its ``/healthz`` on ``health_port``; :meth:`stop_component` stops it, and so does :meth:`stop`."""
        if name in self.processes:
            raise ControlPlaneError(f"{name} is already running")
        self._spawn(name, args)
        try:
            self._wait_healthy(name, health_port, "/healthz", time.monotonic() + timeout)
        except ControlPlaneError:
            self.stop_component(name)
            raise

    def stop_component(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        if proc is not None:
            procs.stop_process(proc, grace=5.0)

    def stop(self) -> None:
        # Reverse start order: clients before the API server, the API server before etcd.
        for name in reversed(list(self.processes)):
            procs.stop_process(self.processes[name], grace=5.0)
        self.processes.clear()
        self._installed_crds.clear()  # a start after a stop begins with a fresh etcd
        if self.client is not None:
            self.client.close()
            self.client = None

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        self.processes[name] = procs.start_process(
            [str(self.bin_dir / name), *args],
            root=self.root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root)},
            log=self.logs / f"{name}.log",
        )

    def _wait_healthy(
        self, name: str, port: int, path: str, deadline: float, *, client_cert: bool = False
    ) -> None:
        if client_cert:
            context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
            context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        else:
            # The controller manager and the scheduler serve self-signed certificates; /healthz is
            # public, and this check only asks whether the process is up.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        last = "no answer"
        while time.monotonic() < deadline:
            for component, proc in self.processes.items():
                if proc.poll() is not None:
                    log = _tail(self.logs / f"{component}.log")
                    raise ControlPlaneError(f"{component} exited with {proc.returncode}; log:\n{log}")
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read().decode(errors="replace")
                if response.status == 200:
                    return
                last = f"{response.status} {body[-300:]}"
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            finally:
                conn.close()
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{name} not healthy in time ({path}: {last}); log:\n{_tail(self.logs / f'{name}.log')}"
        )

    def _write_kubeconfig(self) -> None:
        write_kubeconfig(self.kubeconfig, self.server, self.pki, "dynaps-test")
