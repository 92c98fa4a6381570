"""A test-only "process kubelet": runs the pods bound to its Node as local processes.

It is deliberately small and obviously not a real kubelet (no images, no cgroups, no CRI):
- Node: registers one Ready Node and keeps its heartbeat.
- Containers: each container's `command` + `args` runs as a process with the test's Python
  interpreter first on PATH; `image` is ignored. Init containers run first, one by one.
- Environment: `env` (values, downward API fieldRefs, ConfigMap/Secret keys, $(VAR) expansion) and
  `envFrom`; nothing is inherited from the test process except PATH, HOME, locale and Python/BLAS
  settings.
- Network: every pod gets its own loopback address 127.R.x.y (R is picked per kubelet), so pods bind
  the same port without colliding as long as they bind their pod IP (status.podIP), not 0.0.0.0. The
  whole of 127.0.0.0/8 is local on Linux, so no address needs to be added and no packet can leave.
- DNS: a private mount namespace per container gets the pod's own /etc/resolv.conf (pointing at
  dns.ClusterDns on 127.R.0.10, with the Kubernetes search path), /etc/hosts and hostname. The API
  server refuses loopback addresses in EndpointSlices, so records come from Services and Pods
  directly (see dns_records) and the endpoint controllers are off.
- Volumes: ConfigMap, Secret and emptyDir volumes are files in a per-pod folder, bind-mounted at the
  real `mountPath` in the container's mount namespace (a missing mount point is created on the host
  and removed at teardown). ConfigMap and Secret files follow updates, like a kubelet.
- Status: phase, conditions, podIP, startTime, containerStatuses with exit codes, reasons, restarts;
  readiness probes of kind httpGet, tcpSocket and exec. Liveness and startup probes are not run.
- Memory: a container with `resources.limits.memory` is OOM-killed the way a cgroup with
  memory.oom.group (Kubernetes' default since 1.28) would be, but by sampling: at every tick the
  resident memory (RSS) of its process tree is summed, and over the limit every process of the
  tree gets SIGKILL and the container terminates with exit code 137 and reason `OOMKilled`. An allocation
  can overshoot the limit until the next tick (0.2 s), and requests are not enforced.
  `resourceFieldRef` env values give `limits.memory` (the node's memory when unset),
  `requests.memory` (0 when unset), `limits.cpu` (this machine's CPUs when unset: CPU is not
  enforced, and processes see the real ones) and `requests.cpu` (0 when unset), rounded up;
  other resource fields read "0".
- Restarts follow restartPolicy with a short back-off (0.5 s doubling up to 8 s, not 10 s to 5 min).
- Deletion: SIGTERM, SIGKILL after the grace period, final status, then delete with grace 0.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from tests.kube import memory, procs
from tests.kube.dns import CLUSTER_DOMAIN, ClusterDns
from tests.kube.kubeapi import STRATEGIC_MERGE_PATCH, ApiError, JsonDict, KubeClient, namespaced

NODE_NAME = "process-node"
KUBE_VERSION = "v1.37.2"
TICK_SECONDS = 0.2
HEARTBEAT_SECONDS = 10.0
VOLUME_REFRESH_SECONDS = 1.0
BACKOFF_BASE, BACKOFF_MAX = 0.5, 8.0
NODE_MEMORY = "256Gi"
PASSED_ENV = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
)

# Runs inside the container's fresh mount and UTS namespaces, then becomes the container process.
# Arguments: resolv.conf, hosts, hostname, working dir, then (source, target, ro|rw) triples, "--", argv.
SHIM = """set -e
mount --bind "$1" /etc/resolv.conf
mount --bind "$2" /etc/hosts
hostname "$3"
cd "$4"
shift 4
while [ "$1" != "--" ]; do
  mount --bind "$1" "$2"
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$2"; fi
  shift 3
