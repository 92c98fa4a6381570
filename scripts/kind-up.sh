#!/usr/bin/env bash
# Create a kind cluster, build and load the dynaps images, and install the operator with Helm.
#
#   scripts/kind-up.sh                 # then: scripts/kind-run-example.sh
#   CLUSTER=ps scripts/kind-up.sh      # another cluster name
#
# Needs docker, kind, kubectl and helm on PATH. Idempotent: an existing cluster is reused and
# the release is upgraded. Undo with scripts/kind-down.sh.
set -euo pipefail

CLUSTER="${CLUSTER:-dynaps}"
NAMESPACE="${NAMESPACE:-dynaps-system}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

for tool in docker kind kubectl helm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "kind-up: '$tool' is not on PATH (see docs/operator.md, 'Try it on kind')" >&2
    exit 1
  fi
done

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "kind-up: reusing cluster '$CLUSTER'"
else
  echo "kind-up: creating cluster '$CLUSTER'"
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

"$ROOT/scripts/images.sh"
# shellcheck source=scripts/images.sh
source "$ROOT/scripts/images.sh"
echo "kind-up: loading the images into the cluster's nodes"
tags=()
for image in "${DYNAPS_IMAGES[@]}"; do tags+=("$(dynaps_image_tag "$image")"); done
kind load docker-image --name "$CLUSTER" "${tags[@]}"

# helm installs crds/ only on first install; apply the CRD so that an upgrade updates it too.
kubectl apply --server-side -f "$ROOT/crds/"
echo "kind-up: installing the operator into namespace '$NAMESPACE'"
helm upgrade --install dynaps "$ROOT/charts/dynaps-operator" \
  --namespace "$NAMESPACE" --create-namespace \
  --set image.tag="$DYNAPS_VERSION" --set image.pullPolicy=IfNotPresent \
  --wait --timeout 180s

kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/instance=dynaps
echo "kind-up: ready. Run an example with scripts/kind-run-example.sh"
