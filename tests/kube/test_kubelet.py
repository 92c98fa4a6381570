"""The process kubelet runs pods as processes the way the operator's e2e tests rely on."""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.kube import memory
from tests.kube.dns import ClusterDns
from tests.kube.kubeapi import ApiError, JsonDict, KubeClient, namespaced
from tests.kube.kubelet import NODE_NAME, ProcessKubelet, dns_records, expand, resource_field
from tests.kube.polling import wait_for

PY = os.path.basename(sys.executable)


def pod(name: str, script: str, **spec: Any) -> JsonDict:
    container = {"name": "main", "image": "ignored:latest", "command": [PY, "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def get_pod(api: KubeClient, ns: str, name: str) -> JsonDict | None:
    try:
        return api.get(namespaced("pods", ns, name))
    except ApiError as e:
        if e.status == 404:
            return None
        raise


def wait_phase(api: KubeClient, ns: str, name: str, *phases: str, timeout: float = 30) -> JsonDict:
    def check() -> JsonDict | None:
        p = get_pod(api, ns, name)
        return p if p and p.get("status", {}).get("phase") in phases else None

    return wait_for(check, timeout, f"pod {ns}/{name} in phase {phases}")


def _ready(p: JsonDict | None) -> bool:
    conditions = (p or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def container_pid(p: JsonDict) -> int:
    cid: str = p["status"]["containerStatuses"][0]["containerID"]
    return int(cid.removeprefix("process://"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for the kubelet to reap it counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


# -- unit tests of the pure helpers (no cluster) --------------------------------------------------


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"


def test_dns_records_for_headless_and_cluster_ip_services() -> None:
    def svc(name: str, **spec: Any) -> JsonDict:
        return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec}

    def member(name: str, ip: str, ready: bool, **spec: Any) -> JsonDict:
        return {
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "job"}},
            "spec": spec,
            "status": {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": str(ready)}],
            },
        }

    services = [
        svc("job", clusterIP="None", selector={"app": "job"}),
        svc("all", clusterIP="None", selector={"app": "job"}, publishNotReadyAddresses=True),
        svc("web", clusterIP="127.240.0.9", selector={"app": "web"}),
    ]
    pods = [
        member("job-0", "127.1.1.1", True, hostname="job-0", subdomain="job"),
        member("job-1", "127.1.1.2", False, hostname="job-1", subdomain="job"),
        {
            **member("o", "127.1.1.3", True),
            "metadata": {"name": "o", "namespace": "x", "labels": {"app": "job"}},
        },
    ]
    assert dns_records(services, pods) == {
        "job.ns.svc.cluster.local": ("127.1.1.1",),
        "job-0.job.ns.svc.cluster.local": ("127.1.1.1",),
        "all.ns.svc.cluster.local": ("127.1.1.1", "127.1.1.2"),
        "web.ns.svc.cluster.local": ("127.240.0.9",),
    }


def test_dns_server_answers_a_records_and_nxdomain() -> None:
    dns = ClusterDns("127.0.0.1", port=0)
    dns.set_records({"a.b.svc.cluster.local": ("127.9.9.9",)})

    def ask(name: str, qtype: int = 1) -> bytes:
        qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        reply = dns.answer(
            struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)
        )
        assert reply is not None
        return reply

    try:
        found = ask("A.b.svc.cluster.local")
        assert struct.unpack("!H", found[:2])[0] == 7
        assert found[3] & 0x0F == 0
        assert struct.unpack("!H", found[6:8])[0] == 1
        assert socket.inet_ntoa(found[-4:]) == "127.9.9.9"
        assert ask("nope.b.svc.cluster.local")[3] & 0x0F == 3
        assert struct.unpack("!H", ask("a.b.svc.cluster.local", qtype=28)[6:8])[0] == 0
    finally:
        dns.stop()


# -- against the control plane --------------------------------------------------------------------


@pytest.mark.e2e
def test_node_is_registered_ready(kube_api: KubeClient, process_kubelet: ProcessKubelet) -> None:
    node = kube_api.get(f"/api/v1/nodes/{NODE_NAME}")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert process_kubelet.node_ip.startswith("127.")


@pytest.mark.e2e
def test_env_downward_api_configmap_secret_and_volume(
    kube_api: KubeClient, process_kubelet: ProcessKubelet, kube_namespace: str
) -> None:
    ns = kube_namespace
    kube_api.create(
        namespaced("configmaps", ns),
        {"metadata": {"name": "cfg"}, "data": {"mode": "fast", "config.json": '{"k": 1}'}},
    )
    kube_api.create(
        namespaced("secrets", ns), {"metadata": {"name": "sec"}, "stringData": {"token": "s3cret"}}
    )
    script = (
        "import os, json, socket\n"
        "keys = ['GREETING', 'POD_NAME', 'POD_NAMESPACE', 'POD_IP', 'MODE', 'TOKEN', 'COMBINED']\n"
        "out = {k: os.environ.get(k) for k in keys}\n"
        "out['file'] = open('/etc/dynaps-kubelet-test/config.json').read()\n"
        "out['subPath'] = open('/etc/dynaps-kubelet-mode').read()\n"
        "try:\n"
        "    open('/etc/dynaps-kubelet-test/x', 'w')\n"
        "except OSError as e:\n"
        "    out['readOnly'] = e.errno\n"
        "out['hostname'] = socket.gethostname()\n"
        "print(json.dumps(out))\n"
    )
    env = [
        {"name": "GREETING", "value": "hello"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
        {"name": "COMBINED", "value": "$(GREETING)@$(POD_IP)"},
    ]
    kube_api.create(
        namespaced("pods", ns),
        pod(
            "echo",
            script,
            container={
                "env": env,
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/dynaps-kubelet-test", "readOnly": True},
                    {"name": "cfg", "mountPath": "/etc/dynaps-kubelet-mode", "subPath": "mode"},
                ],
            },
            volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}],
        ),
    )
    done = wait_phase(kube_api, ns, "echo", "Succeeded", "Failed")
    log = process_kubelet.logs(ns, "echo")
    assert done["status"]["phase"] == "Succeeded", log
    out = json.loads(log.strip().splitlines()[-1])
    ip = done["status"]["podIP"]
    assert ip.startswith(process_kubelet.prefix + ".")
    assert out == {
        "GREETING": "hello",
        "POD_NAME": "echo",
        "POD_NAMESPACE": ns,
        "POD_IP": ip,
        "MODE": "fast",
        "TOKEN": "s3cret",
        "COMBINED": f"hello@{ip}",
        "file": '{"k": 1}',
        "subPath": "fast",
        "readOnly": errno.EROFS,
        "hostname": "echo",
    }
    status = done["status"]["containerStatuses"][0]
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["state"]["terminated"]["reason"] == "Completed"
    assert done["status"]["startTime"]


