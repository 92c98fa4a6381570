"""``scripts/real-node.sh``: the container tests' real node, started by hand and kept until Ctrl-C
(tests/kube/node.py has the node)."""

from __future__ import annotations

import argparse
import os
import signal
import time
from types import FrameType

from tests.kube import procs
from tests.kube.binaries import BinariesMissingError, find_bin_dir, find_images_dir
from tests.kube.node import NodeError, RealNode


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # stops the node as Ctrl-C does


def main() -> int:
    """``python -m tests.kube.node_cli``: start a real node and keep it until Ctrl-C (or SIGTERM),
    for trying the images by hand; scripts/real-node.sh wraps it."""
    parser = argparse.ArgumentParser(
        prog="scripts/real-node.sh",
        description="Start the test suite's real Kubernetes node (containerd, kubelet, kube-proxy, "
        "CoreDNS and a control plane in a network namespace of its own) and keep it until Ctrl-C; "
        "everything it started is then stopped and removed. Needs root and the binaries and "
        "images of scripts/k8s-binaries.sh and scripts/node-images.sh.",
    )
    parser.parse_args()
    if os.geteuid() != 0:
        parser.error("the real node needs root (network namespace, containerd, kubelet)")
    try:
        bin_dir, images = find_bin_dir(), find_images_dir()
    except BinariesMissingError as exc:
        parser.error(str(exc))
    procs.reap_stale_roots()
    root = procs.make_root()
    node = RealNode(bin_dir, images, root)
    stop = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"starting the node in {root} ...", flush=True)
        node.start()
        steps = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in node.timings.items())
        print(f"ready: {steps}")
        kubectl = f"{bin_dir / 'kubectl'} --kubeconfig {node.kubeconfig}"
        print(f"  kubectl: nsenter --net=/run/netns/{node.netns} {kubectl} get pods -A")
        print("Ctrl-C stops it and removes everything it made.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
    except NodeError as exc:
        print(f"the node did not start: {exc}", flush=True)
        return 1
    finally:
        node.stop()
        procs.remove_root(root)
        signal.signal(signal.SIGTERM, stop)
        left = node.leftovers()
        if left:
            print(f"left on the host: {left}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
