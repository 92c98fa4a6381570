#!/usr/bin/env bash
# Builds the container images of the real test node (docs/test-control-plane.md) without any
# registry, and saves them as tarballs that containerd imports:
#
#   dynaps/runtime:0.1.0, dynaps/operator:0.1.0   scripts/images.sh's list and build, FROM a local base
#   dynaps-test/coredns:1.15.0, registry.k8s.io/pause:3.10   the node's DNS and pod sandbox
#
# No registry can be reached on our machines, so the Python base image is made here: a Debian
# root file system from debootstrap (cached), plus Debian's Python and pip, given to the
# Dockerfiles as their PYTHON_IMAGE build argument (elsewhere the default, python:3.11-slim, is used).
# A private dockerd builds them (its own data root, no bridge, no iptables: the host's network is
# never touched) and is stopped by pid at the end. Images are rebuilt only when their inputs change.
#
# Usage: scripts/node-images.sh              provide the images; the last line on stdout is their folder
#        scripts/node-images.sh --print-dir  only print the folder; exit 3 if an image is missing
# Needs root (apt packages, dockerd). Environment: DYNAPS_NODE_CACHE, DEBIAN_MIRROR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/images.sh
source "$ROOT/scripts/images.sh"
COREDNS_VERSION=1.15.0
PAUSE_IMAGE=registry.k8s.io/pause:3.10
SUITE=bookworm
PACKAGES=(docker.io containerd runc debootstrap containernetworking-plugins iptables)
CACHE=${DYNAPS_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dynaps/node}
IMAGES=$CACHE/images
DOCKER_PID=""
DOCKER_DIR=""

log() { printf '[node-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# The inputs of each image: it is rebuilt when their digest changes.
digest_of() {
	case $1 in
	runtime | operator) { dynaps_context_tar && cat "$ROOT/docker/$1.Dockerfile"; } | sha256sum | cut -c1-16 ;;
	coredns | pause) sha256sum "$(k8s_bin)/$1" | cut -c1-16 ;;
	base) printf '%s\n' "$SUITE python3-minimal python3-pip recipe=1" | sha256sum | cut -c1-16 ;;
	esac
}

k8s_bin() { "$ROOT/scripts/k8s-binaries.sh" --print-dir | tail -n 1; }

missing_images() {
	local name
	for name in "${DYNAPS_IMAGES[@]}" coredns pause; do
		[[ -s $IMAGES/$name.tar && "$(cat "$IMAGES/.digest-$name" 2>/dev/null)" == "$(digest_of "$name")" ]] ||
			printf '%s\n' "$name"
	done
}

