"""A real Kubernetes node for the container tests: containerd + runc + CNI, kubelet, kube-proxy and
CoreDNS, with its own control plane, every process inside a network namespace made for the run.

The recipe (what works on our machines and why) is ../shared/real-node.md, kept in
docs/test-control-plane.md. Everything with an address lives in the namespace ``dynaps-node-PID``:
the node IP sits on one end of a veth pair inside it, pods get addresses from the bridge CNI plugin
there, kube-proxy's iptables rules are the namespace's own. The host's network is never touched.
Tools (kubectl, helm) run inside the namespace too, through ``nsenter``: nothing outside it can
reach the API server, which is the point.

Every process is started by pid (tests/kube/procs.py) and stopped at the end; containers are killed
through containerd, then by their cgroups; mounts under the node's folder are unmounted and the
namespace removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from tests.kube import procs
from tests.kube.pki import Pki, make_pki, write_kubeconfig
from tests.kube.tools import ClusterTools

NODE_NAME = "node-0"
NODE_IP = "10.200.0.1"
PEER_IP = "10.200.0.2"  # the other end of the veth pair: the node's default gateway
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
POD_CIDR = "10.244.0.0/24"
API_PORT = 6443
CNI_BIN = Path("/usr/lib/cni")
CONFIGS = Path(__file__).with_name("node_configs")
# Kernel settings the kubelet sets on start (it does not ask): put back as they were at the end.
KUBELET_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
# Host folders the kubelet, containerd's shims and the CNI library use whatever they are told: the
# ones the node created are removed at the end.
HOST_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/var/lib/cni"),
    Path("/run/containerd"),
)
LOCK_FILE = Path("/run/lock/dynaps-real-node.lock")
LOCK_WAIT = 420.0  # seconds a second node waits for the machine (a container suite takes ~3 min)
IMAGES = {
    "runtime": "docker.io/dynaps/runtime:0.1.0",
    "operator": "docker.io/dynaps/operator:0.1.0",
    "coredns": "docker.io/dynaps-test/coredns:1.15.0",
    "pause": "registry.k8s.io/pause:3.10",
}


class NodeError(RuntimeError):
    """The node did not come up; the message names the part and ends with its log."""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RealNode(ClusterTools):
    def __init__(self, bin_dir: Path, images_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.images_dir = images_dir
        self.root = root
        self.state = root / "node"
        self.logs = root / "logs"
        self.netns = f"dynaps-node-{os.getpid()}"
        self.kubeconfig = self.state / "admin.kubeconfig"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.netns_made = False
        self.timings: dict[str, float] = {}
        self.sysctls: dict[str, str] = {}
        self.host_paths_made: list[Path] = []  # known once the machine is ours (start)
        self.lock: IO[str] | None = None
        self.left_behind: list[str] = []

    # ---------------------------------------------------------------- tools inside the namespace

    tool_timeout = 180

    def in_netns(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return self.in_netns(argv)  # the API server is reachable only from inside

    # ---------------------------------------------------------------- start

    def start(self, timeout: float = 180.0) -> None:
        self._take_machine(timeout=LOCK_WAIT)
        self.sysctls = {name: _read(_sysctl_path(name)).strip() for name in KUBELET_SYSCTLS}
        self.host_paths_made = [path for path in HOST_PATHS if not path.exists()]
        began = time.monotonic()
        deadline = began + timeout
        for folder in (self.state, self.logs, self.state / "cni" / "net.d", self.state / "pod-logs"):
            folder.mkdir(parents=True, exist_ok=True)
        self._make_netns()
        pki = self._make_pki()
        self._write_configs(pki)
        self._spawn("containerd", ["/usr/bin/containerd", "--config", str(self.state / "containerd.toml")])
        self._wait_for((self.state / "ctrd" / "containerd.sock").exists, "containerd", deadline)
        self._import_images()
        self.timings["containerd and images"] = time.monotonic() - began
        self._start_control_plane(pki, deadline)
        self.timings["control plane"] = time.monotonic() - began
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={self.state / 'kubelet.yaml'}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={self.state / 'kubelet'}",
                f"--cert-dir={self.state / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-proxy",
            [str(self.bin_dir / "kube-proxy"), f"--config={self.state / 'kube-proxy.yaml'}", "--v=1"],
        )
        self._wait_for(self._node_ready, "kubelet (node Ready)", deadline)
        self.timings["node ready"] = time.monotonic() - began
        self.kubectl("apply", "-f", str(CONFIGS / "coredns.yaml"))
        self.kubectl(
            "-n", "kube-system", "rollout", "status", "deployment/coredns", f"--timeout={int(timeout)}s"
        )
        self.timings["cluster DNS ready"] = time.monotonic() - began

    def _take_machine(self, timeout: float) -> None:
        """One real node per machine at a time: kubelets share the host's kubepods cgroups and
        the folders they use whatever they are told, so a second node (another test session)
        waits for the first to stop."""
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        self.lock = LOCK_FILE.open("w")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.lock.close()
                    self.lock = None
                    raise NodeError(f"another real node held {LOCK_FILE} for {timeout:.0f} s") from None
                time.sleep(0.5)

    def _make_netns(self) -> None:
        if Path(f"/run/netns/{self.netns}").exists():
            raise NodeError(f"network namespace {self.netns} exists already")
        _run(["ip", "netns", "add", self.netns])
        self.netns_made = True
        ip = ["ip", "-n", self.netns]
        _run([*ip, "link", "set", "lo", "up"])
        _run([*ip, "link", "add", "dnode0", "type", "veth", "peer", "name", "dnode1"])
        _run([*ip, "addr", "add", f"{NODE_IP}/24", "dev", "dnode0"])
        _run([*ip, "addr", "add", f"{PEER_IP}/24", "dev", "dnode1"])
        _run([*ip, "link", "set", "dnode0", "up"])
        _run([*ip, "link", "set", "dnode1", "up"])
        # A default route, so that the Service range is routed (kube-proxy rewrites it before it leaves).
        _run([*ip, "route", "add", "default", "via", PEER_IP, "dev", "dnode0"])

    def _make_pki(self) -> Pki:
        # The API server is reached at the node IP, at 127.0.0.1 inside the namespace, and by pods at
        # the kubernetes Service's ClusterIP and names.
        return make_pki(self.state / "pki", hosts=(NODE_IP, API_SERVICE_IP, "127.0.0.1"))

    def _write_configs(self, pki: Pki) -> None:
        values = {"$STATE": str(self.state), "$NODE_IP": NODE_IP, "$POD_CIDR": POD_CIDR}
        for name, target in (
            ("containerd.toml", self.state / "containerd.toml"),
            ("kubelet.yaml", self.state / "kubelet.yaml"),
            ("kube-proxy.yaml", self.state / "kube-proxy.yaml"),
            ("10-dynaps-node.conflist", self.state / "cni" / "net.d" / "10-dynaps-node.conflist"),
        ):
            text = (CONFIGS / name).read_text()
            for key, value in values.items():
                text = text.replace(key, value)
            target.write_text(text)
        # Pods resolve names through CoreDNS only; the host's resolver is out of reach anyway.
        (self.state / "resolv.conf").write_text(f"nameserver {DNS_SERVICE_IP}\n")
        write_kubeconfig(self.kubeconfig, f"https://{NODE_IP}:{API_PORT}", pki, "node")

    def _import_images(self) -> None:
        sock = self.state / "ctrd" / "containerd.sock"
        for name in IMAGES:
            tarball = self.images_dir / f"{name}.tar"
            result = subprocess.run(
                ["ctr", "-a", str(sock), "-n", "k8s.io", "images", "import", "--no-unpack", str(tarball)],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if result.returncode != 0:
                raise NodeError(f"ctr could not import {tarball}: {result.stderr}")

    def _start_control_plane(self, pki: Pki, deadline: float) -> None:
        etcd = self.state / "etcd"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                f"--data-dir={etcd}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=default=http://127.0.0.1:2380",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                "--etcd-servers=http://127.0.0.1:2379",
                f"--cert-dir={self.state / 'pki'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--kubelet-client-certificate={pki.admin_cert}",
                f"--kubelet-client-key={pki.admin_key}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait_for(self._api_ready, "kube-apiserver", deadline)
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                *common,
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=true",
                "--v=1",
            ],
        )
        self._spawn("kube-scheduler", [str(self.bin_dir / "kube-scheduler"), *common, "--v=1"])

    def _api_ready(self) -> bool:
        answer = self.answer("kubectl", "get", "--raw", "/readyz", timeout=10)
        return answer is not None and answer.strip() == "ok"

    def _node_ready(self) -> bool:
        ready = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
        answer = self.answer("kubectl", "get", "node", NODE_NAME, "-o", ready, timeout=10)
        return answer is not None and answer.strip() == "True"

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        env = {
            "PATH": f"{self.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.state),
        }
        self.processes[name] = procs.start_process(
            self.in_netns(argv), root=self.root, env=env, log=self.logs / f"{name}.log"
        )

    def _wait_for(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise NodeError(
                        f"{name} exited with {proc.returncode}; log:\n{_tail(self.logs / f'{name}.log')}"
                    )
            if ready():
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- {name}\n{_tail(self.logs / f'{name}.log', 10)}" for name in self.processes)
        raise NodeError(f"{what} not ready in time; logs:\n{logs}")

    # ---------------------------------------------------------------- stop

    def stop(self) -> None:
        """Everything the node started goes, whatever state it is in: the pods' containers, the
        daemons (by pid, the reverse of their start), the mounts under the node's folder, the
        kubelet's cgroups and the network namespace."""
        self._kill_containers()
        for name in reversed(list(self.processes)):
            procs.stop_process(self.processes[name], grace=10.0)
        self.processes.clear()
        procs.kill_marked(self.root)  # containerd's shims carry the root's marker
        self._kill_pod_cgroups()
        self._unmount_all()
        self._restore_host()
        if self.netns_made:
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
            self.netns_made = False
        # checked while the machine is still ours: the next node makes the same things
        self.left_behind = self._find_leftovers()
        if self.lock is not None:
            self.lock.close()  # releases the machine for the next node
            self.lock = None

    def _kill_containers(self) -> None:
        sock = self.state / "ctrd" / "containerd.sock"
        if "containerd" not in self.processes or not sock.exists():
            return
        ctr = ["ctr", "-a", str(sock), "-n", "k8s.io"]
        listed = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True, check=False)
        for task in listed.stdout.split():
            subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, check=False)

    def _kill_pod_cgroups(self) -> None:
        """Whatever still runs in the kubelet's pod cgroups dies; the cgroups go too."""
        found = [p for p in Path("/sys/fs/cgroup").glob("*/kubepods") if p.is_dir()]
        found += [p for p in Path("/sys/fs/cgroup").glob("kubepods") if p.is_dir()]
        for top in found:
            for _ in range(50):
                pids = [
                    int(pid) for procs_file in top.rglob("cgroup.procs") for pid in _read(procs_file).split()
                ]
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def leftovers(self) -> list[str]:
        """What the node left on the host after :meth:`stop` (nothing, or a bug)."""
        return self.left_behind

    def _find_leftovers(self) -> list[str]:
        found = [f"process {pid}" for pid in procs.processes_marked(self.root)]
        if Path(f"/run/netns/{self.netns}").exists():
            found.append(f"network namespace {self.netns}")
        prefix = str(self.root) + "/"
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if line.split()[4].startswith(prefix):
                found.append(f"mount {line.split()[4]}")
        found += [f"folder {path}" for path in self.host_paths_made if path.exists()]
        found += [f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob("*/kubepods")]
        for name, value in self.sysctls.items():
            now = _read(_sysctl_path(name)).strip()
            if value and now != value:
                found.append(f"sysctl {name} = {now} (was {value})")
        return found

    def _restore_host(self) -> None:
        for name, value in self.sysctls.items():
            if value:
                with contextlib.suppress(OSError):
                    _sysctl_path(name).write_text(value)
        for path in self.host_paths_made:
            shutil.rmtree(path, ignore_errors=True)
        # Log links of our pods in a folder that was there before.
        logs = Path("/var/log/containers")
        if logs.is_dir():
            for link in logs.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and os.readlink(link).startswith(str(self.root) + "/"):
                        link.unlink()

    def _unmount_all(self) -> None:
        prefix = str(self.root) + "/"
        for _ in range(3):
            mounts = [
                line.split()[4]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(prefix)
            ]
            if not mounts:
                return
            for mount in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def remove_node_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
