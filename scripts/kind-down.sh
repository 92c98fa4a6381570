#!/usr/bin/env bash
# Delete the kind cluster made by scripts/kind-up.sh (and everything in it).
set -euo pipefail

CLUSTER="${CLUSTER:-dynaps}"
if ! command -v kind >/dev/null 2>&1; then
  echo "kind-down: 'kind' is not on PATH" >&2
  exit 1
fi
kind delete cluster --name "$CLUSTER"
