#!/usr/bin/env bash
# Apply an example job to the kind cluster made by scripts/kind-up.sh and watch it finish.
#
#   scripts/kind-run-example.sh                      # examples/quickstart.yaml
#   scripts/kind-run-example.sh examples/mf.yaml
#
# Prints the job's phase as it changes, then its status, Events and the rank-0 worker's log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MANIFEST="${1:-$ROOT/examples/quickstart.yaml}"
NAMESPACE="${JOB_NAMESPACE:-default}"
TIMEOUT="${TIMEOUT:-900}"

if [[ ! -f "$MANIFEST" ]]; then
  echo "kind-run-example: no such manifest: $MANIFEST" >&2
  exit 1
fi
NAME="$(kubectl create --dry-run=client -f "$MANIFEST" -o jsonpath='{.metadata.name}')"

kubectl -n "$NAMESPACE" delete psjob "$NAME" --ignore-not-found --wait
kubectl -n "$NAMESPACE" apply -f "$MANIFEST"
echo "kind-run-example: job '$NAME' applied; its pods:"
kubectl -n "$NAMESPACE" get pods -l "dynaps.io/job=$NAME"

phase=""
deadline=$((SECONDS + TIMEOUT))
while [[ "$phase" != "Succeeded" && "$phase" != "Failed" ]]; do
  if ((SECONDS > deadline)); then
    echo "kind-run-example: '$NAME' did not finish within $TIMEOUT s" >&2
    kubectl -n "$NAMESPACE" describe psjob "$NAME" >&2
    exit 1
  fi
  sleep 2
  current="$(kubectl -n "$NAMESPACE" get psjob "$NAME" -o jsonpath='{.status.phase}')"
  if [[ "$current" != "$phase" ]]; then
    phase="$current"
    kubectl -n "$NAMESPACE" get psjob "$NAME" --no-headers
  fi
done

kubectl -n "$NAMESPACE" describe psjob "$NAME"
echo "--- log of $NAME-worker-0"
kubectl -n "$NAMESPACE" logs "$NAME-worker-0" || true
[[ "$phase" == "Succeeded" ]]