@pytest.mark.e2e
def test_exit_code_3_is_reported_as_failed(
    kube_api: KubeClient, process_kubelet: ProcessKubelet, kube_namespace: str
) -> None:
    kube_api.create(namespaced("pods", kube_namespace), pod("three", "raise SystemExit(3)"))
    failed = wait_phase(kube_api, kube_namespace, "three", "Failed", "Succeeded")
    assert failed["status"]["phase"] == "Failed"
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    ready = {c["type"]: c["status"] for c in failed["status"]["conditions"]}["Ready"]
    assert ready == "False"


def test_memory_quantities_and_resident_memory_by_group() -> None:
    assert [memory.memory_bytes(q) for q in ("64Mi", "1.5Gi", "2G", "100", 7, ".5Ki")] == [
        64 << 20,
        3 << 29,
        2 * 10**9,
        100,
        7,
        512,
    ]
    with pytest.raises(ValueError, match="unsupported memory quantity"):
        memory.memory_bytes("1GB")
    table = memory.processes()
    with open("/proc/self/statm") as f:
        own = int(f.read().split()[1]) * memory.PAGE_SIZE
    assert table[os.getpid()].parent == os.getppid()
    assert table[os.getpid()].resident >= own // 2 > 0
    # A child in a session of its own is still part of the tree (as the worker's program is).
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        members = memory.tree(os.getpid(), memory.processes())
        assert members[0] == os.getpid()
        assert child.pid in members
        assert os.getppid() not in members
    finally:
        child.kill()
        child.wait()


