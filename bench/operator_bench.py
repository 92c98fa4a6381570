"""Operator benchmark: from `kubectl apply` to pods, and the operator's memory with 20 jobs.

Runs on the project's test control plane (tests/kube: etcd, kube-apiserver, controller
manager, scheduler and the process kubelet, all on this machine) with the operator as its own
process (`dynaps-operator`, as in its image), and measures:

* latency: a job stored by the API server (POST) -> all four of its pods exist, over N jobs
  created one after another (each runs to its end before the next, so that its processes do
  not load the next sample); and the same from the start of `kubectl apply -f` (warm
  discovery cache), which adds kubectl's own start-up;
* memory: the operator's resident set size (psutil, sampled every 0.25 s) while 20 jobs
  (coordinator, 1 server, 1 worker each; 60 real dynaps processes) are created at once, run,
  and are polled for 30 s.

    python bench/operator_bench.py [--samples 10] [--jobs 20] [--hold 30] [--out bench/results/operator.json]

Targets: apply -> all pods created <= 2 s; operator memory <= 150 MB with 20 jobs.
"""

# ruff: noqa: E402  (sys.path must be fixed before anything imports the standard library's operator)
from __future__ import annotations

import os
import sys

# Run as a script, this folder is sys.path[0]; the repository root (for tests.kube) takes
# its place (and the file name must not shadow the standard library's operator module).
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import functools
import json
import platform
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml
from tests.kube import procs
from tests.kube.binaries import find_bin_dir
from tests.kube.controlplane import ControlPlane
from tests.kube.kubeapi import ApiError, KubeClient, namespaced
from tests.kube.kubelet import ProcessKubelet

REPO = Path(__file__).resolve().parents[1]

GROUP = "dynaps.io/v1alpha1"
IDLE = ["python", "-c", "import time, dynaps; dynaps.connect(); time.sleep(3600)"]
QUICK = ["python", "-c", "import dynaps; dynaps.connect()"]


def job(name: str, workers: int, command: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": GROUP,
        "kind": "ParameterServerJob",
        "metadata": {"name": name},
        "spec": {
            "tables": [{"name": "W", "numKeys": 10_000, "dim": 8}],
            "servers": {"replicas": 1},
            "workers": {"replicas": workers, "command": command},
        },
    }


def wait(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.005) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def pod_count(api: KubeClient, ns: str, selector: str | None = None) -> int:
    query = {"labelSelector": selector} if selector else {}
    return len(api.items(namespaced("pods", ns), **query))


