#!/usr/bin/env bash
# Provides the pinned Kubernetes test binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, helm) for the e2e test control plane, the second scheduler of its gang
# scheduling test (scheduler-plugins, with the Coscheduling plugin), and the real node's (kubelet,
# kube-proxy, coredns, and the pause program of the pod sandbox image), see docs/test-control-plane.md.
#
# No release tarball can be downloaded on our machines, so the binaries are built from the Go module
# proxy into a cache outside the repository. A folder named by KUBEBUILDER_ASSETS (the envtest
# convention) is used for every binary it holds; only the missing ones are built.
#
# Usage: scripts/k8s-binaries.sh              provide the binaries (builds once, then instant)
#        scripts/k8s-binaries.sh --print-dir  only print the folder; exit 3 if something is missing
# The last line on stdout is the folder holding all the binaries; progress goes to stderr.
# Environment: DYNAPS_K8S_CACHE (cache folder), KUBEBUILDER_ASSETS, GO (the go command).
set -euo pipefail

K8S_VERSION=1.37.2
# The etcd server version that kubernetes v1.37.2's go.mod already requires: building it in the same
# module leaves the Kubernetes dependency graph untouched.
ETCD_VERSION=3.7.0
HELM_VERSION=3.22.0
COREDNS_VERSION=1.15.0
# A scheduler-plugins release the Go module proxy serves here (it lists no versions of the module, and
# refuses v0.35.0, on Kubernetes 1.35's libraries); it is built on Kubernetes 1.31's libraries and
# schedules against the 1.37 API server through APIs stable in both. tests/kube/crds has its PodGroup CRD.
SCHEDULER_PLUGINS_VERSION=0.31.8
CLOUD_PROVIDER_VERSION=v0.31.14 # see build_scheduler_plugins
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm kubelet kube-proxy coredns pause
	scheduler-plugins)

BUILD_TMP=""
CACHE=${DYNAPS_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dynaps/k8s-$K8S_VERSION}
BIN=$CACHE/bin
STAMP="k8s=$K8S_VERSION etcd=$ETCD_VERSION helm=$HELM_VERSION recipe=1"

# What a binary's stamp must say: a version that is not the binary's own does not rebuild it.
stamp_of() {
	case $1 in
	coredns) printf '%s\n' "coredns=$COREDNS_VERSION recipe=1" ;;
	scheduler-plugins) printf '%s\n' "scheduler-plugins=$SCHEDULER_PLUGINS_VERSION cloud-provider=$CLOUD_PROVIDER_VERSION recipe=1" ;;
	*) printf '%s\n' "$STAMP" ;;
	esac
}