done
shift
exec "$@"
"""


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ContainerError(Exception):
    """A container cannot be started (a missing ConfigMap key, no command); reported as waiting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Container:
    spec: JsonDict
    init: bool
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    state: JsonDict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JsonDict = field(default_factory=dict)
    restart_count: int = 0
    next_start: float = 0.0
    ready: bool = False
    next_probe: float = 0.0
    done: bool = False  # exited and will not be restarted
    oom_killed: bool = False  # killed for exceeding its memory limit; reported on exit

    @property
    def name(self) -> str:
        name: str = self.spec["name"]
        return name

    @property
    def memory_limit(self) -> int | None:
        limit = ((self.spec.get("resources") or {}).get("limits") or {}).get("memory")
        return memory.memory_bytes(limit) if limit is not None else None

    def status(self) -> JsonDict:
        running = "running" in self.state
        status: JsonDict = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready and running,
            "restartCount": self.restart_count,
            "started": running,
        }
        if self.proc is not None:
            status["containerID"] = f"process://{self.proc.pid}"
        return status


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    ip: str
    dir: Path
    containers: list[Container]
    start_time: str
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)  # condition -> (status, time)
    kill_at: float | None = None
    finished: bool = False  # Succeeded or Failed: no process runs any more
    deleted: bool = False
    last_status: JsonDict | None = None