ensure_packages() {
	local missing=() tool
	for tool in dockerd containerd runc debootstrap ctr iptables; do
		command -v "$tool" >/dev/null || missing+=("$tool")
	done
	[[ -x /usr/lib/cni/bridge ]] || missing+=(cni-plugins)
	((${#missing[@]} == 0)) && return 0
	[[ $(id -u) == 0 ]] || die "missing ${missing[*]}; as root: apt-get install ${PACKAGES[*]}"
	log "installing ${PACKAGES[*]} with apt (missing: ${missing[*]})"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" >"$CACHE/apt.log" 2>&1 ||
		{ apt-get update >>"$CACHE/apt.log" 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" >>"$CACHE/apt.log" 2>&1; } ||
		die "apt-get install failed; see $CACHE/apt.log"
}

debian_mirror() {
	if [[ -n ${DEBIAN_MIRROR:-} ]]; then
		printf '%s\n' "$DEBIAN_MIRROR"
		return
	fi
	# The mirror apt already uses here (deb822 or one-line sources).
	local found
	found=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
		grep -v security | head -n 1 || true)
	[[ -n $found ]] || found=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
	printf '%s\n' "${found:-http://deb.debian.org/debian}"
}

base_rootfs() {
	local tarball=$CACHE/base-$SUITE.tar digest
	digest=$(digest_of base)
	if [[ -s $tarball && "$(cat "$CACHE/.digest-base" 2>/dev/null)" == "$digest" ]]; then
		return
	fi
	local rootfs
	rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
	log "debootstrap of a minimal Debian $SUITE with Python from $(debian_mirror) (about 2 minutes, once)"
	nice -n 10 debootstrap --variant=minbase --include=python3-minimal,python3-pip,python3-venv,python-is-python3,ca-certificates \
		"$SUITE" "$rootfs" "$(debian_mirror)" >"$CACHE/debootstrap.log" 2>&1 ||
		die "debootstrap failed; see $CACHE/debootstrap.log"
	# pip may install into the image's Python (it is the image's only one); no caches in the layer.
	rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
	tar -C "$rootfs" -cf "$tarball.tmp" .
	rm -rf "$rootfs"
	mv "$tarball.tmp" "$tarball"
	printf '%s\n' "$digest" >"$CACHE/.digest-base"
}

# Host folders dockerd makes whatever it is told (/run/docker, a docker cgroup per hierarchy):
# removed at the end if it made them.
DOCKER_MADE=()

start_docker() {
	local path
	for path in /run/docker /sys/fs/cgroup/*/; do
		[[ $path == /run/docker ]] || path=${path}docker
		[[ -e $path ]] || DOCKER_MADE+=("$path")
	done
	# A short path: the daemon's sockets live under it and unix socket paths are limited to 108 bytes.
	DOCKER_DIR=$(mktemp -d /tmp/dynaps-docker.XXXXXX)
	mkdir -p "$CACHE/docker"
	log "starting a private dockerd (no bridge, no iptables)"
	dockerd --data-root "$CACHE/docker" --exec-root "$DOCKER_DIR/exec" --pidfile "$DOCKER_DIR/docker.pid" \
		-H "unix://$DOCKER_DIR/docker.sock" --bridge=none --iptables=false --ip6tables=false \
		--containerd-namespace dynaps-build --containerd-plugins-namespace dynaps-build-plugins \
		>"$CACHE/dockerd.log" 2>&1 &
	DOCKER_PID=$!
	export DOCKER_HOST="unix://$DOCKER_DIR/docker.sock"
	local _
	for _ in $(seq 1 100); do
		docker version >/dev/null 2>&1 && return 0
		kill -0 "$DOCKER_PID" 2>/dev/null || die "dockerd exited; see $CACHE/dockerd.log"
		sleep 0.2
	done
	die "dockerd did not answer within 20 s; see $CACHE/dockerd.log"
}

stop_docker() {
	if [[ -n $DOCKER_PID ]] && kill -0 "$DOCKER_PID" 2>/dev/null; then
		kill "$DOCKER_PID"
		local _
		for _ in $(seq 1 50); do
			kill -0 "$DOCKER_PID" 2>/dev/null || break
			sleep 0.2
		done
		kill -9 "$DOCKER_PID" 2>/dev/null || true
	fi
	if [[ -n $DOCKER_DIR && -d $DOCKER_DIR ]]; then
		# dockerd leaves its network namespace mounted under its exec root
		local mount
		while read -r mount; do
			umount -l "$mount" 2>/dev/null || true
		done < <(awk -v dir="$DOCKER_DIR/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo)
		rm -rf "$DOCKER_DIR"
	fi
	local path
	for path in "${DOCKER_MADE[@]}"; do
		if [[ $path == /sys/fs/cgroup/* ]]; then
			# cgroups go deepest first, and only when empty
			find "$path" -depth -type d -exec rmdir {} + 2>/dev/null || true
		else
			rm -rf "$path"
		fi
	done
	DOCKER_MADE=()
	DOCKER_PID=""
	DOCKER_DIR=""
	return 0
}

save_image() {
	local name=$1 tag=$2
	docker save -o "$IMAGES/$name.tar.tmp" "$tag"
	mv "$IMAGES/$name.tar.tmp" "$IMAGES/$name.tar"
	digest_of "$name" >"$IMAGES/.digest-$name"
	log "saved $tag"
}

# An image holding one static binary, made without a Dockerfile (no base image needed).
binary_image() {
	local name=$1 tag=$2 entry=$3 dir
	dir=$(mktemp -d "$CACHE/$name.XXXXXX")
	cp "$(k8s_bin)/$name" "$dir/$name"
	tar -C "$dir" -cf - "$name" | docker import --change "ENTRYPOINT [\"/$name\"${entry}]" - "$tag" >/dev/null
	rm -rf "$dir"
	save_image "$name" "$tag"
}

project_image() {
	local name=$1 base=$2
	log "building $(dynaps_image_tag "$name") from docker/$name.Dockerfile"
	# The legacy builder: BuildKit would fetch its frontend image for the '# syntax' line.
	DOCKER_BUILDKIT=0 build_dynaps_image "$name" "$base" --network host >"$CACHE/build-$name.log" 2>&1 ||
		die "docker build of $name failed; see $CACHE/build-$name.log"
	save_image "$name" "$(dynaps_image_tag "$name")"
}

main() {
	case ${1:-} in
	--print-dir)
		[[ -z "$(missing_images)" ]] || {
			log "missing: $(missing_images | tr '\n' ' ')(run scripts/node-images.sh)"
			exit 3
		}
		printf '%s\n' "$IMAGES"
		return 0
		;;
	"") ;;
	*) die "unknown argument '$1' (usage: $0 [--print-dir])" ;;
	esac
	mkdir -p "$IMAGES"
	exec 9>"$CACHE/.lock"
	flock 9
	local missing start=$SECONDS
	missing=$(missing_images)
	if [[ -z $missing ]]; then
		printf '%s\n' "$IMAGES"
		return 0
	fi
	log "building: $(tr '\n' ' ' <<<"$missing")"
	ensure_packages
	trap stop_docker EXIT
	start_docker
	if grep -qxE 'runtime|operator' <<<"$missing"; then
		base_rootfs
		local base=dynaps-test/python:3.11-$SUITE
		docker import "$CACHE/base-$SUITE.tar" "$base" >/dev/null
		# pip inside the build reaches the package index through this machine's certificate authorities.
		local certs
		certs=$(mktemp -d "$CACHE/certs.XXXXXX")
		cp /etc/ssl/certs/ca-certificates.crt "$certs/"
		printf 'FROM %s\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\nENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1\n' \
			"$base" >"$certs/Dockerfile"
		DOCKER_BUILDKIT=0 docker build --quiet -t "$base" "$certs" >/dev/null
		rm -rf "$certs"
		local image
		for image in "${DYNAPS_IMAGES[@]}"; do
			grep -qx "$image" <<<"$missing" && project_image "$image" "$base"
		done
	fi
	grep -qx coredns <<<"$missing" && binary_image coredns "dynaps-test/coredns:$COREDNS_VERSION" ""
	grep -qx pause <<<"$missing" && binary_image pause "$PAUSE_IMAGE" ""
	stop_docker
	log "done in $((SECONDS - start)) s"
	printf '%s\n' "$IMAGES"
}

main "$@"
