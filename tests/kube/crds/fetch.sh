#!/usr/bin/env bash
# Copy scheduler-plugins' PodGroup CRD of one release from the Go module proxy into this folder.
# Usage: tests/kube/crds/fetch.sh [VERSION]   (default: the release the tests were written against)
set -euo pipefail
version="${1:-v0.31.8}"
here="$(cd "$(dirname "$0")" && pwd)"
gopath="$(mktemp -d)"
trap 'chmod -R u+w "$gopath"; rm -rf "$gopath"' EXIT
dir="$(GOPATH="$gopath" GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/scheduler-plugins@${version}" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
install -m 0644 "$dir/config/crd/bases/scheduling.x-k8s.io_podgroups.yaml" "$here/"
sha256sum "$here/scheduling.x-k8s.io_podgroups.yaml"