class ProcessKubelet:
    """Runs on a thread of the test process; `start()` returns once the Node is registered."""

    def __init__(self, api: KubeClient, root: Path, node_name: str = NODE_NAME) -> None:
        self.api = api
        self.root = root
        self.node_name = node_name
        self.pods_root = root / "pods"
        self.pods_root.mkdir(parents=True, exist_ok=True)
        self.dns, self.prefix = self._bind_dns()
        self.node_ip = f"{self.prefix}.0.1"
        self._next_ip = 256  # 127.R.1.0 onwards; .0.x is the node's and the DNS server's
        self.runs: dict[str, PodRun] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-kubelet", daemon=True)
        self._last_heartbeat = 0.0
        self._last_volume_refresh = 0.0
        self.errors: list[str] = []  # unexpected exceptions of the loop, for the fixture to report

    # -- public helpers for tests -------------------------------------------------------------------

    @property
    def dns_ip(self) -> str:
        return self.dns.address

    def pod_dir(self, namespace: str, name: str) -> Path:
        for run in list(self.runs.values()):
            if (run.namespace, run.name) == (namespace, name):
                return run.dir
        raise KeyError(f"no pod {namespace}/{name} on {self.node_name}")

    def signal_pod(
        self, namespace: str, name: str, sig: signal.Signals, container: str | None = None
    ) -> None:
        """Sends a signal to a pod's running containers, as a crash or an OOM kill would (no API
        call: the kubelet only notices the exit, like a real one)."""
        for run in list(self.runs.values()):
            if (run.namespace, run.name) != (namespace, name):
                continue
            for c in run.containers:
                if c.proc is not None and container in (None, c.name):
                    procs.signal_group(c.proc, sig)
            return
        raise KeyError(f"no pod {namespace}/{name} on {self.node_name}")

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """The output of a container (the first non-init one by default), like `kubectl logs`;
        empty while the pod has not been started here, so that tests can poll it."""
        for run in list(self.runs.values()):
            if (run.namespace, run.name) != (namespace, name):
                continue
            for c in run.containers:
                if c.name == container or (container is None and not c.init):
                    return c.log.read_text(errors="replace") if c.log.exists() else ""
            raise KeyError(f"pod {namespace}/{name} has no container {container}")
        return ""

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.dns.start()
        self._register_node()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        for run in list(self.runs.values()):
            self._kill_all(run, signal.SIGKILL)
        self.dns.stop()
        with contextlib.suppress(ApiError, OSError):
            self.api.delete(f"/api/v1/nodes/{self.node_name}")

    def _bind_dns(self) -> tuple[ClusterDns, str]:
        # The second octet doubles as a lock: two kubelets on one machine cannot bind the same
        # 127.R.0.10:53, so they never hand out the same pod IPs.
        candidates = list(range(100, 200))
        random.shuffle(candidates)
        for second in candidates:
            with contextlib.suppress(OSError):
                return ClusterDns(f"127.{second}.0.10"), f"127.{second}"
        raise RuntimeError("no free 127.R.0.10:53 for the process kubelet's DNS server")

    def _allocate_ip(self) -> str:
        self._next_ip += 1
        if self._next_ip % 256 in (0, 255):
            self._next_ip += 2
        return f"{self.prefix}.{self._next_ip // 256}.{self._next_ip % 256}"

    # -- node --------------------------------------------------------------------------------------

    def _node_status(self) -> JsonDict:
        stamp = now_rfc3339()
        resources = {"cpu": "64", "memory": NODE_MEMORY, "pods": "250", "ephemeral-storage": "100Gi"}

        def condition(kind: str, status: str, reason: str) -> JsonDict:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": "process kubelet",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("Ready", "True", "KubeletReady"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.node_ip},
                {"type": "Hostname", "address": self.node_name},
            ],
            "nodeInfo": {
                "kubeletVersion": KUBE_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "process://0",
                "kernelVersion": os.uname().release,
                "osImage": "process kubelet",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "status": self._node_status(),
        }
        try:
            self.api.create("/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
        self._heartbeat()

    def _heartbeat(self) -> None:
        self.api.patch(
            f"/api/v1/nodes/{self.node_name}/status",
            {"status": self._node_status()},
            STRATEGIC_MERGE_PATCH,
        )
        self._last_heartbeat = time.monotonic()

    # -- main loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sync()
            except Exception as e:  # keep serving; the fixture reports errors at teardown
                self.errors.append(f"{type(e).__name__}: {e}")
                if len(self.errors) > 100:
                    del self.errors[:50]
            self._stopping.wait(TICK_SECONDS)

    def sync(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat > HEARTBEAT_SECONDS:
            self._heartbeat()
        refresh_volumes = now - self._last_volume_refresh > VOLUME_REFRESH_SECONDS
        if refresh_volumes:
            self._last_volume_refresh = now
        pods = self.api.items("/api/v1/pods", fieldSelector=f"spec.nodeName={self.node_name}")
        seen = set()
        self._enforce_memory_limits()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            try:
                self._sync_pod(pod, refresh_volumes)
            except ApiError as e:
                # The pod (or its namespace) went away between the list and our call: the next
                # tick sees that. Anything else is a real error.
                if e.status not in (404, 409):
                    raise
        for uid in [uid for uid in self.runs if uid not in seen]:
            # Force-deleted (grace 0) behind our back: nothing to report any more.
            self._kill_all(self.runs.pop(uid), signal.SIGKILL)
        self._refresh_dns()

    def _enforce_memory_limits(self) -> None:
        limited = [
            (c, limit)
            for run in list(self.runs.values())
            for c in run.containers
            if c.proc is not None and c.proc.poll() is None and (limit := c.memory_limit) is not None
        ]
        if not limited:
            return
        table = memory.processes()
        for c, limit in limited:
            assert c.proc is not None
            members = memory.tree(c.proc.pid, table)
            if sum(table[pid].resident for pid in members) > limit:
                c.oom_killed = True
                procs.signal_group(c.proc, signal.SIGKILL)
                for pid in members:  # in their own sessions too, as a cgroup's OOM kill reaches them
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(5)  # reported as terminated in this very tick

    def _sync_pod(self, pod: JsonDict, refresh_volumes: bool) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        run = self.runs.get(uid)
        phase = pod.get("status", {}).get("phase")
        if run is None:
            if meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
                if meta.get("deletionTimestamp"):
                    self._delete_pod(meta)
                return
            run = self._admit(pod)
        if run.deleted:
            return
        if meta.get("deletionTimestamp"):
            self._terminate(run, pod)
            return
        if refresh_volumes and not run.finished:
            self._write_volumes(run, pod)
        if not run.finished:
            self._drive_containers(run, pod)
        self._report(run, pod)

    # -- pod set-up --------------------------------------------------------------------------------

    def _admit(self, pod: JsonDict) -> PodRun:
        meta, spec = pod["metadata"], pod["spec"]
        ip = self._allocate_ip()
        folder = self.pods_root / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        folder.mkdir(parents=True)
        containers = [
            Container(spec=c, init=True, log=folder / f"{c['name']}.log")
            for c in spec.get("initContainers", [])
        ] + [Container(spec=c, init=False, log=folder / f"{c['name']}.log") for c in spec["containers"]]
        run = PodRun(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            ip=ip,
            dir=folder,
            containers=containers,
            start_time=now_rfc3339(),
        )
        hostname = spec.get("hostname") or meta["name"]
        names = hostname
        if spec.get("subdomain"):
            names = f"{hostname}.{spec['subdomain']}.{meta['namespace']}.svc.{CLUSTER_DOMAIN} {hostname}"
        (folder / "hosts").write_text(f"127.0.0.1\tlocalhost\n{ip}\t{names}\n")
        ns = meta["namespace"]
        (folder / "resolv.conf").write_text(
            f"nameserver {self.dns_ip}\n"
            f"search {ns}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            "options ndots:5 timeout:1 attempts:2\n"
        )
        (folder / "volumes").mkdir()
        self._write_volumes(run, pod)
        self.runs[run.uid] = run
        return run

    def _write_volumes(self, run: PodRun, pod: JsonDict) -> None:
        for volume in pod["spec"].get("volumes", []):
            target = run.dir / "volumes" / volume["name"]
            if "emptyDir" in volume:
                target.mkdir(exist_ok=True)
                continue
            files = self._volume_files(run.namespace, volume)
            if files is None:
                continue
            target.mkdir(exist_ok=True)
            for rel, content in files.items():
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.exists() and path.read_bytes() == content:
                    continue
                # Rename is atomic: a reader sees the old or the new file, never half of one.
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(content)
                tmp.replace(path)

    def _volume_files(self, namespace: str, volume: JsonDict) -> dict[str, bytes] | None:
        if "configMap" in volume:
            source, kind = volume["configMap"], "configmaps"
        elif "secret" in volume:
            source, kind = volume["secret"], "secrets"
        else:
            return None  # projected, hostPath, PVCs...: not served by the process kubelet
        name = source.get("name") or source.get("secretName")
        try:
            obj = self.api.get(namespaced(kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        data: dict[str, bytes] = {}
        for key, value in (obj.get("data") or {}).items():
            data[key] = base64.b64decode(value) if kind == "secrets" else value.encode()
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value)
        if source.get("items"):
            return {item["path"]: data[item["key"]] for item in source["items"] if item["key"] in data}
        return data

    # -- containers --------------------------------------------------------------------------------

    def _drive_containers(self, run: PodRun, pod: JsonDict) -> None:
        policy = pod["spec"].get("restartPolicy", "Always")
        now = time.monotonic()
        for c in run.containers:
            if c.proc is not None and c.proc.poll() is not None:
                self._on_exit(c, policy if not c.init else ("Never" if policy == "Never" else "OnFailure"))
        inits = [c for c in run.containers if c.init]
        for c in inits:
            if c.done and c.state.get("terminated", {}).get("exitCode") == 0:
                continue
            if c.done:  # an init container failed for good: the pod fails
                return
            if c.proc is None and now >= c.next_start:
                self._start_container(run, pod, c)
            return  # one init container at a time, in order
        for c in run.containers:
            if c.init or c.done:
                continue
            if c.proc is None and now >= c.next_start:
                self._start_container(run, pod, c)
            elif c.proc is None and c.restart_count:
                c.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off restarting failed container {c.name}",
                    }
                }
            if c.proc is not None:
                self._probe(run, c, now)

    def _on_exit(self, c: Container, policy: str) -> None:
        assert c.proc is not None
        code = c.proc.returncode
        exit_code = code if code >= 0 else 128 - code  # killed by signal N -> 128+N, as runtimes report
        started = c.state.get("running", {}).get("startedAt", now_rfc3339())
        c.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "OOMKilled" if c.oom_killed else "Completed" if exit_code == 0 else "Error",
                "startedAt": started,
                "finishedAt": now_rfc3339(),
                "containerID": f"process://{c.proc.pid}",
            }
        }
        c.proc = None
        c.ready = False
        c.oom_killed = False
        restart = policy == "Always" or (policy == "OnFailure" and exit_code != 0)
        if not restart:
            c.done = True
            return
        c.last_state = c.state
        c.next_start = time.monotonic() + min(BACKOFF_BASE * 2**c.restart_count, BACKOFF_MAX)
        c.restart_count += 1

    def _start_container(self, run: PodRun, pod: JsonDict, c: Container) -> None:
        try:
            env = self._container_env(run, pod, c.spec)
            argv = [expand(a, env) for a in [*c.spec.get("command", []), *c.spec.get("args", [])]]
            if not c.spec.get("command"):
                raise ContainerError(
                    "CreateContainerError", "the process kubelet ignores images: set an explicit command"
                )
            mounts = self._mount_args(run, pod, c.spec)
        except ContainerError as e:
            c.state = {"waiting": {"reason": e.reason, "message": e.message}}
            c.next_start = time.monotonic() + 1.0
            return
        workdir = c.spec.get("workingDir") or str(run.dir)
        hostname = pod["spec"].get("hostname") or run.name
        shim = ["unshare", "--mount", "--uts", "--propagation", "private", "--", "/bin/sh", "-c", SHIM]
        shim += ["shim", str(run.dir / "resolv.conf"), str(run.dir / "hosts"), hostname, workdir]
        c.proc = procs.start_process([*shim, *mounts, "--", *argv], root=self.root, env=env, log=c.log)
        c.state = {"running": {"startedAt": now_rfc3339()}}
        c.next_probe = time.monotonic() + float(
            (c.spec.get("readinessProbe") or {}).get("initialDelaySeconds", 0)
        )
        c.ready = not c.spec.get("readinessProbe")

    def _mount_args(self, run: PodRun, pod: JsonDict, spec: JsonDict) -> list[str]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        args: list[str] = []
        for mount in spec.get("volumeMounts", []):
            source = run.dir / "volumes" / mount["name"]
            volume = volumes.get(mount["name"], {})
            if not source.is_dir():
                if "configMap" in volume or "secret" in volume:
                    optional = (volume.get("configMap") or volume.get("secret") or {}).get("optional")
                    if not optional:
                        raise ContainerError(
                            "CreateContainerConfigError", f"volume {mount['name']}: source not found"
                        )
                continue  # volume kinds the process kubelet does not serve are skipped
            if mount.get("subPath"):
                source = source / mount["subPath"]
            target = Path(mount["mountPath"])
            self._ensure_mount_point(target, is_dir=source.is_dir())
            args += [str(source), str(target), "ro" if mount.get("readOnly") else "rw"]
        return args

    def _ensure_mount_point(self, target: Path, *, is_dir: bool) -> None:
        with procs.mount_points_locked():  # another session may be removing it (procs.remove_root)
            procs.record_used_path(self.root, target)
            missing = []
            for parent in [target, *target.parents]:
                if parent.exists():
                    break
                missing.append(parent)
            for path in reversed(missing):
                if path == target and not is_dir:
                    path.touch()
                else:
                    path.mkdir()
                procs.record_created_path(self.root, path)

    def _container_env(self, run: PodRun, pod: JsonDict, spec: JsonDict) -> dict[str, str]:
        env: dict[str, str] = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        # "Images are ignored": the test's interpreter (and its virtualenv) comes first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
        env["HOSTNAME"] = pod["spec"].get("hostname") or run.name
        for source in spec.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
                if key in source:
                    ref = source[key]
                    for k, v in self._object_data(
                        run.namespace, kind, ref["name"], ref.get("optional")
                    ).items():
                        env[prefix + k] = v
        for var in spec.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
            elif "valueFrom" in var:
                value = self._value_from(run, pod, var["valueFrom"], spec)
                if value is not None:
                    env[var["name"]] = value
            else:
                env[var["name"]] = ""
        return env

    def _value_from(self, run: PodRun, pod: JsonDict, source: JsonDict, spec: JsonDict) -> str | None:
        if "fieldRef" in source:
            return field_value(pod, source["fieldRef"]["fieldPath"], run.ip, self.node_ip)
        for kind, key in (("configmaps", "configMapKeyRef"), ("secrets", "secretKeyRef")):
            if key in source:
                ref = source[key]
                data = self._object_data(run.namespace, kind, ref["name"], ref.get("optional"))
                if ref["key"] in data:
                    return data[ref["key"]]
                if ref.get("optional"):
                    return None
                raise ContainerError(
                    "CreateContainerConfigError", f"couldn't find key {ref['key']} in {kind} {ref['name']}"
                )
        if "resourceFieldRef" in source:
            return resource_field(pod, spec, source["resourceFieldRef"])
        return None

    def _object_data(self, namespace: str, kind: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            obj = self.api.get(namespaced(kind, namespace, name))
        except ApiError as e:
            if e.status == 404 and optional:
                return {}
            if e.status == 404:
                raise ContainerError("CreateContainerConfigError", f"{kind} {name} not found") from e
            raise
        data: dict[str, str] = obj.get("data") or {}
        if kind == "secrets":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return data

    # -- readiness probes --------------------------------------------------------------------------

    def _probe(self, run: PodRun, c: Container, now: float) -> None:
        probe = c.spec.get("readinessProbe")
        if not probe or now < c.next_probe:
            return
        c.next_probe = now + float(probe.get("periodSeconds", 10))
        timeout = min(float(probe.get("timeoutSeconds", 1)), 2.0)
        try:
            c.ready = self._probe_once(run, c, probe, timeout)
        except (OSError, http.client.HTTPException, subprocess.TimeoutExpired):
            c.ready = False

    def _probe_once(self, run: PodRun, c: Container, probe: JsonDict, timeout: float) -> bool:
        if "tcpSocket" in probe:
            port = named_port(c.spec, probe["tcpSocket"]["port"])
            with socket.create_connection((probe["tcpSocket"].get("host", run.ip), port), timeout=timeout):
                return True
        if "httpGet" in probe:
            get = probe["httpGet"]
            conn = http.client.HTTPConnection(
                get.get("host", run.ip), named_port(c.spec, get["port"]), timeout=timeout
            )
            try:
                conn.request("GET", get.get("path", "/"))
                return 200 <= conn.getresponse().status < 400
            finally:
                conn.close()
        if "exec" in probe and c.proc is not None:
            # Run inside the container's namespaces so paths and /etc/hosts match what it sees.
            argv = ["nsenter", f"--target={c.proc.pid}", "--mount", "--uts", "--", *probe["exec"]["command"]]
            result = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, cwd=run.dir)
            return result.returncode == 0
        return True

    # -- status ------------------------------------------------------------------------------------

    def _report(self, run: PodRun, pod: JsonDict) -> None:
        policy = pod["spec"].get("restartPolicy", "Always")
        mains = [c for c in run.containers if not c.init]
        inits = [c for c in run.containers if c.init]
        init_failed = any(c.done and c.state["terminated"]["exitCode"] != 0 for c in inits)
        initialized = all(c.done and not init_failed for c in inits)
        if init_failed or (mains and all(c.done for c in mains)):
            failed = init_failed or any(c.state["terminated"]["exitCode"] != 0 for c in mains)
            phase = "Failed" if failed else "Succeeded"
            run.finished = True
        elif initialized and all("waiting" not in c.state or c.restart_count for c in mains):
            phase = "Running"
        else:
            phase = "Pending"
        del policy  # phase rules above already encode the restart policy through Container.done
        ready = phase == "Running" and all(c.ready and "running" in c.state for c in mains)
        scheduled = next(
            (x for x in pod.get("status", {}).get("conditions", []) if x["type"] == "PodScheduled"),
            {"type": "PodScheduled", "status": "True"},
        )
        conditions = [
            scheduled,
            self._condition(run, "PodReadyToStartContainers", True),
            self._condition(run, "Initialized", initialized),
            self._condition(run, "ContainersReady", ready),
            self._condition(run, "Ready", ready),
        ]
        status: JsonDict = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.node_ip,
            "hostIPs": [{"ip": self.node_ip}],
            "podIP": run.ip,
            "podIPs": [{"ip": run.ip}],
            "startTime": run.start_time,
            "containerStatuses": [c.status() for c in mains],
        }
        if inits:
            status["initContainerStatuses"] = [c.status() for c in inits]
        if status != run.last_status:
            self.api.patch(
                namespaced("pods", run.namespace, run.name) + "/status",
                {"metadata": {"uid": run.uid}, "status": status},
                STRATEGIC_MERGE_PATCH,
            )
            run.last_status = status

    def _condition(self, run: PodRun, kind: str, value: bool) -> JsonDict:
        status = "True" if value else "False"
        previous = run.transitions.get(kind)
        if previous is None or previous[0] != status:
            run.transitions[kind] = (status, now_rfc3339())
        return {"type": kind, "status": status, "lastTransitionTime": run.transitions[kind][1]}

    # -- termination -------------------------------------------------------------------------------

    def _terminate(self, run: PodRun, pod: JsonDict) -> None:
        now = time.monotonic()
        if run.kill_at is None:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            run.kill_at = now + float(grace)
            self._kill_all(run, signal.SIGTERM, wait=False)
        running = [c for c in run.containers if c.proc is not None and c.proc.poll() is None]
        if running and now < run.kill_at:
            return
        if running:
            self._kill_all(run, signal.SIGKILL)
        for c in run.containers:
            if c.proc is not None:
                c.proc.wait()
                self._on_exit(c, "Never")
        # The final status carries the exit codes (143 after SIGTERM, 137 after SIGKILL) for whoever
        # watches the deletion; then the pod object goes.
        with contextlib.suppress(ApiError):
            self._report(run, pod)
        self._delete_pod(pod["metadata"])
        run.deleted = True

    def _delete_pod(self, meta: JsonDict) -> None:
        self.api.delete(
            namespaced("pods", meta["namespace"], meta["name"]),
            {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
        )

    def _kill_all(self, run: PodRun, sig: signal.Signals, *, wait: bool = True) -> None:
        for c in run.containers:
            if c.proc is not None and c.proc.poll() is None:
                procs.signal_group(c.proc, sig)
                if wait:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        c.proc.wait(5)

    # -- DNS ---------------------------------------------------------------------------------------

    def _refresh_dns(self) -> None:
        services = self.api.items("/api/v1/services")
        pods = self.api.items("/api/v1/pods")
        self.dns.set_records(dns_records(services, pods))


def dns_records(services: list[JsonDict], pods: list[JsonDict]) -> dict[str, tuple[str, ...]]:
    """Cluster DNS records as the EndpointSlice controller and CoreDNS would make them.

    They are computed from Services and Pods directly because the API server refuses loopback
    addresses in EndpointSlices, so those stay empty here. A headless Service names the ready pods
    its selector matches (all of them with publishNotReadyAddresses), and a pod whose
    spec.subdomain is the Service's name also gets `<spec.hostname>.<service>...`; any other
    Service names its ClusterIP.
    """
    records: dict[str, list[str]] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc["spec"]
        base = f"{meta['name']}.{meta['namespace']}.svc.{CLUSTER_DOMAIN}"
        if spec.get("clusterIP") not in (None, "", "None"):
            records[base] = [spec["clusterIP"]]
            continue
        selector = spec.get("selector")
        if spec.get("type") == "ExternalName" or not selector:
            continue
        addresses: list[str] = []
        for pod in pods:
            pmeta, pstatus = pod["metadata"], pod.get("status", {})
            ip = pstatus.get("podIP")
            labels = pmeta.get("labels") or {}
            if (
                pmeta["namespace"] != meta["namespace"]
                or not ip
                or pmeta.get("deletionTimestamp")
                or pstatus.get("phase") in ("Succeeded", "Failed")
                or any(labels.get(k) != v for k, v in selector.items())
            ):
                continue
            if not (spec.get("publishNotReadyAddresses") or _pod_ready(pod)):
                continue
            addresses.append(ip)
            hostname = pod["spec"].get("hostname")
            if hostname and pod["spec"].get("subdomain") == meta["name"]:
                records[f"{hostname}.{base}"] = [ip]
        records[base] = addresses
    return {name: tuple(ips) for name, ips in records.items() if ips}


def _pod_ready(pod: JsonDict) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes, the rest stays."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(repl, text)


_LABEL_PATH = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")


def field_value(pod: JsonDict, path: str, pod_ip: str, host_ip: str) -> str:
    """Resolves a downward API fieldRef path."""
    meta, spec = pod["metadata"], pod["spec"]
    simple: dict[str, Any] = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    m = _LABEL_PATH.fullmatch(path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    raise ContainerError("CreateContainerConfigError", f"unsupported fieldRef {path}")


def resource_field(pod: JsonDict, spec: JsonDict, ref: JsonDict) -> str:
    """A downward API ``resourceFieldRef`` value: memory (enforced here) and CPU (not
    enforced: an unset limit reads as this machine's CPUs, which the processes run on)."""
    name = ref.get("containerName") or spec["name"]
    container = next((c for c in pod["spec"]["containers"] if c["name"] == name), spec)
    kind, _, resource = str(ref["resource"]).partition(".")
    if resource == "cpu" and kind in ("limits", "requests"):
        cpu = ((container.get("resources") or {}).get(kind) or {}).get("cpu")
        if cpu is None:
            return str(len(os.sched_getaffinity(0))) if kind == "limits" else "0"
        cpu_divisor = cpu_cores(ref.get("divisor") or 1) or 1  # the API server stores "0" for unset
        return str(math.ceil(cpu_cores(cpu) / cpu_divisor))  # rounded up, as the kubelet does
    if resource != "memory" or kind not in ("limits", "requests"):
        return "0"
    value = ((container.get("resources") or {}).get(kind) or {}).get("memory")
    if value is None:
        value = NODE_MEMORY if kind == "limits" else "0"
    divisor = memory.memory_bytes(ref.get("divisor") or 1) or 1  # the API server stores "0" for unset
    return str(-(-memory.memory_bytes(value) // divisor))


def cpu_cores(text: str | int) -> Fraction:
    """A CPU quantity in cores (``500m``, ``2``, ``1.5``)."""
    text = str(text)
    return Fraction(text[:-1]) / 1000 if text.endswith("m") else Fraction(text)


def named_port(container: JsonDict, port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise OSError(f"no container port named {port}")