log() { printf '[k8s-binaries %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# Prints the folder that holds a usable copy of one binary, or nothing.
source_of() {
	local name=$1
	if [[ -n ${KUBEBUILDER_ASSETS:-} && -x $KUBEBUILDER_ASSETS/$name ]]; then
		printf '%s\n' "$KUBEBUILDER_ASSETS"
	elif [[ -x $BIN/$name && "$(cat "$BIN/.stamp-$name" 2>/dev/null)" == "$(stamp_of "$name")" ]]; then
		printf '%s\n' "$BIN"
	fi
}

missing_binaries() {
	local name
	for name in "${BINARIES[@]}"; do
		[[ -n "$(source_of "$name")" ]] || printf '%s\n' "$name"
	done
}

# The folder to hand to the tests: the cache itself, or, when KUBEBUILDER_ASSETS supplies some
# binaries, a folder of symbolic links that mixes both sources.
result_dir() {
	if [[ -z ${KUBEBUILDER_ASSETS:-} ]]; then
		printf '%s\n' "$BIN"
		return
	fi
	local mixed=$CACHE/assets-bin name
	mkdir -p "$mixed"
	for name in "${BINARIES[@]}"; do
		ln -sfn "$(source_of "$name")/$name" "$mixed/$name"
	done
	printf '%s\n' "$mixed"
}

find_go() {
	local go=${GO:-}
	if [[ -z $go ]]; then
		go=$(command -v go || true)
		[[ -n $go ]] || go=/usr/local/go/bin/go
	fi
	[[ -x $go ]] || die "no Go toolchain found (set GO=/path/to/go); Go >= 1.26 is needed to build Kubernetes $K8S_VERSION"
	printf '%s\n' "$go"
}

# Shows a line per 200 compiled packages and 100 downloaded modules instead of thousands of lines;
# errors pass through unchanged.
progress_filter() {
	awk '/^go: downloading / { d++; if (d % 100 == 0) { printf "  ... %d modules downloaded\n", d; fflush() }; next }
	     /^[^ :#]+$/ { n++; if (n % 200 == 0) { printf "  ... %d packages compiled (%s)\n", n, $0; fflush() }; next }
	     { print; fflush() }' >&2
}

version_ldflags() {
	local minor=${K8S_VERSION#1.}
	minor=${minor%%.*}
	local flags="-s -w" pkg
	# Without these the servers report v0.0.0 and Helm's kubeVersion checks fail.
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	printf '%s\n' "$flags"
}

# Prints one field (GoMod: its go.mod file, Dir: its source) of a module version that `go mod download`
# fetched from the Go module proxy, or nothing.
module_field() {
	local go=$1 field=$2 module=$3
	"$go" mod download -json "$module" | sed -n "s/^[[:space:]]*\"$field\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

# A Go module that requires k8s.io/kubernetes (and the etcd server) at the pinned versions.
build_kube_module() {
	local go=$1 src=$CACHE/src/kube
	mkdir -p "$src"
	cd "$src"
	[[ -f go.mod ]] || "$go" mod init local.test/dynaps-k8s-binaries >/dev/null 2>&1
	log "resolving k8s.io/kubernetes v$K8S_VERSION from the Go module proxy"
	local gomod
	gomod=$(module_field "$go" GoMod "k8s.io/kubernetes@v$K8S_VERSION")
	[[ -f $gomod ]] || die "could not download k8s.io/kubernetes@v$K8S_VERSION (is the Go module proxy reachable?)"
	# k8s.io/kubernetes replaces its staging modules with local folders, so `go install ...@v` refuses it;
	# point each replace at the published v0.x module instead, derived from the real go.mod.
	local staging=v0.${K8S_VERSION#1.} module count=0
	while read -r module; do
		"$go" mod edit "-replace=$module=$module@$staging"
		count=$((count + 1))
	done < <(sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => \./staging/src/.*|\1|p' "$gomod")
	((count > 20)) || die "found only $count staging modules in $gomod; the recipe needs updating"
	log "replaced $count staging modules with $staging; fetching dependencies"
	"$go" get "k8s.io/kubernetes@v$K8S_VERSION" "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" 2>get.log ||
		die "go get failed: $(grep -v '^go: downloading' get.log)"
	cd - >/dev/null
}

build_kube() {
	local go=$1 out=$2
	build_kube_module "$go"
	cd "$CACHE/src/kube"
	log "compiling kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd in one go build (slow on 2 cores)"
	mkdir -p "$out/kube"
	# One invocation shares every common package between the five binaries.
	CGO_ENABLED=0 nice -n 19 "$go" build -v -trimpath -ldflags "$(version_ldflags)" -o "$out/kube/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
		go.etcd.io/etcd/server/v3 2> >(progress_filter) ||
		die "go build of the Kubernetes binaries failed (see above)"
	wait # for the progress filter to flush
	# go names the etcd binary after its module path (…/server/v3 -> server).
	mv "$out/kube/server" "$out/kube/etcd"
	cd - >/dev/null
}

# kubelet and kube-proxy, in the module build_kube prepared (its go build cache makes this a few minutes).
build_node() {
	local go=$1 out=$2 src=$CACHE/src/kube
	if ! grep -qs "k8s.io/kubernetes v$K8S_VERSION" "$src/go.mod"; then
		build_kube_module "$go"
	fi
	cd "$src"
	log "compiling kubelet and kube-proxy (the real node of the container tests)"
	mkdir -p "$out/node"
	CGO_ENABLED=0 nice -n 19 "$go" build -v -trimpath -ldflags "$(version_ldflags)" -o "$out/node/" \
		k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy 2> >(progress_filter) ||
		die "go build of kubelet and kube-proxy failed (see above)"
	wait
	cd - >/dev/null
}

build_coredns() {
	local go=$1 out=$2
	log "compiling coredns v$COREDNS_VERSION (the node's cluster DNS)"
	mkdir -p "$out/coredns"
	CGO_ENABLED=0 GOBIN="$out/coredns" nice -n 19 "$go" install -v -trimpath -ldflags "-s -w" \
		"github.com/coredns/coredns@v$COREDNS_VERSION" 2> >(progress_filter) ||
		die "go install of coredns v$COREDNS_VERSION failed (see above)"
	wait
}

# The pod sandbox's process: Kubernetes' own pause.c (in the module downloaded above), linked statically
# so that it runs in an image holding nothing else.
build_pause() {
	local go=$1 out=$2 dir
	dir=$(module_field "$go" Dir "k8s.io/kubernetes@v$K8S_VERSION")
	[[ -f $dir/build/pause/linux/pause.c ]] || die "k8s.io/kubernetes@v$K8S_VERSION has no build/pause/linux/pause.c"
	command -v gcc >/dev/null || die "gcc is needed to build the pause program (apt-get install gcc libc6-dev)"
	log "compiling pause (the pod sandbox)"
	mkdir -p "$out/pause"
	gcc -Os -static -DVERSION="v$K8S_VERSION-dynaps" -o "$out/pause/pause" "$dir/build/pause/linux/pause.c" ||
		die "gcc could not build pause"
}

# scheduler-plugins' scheduler (kube-scheduler with its out-of-tree plugins compiled in), in a module of
# our own: its go.mod replaces modules, so `go install ...@v` refuses it.
build_scheduler_plugins() {
	local go=$1 out=$2 src=$CACHE/src/scheduler-plugins release=v$SCHEDULER_PLUGINS_VERSION
	mkdir -p "$src"
	cd "$src"
	rm -f go.mod go.sum
	"$go" mod init local.test/dynaps-scheduler-plugins >/dev/null 2>&1
	log "resolving sigs.k8s.io/scheduler-plugins $release from the Go module proxy"
	local gomod
	gomod=$(module_field "$go" GoMod "sigs.k8s.io/scheduler-plugins@$release")
	[[ -f $gomod ]] || die "could not download sigs.k8s.io/scheduler-plugins@$release (is the Go module proxy reachable?)"
	# Every module its go.mod requires is pinned by a replace (which wins over what any other module
	# asks for), and its own replaces are carried over: the build uses the dependency versions the
	# release was tested with, except for the two below.
	local pins=() module target version
	while read -r module version; do
		pins+=("-replace=$module=$module@$version")
	done < <(sed -n 's|^[[:space:]]*\([^[:space:]]*\) \(v[^[:space:]]*\)\( // indirect\)\{0,1\}$|\1 \2|p' "$gomod")
	while read -r module target version; do
		pins+=("-replace=$module=$target@$version")
	done < <(sed -n 's|^[[:space:]]*\([^[:space:]]*\) => \([^[:space:]]*\) \(v[^[:space:]]*\)$|\1 \2 \3|p' "$gomod")
	((${#pins[@]} > 100)) || die "found only ${#pins[@]} modules in $gomod; the recipe needs updating"
	# The Go module proxy refuses the source of k8s.io/cloud-provider v0.31.8: a later patch release
	# of the same minor stands in (the scheduler reads a few constants and zone helpers from it).
	# k8s.io/kubernetes's go.mod names k8s.io/sample-apiserver (an example server nothing here
	# compiles), whose v0.31.8 the proxy refuses too: an empty module stands in for it.
	mkdir -p stub/sample-apiserver
	printf 'module k8s.io/sample-apiserver\n\ngo 1.22\n' >stub/sample-apiserver/go.mod
	pins+=("-replace=k8s.io/cloud-provider=k8s.io/cloud-provider@$CLOUD_PROVIDER_VERSION")
	pins+=("-replace=k8s.io/sample-apiserver=./stub/sample-apiserver")
	"$go" mod edit "${pins[@]}"
	log "pinned ${#pins[@]} modules; fetching dependencies"
	"$go" get "sigs.k8s.io/scheduler-plugins/cmd/scheduler@$release" 2>get.log ||
		die "go get failed: $(grep -v '^go: downloading' get.log)"
	log "compiling scheduler-plugins $release (on Kubernetes 1.31's libraries: slow on 2 cores)"
	mkdir -p "$out/scheduler-plugins"
	CGO_ENABLED=0 nice -n 19 "$go" build -v -trimpath -ldflags "-s -w" -o "$out/scheduler-plugins/scheduler-plugins" \
		sigs.k8s.io/scheduler-plugins/cmd/scheduler 2> >(progress_filter) ||
		die "go build of scheduler-plugins $release failed (see above)"
	wait
	cd - >/dev/null
}

build_helm() {
	local go=$1 out=$2 minor=${K8S_VERSION#1.}
	minor=${minor%%.*}
	log "compiling helm v$HELM_VERSION"
	local ld="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
	ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
	# A go-installed helm otherwise assumes Kubernetes 1.20 for .Capabilities and lint.
	ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
	ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
	mkdir -p "$out/helm"
	CGO_ENABLED=0 GOBIN="$out/helm" nice -n 19 "$go" install -v -trimpath -ldflags "$ld" \
		"helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" 2> >(progress_filter) ||
		die "go install of helm v$HELM_VERSION failed (see above)"
	wait
}

install_built() {
	local from=$1 name
	shift
	for name in "$@"; do
		[[ -x $from/$name ]] || die "build produced no $name"
		mv -f "$from/$name" "$BIN/$name"
		stamp_of "$name" >"$BIN/.stamp-$name"
	done
}

main() {
	local print_only=false
	case ${1:-} in
	--print-dir) print_only=true ;;
	"") ;;
	*) die "unknown argument '$1' (usage: $0 [--print-dir])" ;;
	esac

	local missing
	missing=$(missing_binaries)
	if [[ -z $missing ]]; then
		result_dir
		return 0
	fi
	if $print_only; then
		log "missing: $(echo "$missing" | tr '\n' ' ')(run scripts/k8s-binaries.sh)"
		exit 3
	fi

	mkdir -p "$BIN"
	# Serialise concurrent runs (two terminals, make -j) on the same cache.
	exec 9>"$CACHE/.lock"
	flock 9
	missing=$(missing_binaries)
	if [[ -n $missing ]]; then
		local go start=$SECONDS
		go=$(find_go)
		log "building into $CACHE (missing: $(echo "$missing" | tr '\n' ' '))"
		log "using $("$go" version)"
		export GOTOOLCHAIN=local GOFLAGS=-mod=mod
		BUILD_TMP=$(mktemp -d "$CACHE/build.XXXXXX")
		trap 'rm -rf "$BUILD_TMP"' EXIT
		if grep -qxE 'etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubectl' <<<"$missing"; then
			build_kube "$go" "$BUILD_TMP"
			install_built "$BUILD_TMP/kube" etcd kube-apiserver kube-controller-manager kube-scheduler kubectl
		fi
		if grep -qxE 'kubelet|kube-proxy' <<<"$missing"; then
			build_node "$go" "$BUILD_TMP"
			install_built "$BUILD_TMP/node" kubelet kube-proxy
		fi
		if grep -qx 'helm' <<<"$missing"; then
			build_helm "$go" "$BUILD_TMP"
			install_built "$BUILD_TMP/helm" helm
		fi
		if grep -qx 'coredns' <<<"$missing"; then
			build_coredns "$go" "$BUILD_TMP"
			install_built "$BUILD_TMP/coredns" coredns
		fi
		if grep -qx 'scheduler-plugins' <<<"$missing"; then
			build_scheduler_plugins "$go" "$BUILD_TMP"
			install_built "$BUILD_TMP/scheduler-plugins" scheduler-plugins
		fi
		if grep -qx 'pause' <<<"$missing"; then
			build_pause "$go" "$BUILD_TMP"
			install_built "$BUILD_TMP/pause" pause
		fi
		log "done in $((SECONDS - start)) s"
	fi
	missing=$(missing_binaries)
	[[ -z $missing ]] || die "still missing after the build: $missing"
	result_dir
}

main "$@"
