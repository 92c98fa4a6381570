#!/usr/bin/env bash
# Start the container tests' real Kubernetes node by hand and keep it until Ctrl-C: containerd,
# kubelet, kube-proxy, CoreDNS and a control plane in a network namespace of its own, running the
# images we ship (docs/test-control-plane.md). Needs root; builds what is missing first.
#
#   scripts/real-node.sh          then, in another shell, the kubectl line it prints
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/k8s-binaries.sh >/dev/null
scripts/node-images.sh >/dev/null
exec "${PYTHON:-$ROOT/.venv/bin/python}" -m tests.kube.node_cli "$@"