def test_resource_fields_of_cpu_are_rounded_up_or_the_machine_s() -> None:
    container = {"name": "c", "resources": {"limits": {"cpu": "1500m"}, "requests": {"cpu": "250m"}}}
    pod = {"spec": {"containers": [container, {"name": "bare"}]}}
    assert resource_field(pod, container, {"resource": "limits.cpu", "divisor": "1"}) == "2"
    assert resource_field(pod, container, {"resource": "limits.cpu", "divisor": "500m"}) == "3"
    assert resource_field(pod, container, {"resource": "requests.cpu"}) == "1"
    bare = {"name": "bare"}
    assert resource_field(pod, bare, {"resource": "limits.cpu"}) == str(len(os.sched_getaffinity(0)))
    assert resource_field(pod, bare, {"resource": "requests.cpu"}) == "0"


@pytest.mark.e2e
def test_a_container_over_its_memory_limit_is_oom_killed(
    kube_api: KubeClient, process_kubelet: ProcessKubelet, kube_namespace: str
) -> None:
    # Each program learns its limit from the downward API and allocates (and touches) a
    # multiple of it; only an OOM kill ends the hungry one before its 20 s sleep.
    script = (
        "import os, sys, time\n"
        "limit = int(os.environ['LIMIT_MI']) << 20\n"
        "print(os.environ['LIMIT_MI'], os.environ['REQUEST'], flush=True)\n"
        "hold = b'x' * int(limit * float(sys.argv[1]))\n"
        "time.sleep(float(sys.argv[2]))\n"
    )
    env = [
        {
            "name": "LIMIT_MI",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
        },
        {"name": "REQUEST", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}},
    ]
    for name, limit, times, sleep in (("hungry", "64Mi", "4", "20"), ("modest", "256Mi", "0.1", "0")):
        resources = {"requests": {"memory": "32Mi"}, "limits": {"memory": limit}}
        container = {"args": [times, sleep], "env": env, "resources": resources}
        kube_api.create(namespaced("pods", kube_namespace), pod(name, script, container=container))
    killed = wait_phase(kube_api, kube_namespace, "hungry", "Failed", "Succeeded")
    terminated = killed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")
    assert process_kubelet.logs(kube_namespace, "hungry").split() == ["64", str(32 << 20)]
    fine = wait_phase(kube_api, kube_namespace, "modest", "Failed", "Succeeded")
    terminated = fine["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert process_kubelet.logs(kube_namespace, "modest").split() == ["256", str(32 << 20)]


@pytest.mark.e2e
def test_on_failure_restarts_until_success(
    kube_api: KubeClient, process_kubelet: ProcessKubelet, kube_namespace: str
) -> None:
    # The count survives restarts in an emptyDir, like in a real pod.
    script = (
        "import pathlib\n"
        "p = pathlib.Path('/tmp/dynaps-kubelet-restarts/count')\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "raise SystemExit(0 if n >= 3 else 1)\n"
    )
    spec = pod(
        "flaky",
        script,
        restartPolicy="OnFailure",
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/tmp/dynaps-kubelet-restarts"}]},
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    kube_api.create(namespaced("pods", kube_namespace), spec)
    done = wait_phase(kube_api, kube_namespace, "flaky", "Succeeded", "Failed")
    status = done["status"]["containerStatuses"][0]
    assert done["status"]["phase"] == "Succeeded"
    assert status["restartCount"] == 2
    assert status["lastState"]["terminated"]["exitCode"] == 1


@pytest.mark.e2e
def test_always_restarts_and_counts(
    kube_api: KubeClient, process_kubelet: ProcessKubelet, kube_namespace: str
) -> None:
    kube_api.create(
        namespaced("pods", kube_namespace), pod("loop", "raise SystemExit(0)", restartPolicy="Always")
    )

    def restarted() -> JsonDict | None:
        p = get_pod(kube_api, kube_namespace, "loop")
        statuses = (p or {}).get("status", {}).get("containerStatuses") or [{}]
        return p if statuses[0].get("restartCount", 0) >= 2 else None

    p = wait_for(restarted, 30, "two restarts")
    assert p["status"]["phase"] == "Running"


@pytest.mark.e2e
def test_deletion_sends_sigterm_then_sigkill_after_grace(
    kube_api: KubeClient, process_kubelet: ProcessKubelet, kube_namespace: str
) -> None:
    ns = kube_namespace
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    polite = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"
    kube_api.create(namespaced("pods", ns), pod("stubborn", stubborn, terminationGracePeriodSeconds=2))
    # An exec readiness probe runs inside the container's namespaces (it sees the pod's hostname).
    probe = {"exec": {"command": ["sh", "-c", 'test "$(hostname)" = polite']}, "periodSeconds": 1}
    polite_pod = pod("polite", polite, terminationGracePeriodSeconds=30, container={"readinessProbe": probe})
    kube_api.create(namespaced("pods", ns), polite_pod)
    pids = {}
    for name in ("stubborn", "polite"):
        running = wait_phase(kube_api, ns, name, "Running")
        pids[name] = container_pid(running)
        wait_for(lambda n=name: "up" in process_kubelet.logs(ns, n), 10, f"{name} prints up")  # type: ignore[misc]
    wait_for(lambda: _ready(get_pod(kube_api, ns, "polite")), 15, "the exec readiness probe to pass")
    started = time.monotonic()
    kube_api.delete(namespaced("pods", ns, "stubborn"))
    kube_api.delete(namespaced("pods", ns, "polite"))
    # Python's default SIGTERM action ends the polite pod at once, long before its 30 s grace.
    wait_for(lambda: get_pod(kube_api, ns, "polite") is None, 10, "polite pod removed")
    assert not alive(pids["polite"])
    wait_for(lambda: get_pod(kube_api, ns, "stubborn") is None, 10, "stubborn pod removed")
    elapsed = time.monotonic() - started
    assert not alive(pids["stubborn"])
    assert 2.0 <= elapsed < 8.0, f"SIGKILL should follow the 2 s grace period, took {elapsed:.1f} s"


@pytest.mark.e2e
def test_pod_resolves_headless_service_and_connects(
    kube_api: KubeClient, process_kubelet: ProcessKubelet, kube_namespace: str
) -> None:
    ns = kube_namespace
    kube_api.create(
        namespaced("services", ns),
        {
            "metadata": {"name": "ps"},
            "spec": {"clusterIP": "None", "selector": {"app": "ps-server"}, "ports": [{"port": 7000}]},
        },
    )
    # Both pods bind port 7000 on their own pod IP: pods do not collide on ports.
    server = (
        "import os, socket\n"
        "s = socket.create_server((os.environ['POD_IP'], 7000))\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        "    c.sendall(('hello from ' + socket.gethostname()).encode()); c.close()\n"
    )
    server_pod = pod(
        "server",
        server,
        labels={"app": "ps-server"},
        hostname="server-0",
        subdomain="ps",
        restartPolicy="Always",
        container={
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "ps", "containerPort": 7000}],
            "readinessProbe": {"tcpSocket": {"port": "ps"}, "periodSeconds": 1},
        },
    )
    kube_api.create(namespaced("pods", ns), server_pod)
    client = (
        "import json, os, socket, time, sys\n"
        "names = ['ps', 'ps.NS', 'ps.NS.svc', 'ps.NS.svc.cluster.local', 'server-0.ps',\n"
        "         'server-0.ps.NS.svc.cluster.local']\n"
        "names = [n.replace('NS', os.environ['NS']) for n in names]\n"
        "deadline = time.monotonic() + 30\n"
        "while True:\n"
        "    try:\n"
        "        ips = {n: socket.gethostbyname(n) for n in names}\n"
        "        break\n"
        "    except socket.gaierror:\n"
        "        if time.monotonic() > deadline: raise\n"
        "        time.sleep(0.2)\n"
        "with socket.create_connection(('server-0.ps', 7000), timeout=5) as c:\n"
        "    reply = c.recv(100).decode()\n"
        "s = socket.create_server((os.environ['POD_IP'], 7000)); s.close()\n"
        "print(json.dumps({'ips': ips, 'reply': reply}))\n"
    )
    env = [
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    kube_api.create(namespaced("pods", ns), pod("client", client, container={"env": env}))
    done = wait_phase(kube_api, ns, "client", "Succeeded", "Failed", timeout=60)
    log = process_kubelet.logs(ns, "client")
    assert done["status"]["phase"] == "Succeeded", log
    out = json.loads(log.strip().splitlines()[-1])
    server_ip = get_pod(kube_api, ns, "server")["status"]["podIP"]  # type: ignore[index]
    assert set(out["ips"].values()) == {server_ip}
    assert out["reply"] == "hello from server-0"
    ready = wait_phase(kube_api, ns, "server", "Running")
    assert {c["type"]: c["status"] for c in ready["status"]["conditions"]}["Ready"] == "True"


@pytest.mark.e2e
def test_init_container_http_readiness_and_a_killed_container(
    kube_api: KubeClient, process_kubelet: ProcessKubelet, kube_namespace: str
) -> None:
    ns = kube_namespace
    init = "import pathlib; pathlib.Path('/tmp/dynaps-kubelet-init/msg').write_text('prepared')"
    server = (
        "import http.server, os, pathlib\n"
        "msg = pathlib.Path('/tmp/dynaps-kubelet-init/msg').read_bytes()\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(msg)\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer((os.environ['POD_IP'], 8080), H).serve_forever()\n"
    )
    mount = [{"name": "shared", "mountPath": "/tmp/dynaps-kubelet-init"}]
    spec = pod(
        "web",
        server,
        initContainers=[
            {"name": "prepare", "image": "x", "command": [PY, "-c", init], "volumeMounts": mount}
        ],
        volumes=[{"name": "shared", "emptyDir": {}}],
        container={
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "volumeMounts": mount,
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
        },
    )
    kube_api.create(namespaced("pods", ns), spec)

    def ready() -> JsonDict | None:
        p = get_pod(kube_api, ns, "web")
        conditions = {c["type"]: c["status"] for c in (p or {}).get("status", {}).get("conditions", [])}
        return p if conditions.get("Ready") == "True" else None

    p = wait_for(ready, 30, "the readiness probe to pass")
    init_status = p["status"]["initContainerStatuses"][0]
    assert init_status["state"]["terminated"]["exitCode"] == 0
    # The test process reaches the pod at its pod IP.
    conn = http.client.HTTPConnection(p["status"]["podIP"], 8080, timeout=5)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"prepared"
    finally:
        conn.close()
    process_kubelet.signal_pod(ns, "web", signal.SIGKILL)
    failed = wait_phase(kube_api, ns, "web", "Failed", "Succeeded")
    terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (failed["status"]["phase"], terminated["exitCode"]) == ("Failed", 137)


@pytest.mark.e2e
def test_configmap_volume_follows_updates(
    kube_api: KubeClient, process_kubelet: ProcessKubelet, kube_namespace: str
) -> None:
    ns = kube_namespace
    kube_api.create(namespaced("configmaps", ns), {"metadata": {"name": "live"}, "data": {"epoch": "1"}})
    watcher = (
        "import pathlib, time\n"
        "p = pathlib.Path('/etc/dynaps-kubelet-live/epoch')\n"
        "print('saw', p.read_text(), flush=True)\n"
        "deadline = time.monotonic() + 30\n"
        "while p.read_text() != '2' and time.monotonic() < deadline:\n"
        "    time.sleep(0.1)\n"
        "raise SystemExit(0 if p.read_text() == '2' else 1)\n"
    )
    spec = pod(
        "watcher",
        watcher,
        container={"volumeMounts": [{"name": "live", "mountPath": "/etc/dynaps-kubelet-live"}]},
        volumes=[{"name": "live", "configMap": {"name": "live"}}],
    )
    kube_api.create(namespaced("pods", ns), spec)
    wait_for(lambda: "saw 1" in process_kubelet.logs(ns, "watcher"), 20, "the pod to read epoch 1")
    kube_api.patch(namespaced("configmaps", ns, "live"), {"data": {"epoch": "2"}})
    done = wait_phase(kube_api, ns, "watcher", "Succeeded", "Failed")
    assert done["status"]["phase"] == "Succeeded", process_kubelet.logs(ns, "watcher")