def has_pods(api: KubeClient, ns: str, selector: str, count: int) -> bool:
    return pod_count(api, ns, selector) == count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.Error:
                return

    def mb(self, value: int) -> float:
        return round(value / 2**20, 1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=10, help="jobs timed one after another (default 10)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs created at once for memory (default 20)")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds to keep them running (default 30)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operator.json")
    args = parser.parse_args()

    procs.reap_stale_roots()
    root = procs.make_root()
    plane = ControlPlane(find_bin_dir(), root)
    kubelet: ProcessKubelet | None = None
    operator: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    try:
        plane.start()
        kubelet = ProcessKubelet(plane.api, root)
        kubelet.start()
        api = plane.api
        plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        wait(lambda: _served(api), 60, "the CRD to be served", 0.2)
        env = {
            **os.environ,
            **plane.env(),
            "DYNAPS_OPERATOR_PROBE_HOST": "127.0.0.1",
            "DYNAPS_OPERATOR_PROBE_PORT": str(free_port()),
            "DYNAPS_OPERATOR_LOG_LEVEL": "WARNING",
        }
        operator = procs.start_process(
            [str(Path(sys.executable).parent / "dynaps-operator")],
            root=root,
            env=env,
            log=root / "operator.log",
        )
        sampler = RssSampler(operator.pid)
        sampler.start()
        port = env["DYNAPS_OPERATOR_PROBE_PORT"]
        wait(lambda: _healthy(port), 60, "the operator's /healthz", 0.1)

        ns = "bench-latency"
        api.create("/api/v1/namespaces", {"metadata": {"name": ns}})
        warm_up = job("warm", 2, QUICK)
        api.create(namespaced("parameterserverjobs", ns, api=GROUP), warm_up)
        wait(lambda: pod_count(api, ns, "dynaps.io/job=warm") == 4, 30, "the warm-up job's pods")
        _settle(api, ns, "warm")
        api_latency = []
        for i in range(args.samples):
            started = time.monotonic()
            api.create(namespaced("parameterserverjobs", ns, api=GROUP), job(f"lat-{i}", 2, QUICK))
            wait(functools.partial(has_pods, api, ns, f"dynaps.io/job=lat-{i}", 4), 30, "pods")
            api_latency.append(time.monotonic() - started)
            _settle(api, ns, f"lat-{i}")
        kubectl_latency = []
        plane.kubectl("get", "psjob", "-n", ns)  # warm kubectl's discovery cache
        for i in range(max(3, args.samples // 2)):
            manifest = root / f"apply-{i}.yaml"
            manifest.write_text(yaml.safe_dump(job(f"apply-{i}", 2, QUICK)))
            started = time.monotonic()
            plane.kubectl("apply", "-n", ns, "-f", str(manifest))
            wait(functools.partial(has_pods, api, ns, f"dynaps.io/job=apply-{i}", 4), 30, "pods")
            kubectl_latency.append(time.monotonic() - started)
            _settle(api, ns, f"apply-{i}")
        api.delete(f"/api/v1/namespaces/{ns}")
        wait(lambda: pod_count(api, ns) == 0, 120, "the latency jobs' pods to go", 0.5)

        load = "bench-load"
        api.create("/api/v1/namespaces", {"metadata": {"name": load}})
        before = len(sampler.samples)
        started = time.monotonic()
        for i in range(args.jobs):
            api.create(namespaced("parameterserverjobs", load, api=GROUP), job(f"load-{i}", 1, IDLE))
        pods_in = wait(lambda: pod_count(api, load) == 3 * args.jobs, 120, "all pods", 0.02)
        running_in = wait(lambda: _running(api, load) == args.jobs, 300, "all jobs Running", 0.5) + pods_in
        time.sleep(args.hold)  # the operator polls every coordinator and resyncs meanwhile
        loaded = sampler.samples[before:]
        metrics = _metrics(port)
        api.delete(f"/api/v1/namespaces/{load}")
        wait(lambda: pod_count(api, load) == 0, 180, "the load jobs' pods to go", 0.5)
        sampler.stop.set()

        result.update(
            {
                "api_to_pods_s": _summary(api_latency),
                "kubectl_apply_to_pods_s": _summary(kubectl_latency),
                "jobs": args.jobs,
                "all_pods_created_s": round(pods_in, 2),
                "all_running_s": round(running_in, 2),
                "rss_idle_mb": sampler.mb(sampler.samples[before - 1]) if before else None,
                "rss_peak_with_jobs_mb": sampler.mb(max(loaded)),
                "rss_median_with_jobs_mb": sampler.mb(int(statistics.median(loaded))),
                "reconciles": metrics,
            }
        )
    finally:
        if operator is not None:
            procs.stop_process(operator)
            log = root / "operator.log"
            if log.exists():  # kept for a look at what the operator said (not committed)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.with_suffix(".log.tmp").write_text(log.read_text())
        if kubelet is not None:
            kubelet.stop()
        plane.stop()
        procs.remove_root(root)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _served(api: KubeClient) -> bool:
    try:
        api.get(f"/apis/{GROUP}/parameterserverjobs")
    except ApiError:
        return False
    return True


def _healthy(port: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _metrics(port: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("dynaps_operator_reconciles_total{"):
            label, value = line.split(" ")
            found[label.split('"')[1]] = float(value)
    return found


def _settle(api: KubeClient, ns: str, name: str) -> None:
    """Wait until the job finished, so that its processes do not load the next sample."""

    def finished() -> bool:
        doc = api.get(namespaced("parameterserverjobs", ns, name, api=GROUP))
        return (doc.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    wait(finished, 120, f"job {name} to finish", 0.2)


def _running(api: KubeClient, ns: str) -> int:
    jobs = api.items(namespaced("parameterserverjobs", ns, api=GROUP))
    return sum(1 for j in jobs if (j.get("status") or {}).get("phase") == "Running")


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
        "n": len(values),
    }


if __name__ == "__main__":
    sys.exit(main())
