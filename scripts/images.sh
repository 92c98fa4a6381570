#!/usr/bin/env bash
# The images the project ships, and the one way they are built: used by `make images` and
# scripts/kind-up.sh (your Docker, the Dockerfiles' default Python base) and by
# scripts/node-images.sh (the CI node: a private dockerd, a local base given as PYTHON_IMAGE).
#
#   scripts/images.sh                     build every image with the docker on PATH
#   source scripts/images.sh              only define the list and the functions
#
# The build context is exactly what the Dockerfiles copy (their .dockerignore files say the same
# for BuildKit), staged in a temporary folder, so the legacy builder sends no .venv or .git either.

DYNAPS_VERSION=0.1.0
DYNAPS_IMAGES=(runtime operator)
DYNAPS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

dynaps_image_tag() { printf 'dynaps/%s:%s\n' "$1" "$DYNAPS_VERSION"; }

# What the Dockerfiles copy, as a reproducible tar stream (its digest names the image's inputs).
dynaps_context_tar() {
	tar -C "$DYNAPS_ROOT" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
		--exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md runtime operator
}

# build_dynaps_image NAME [PYTHON_IMAGE [DOCKER BUILD OPTIONS...]]
build_dynaps_image() {
	local name=$1 base=${2:-} context status=0
	shift $(($# < 2 ? $# : 2))
	context=$(mktemp -d "${TMPDIR:-/tmp}/dynaps-context.XXXXXX")
	dynaps_context_tar | tar -C "$context" -xf -
	cp "$DYNAPS_ROOT/docker/$name.Dockerfile" "$context/Dockerfile"
	local args=(-t "$(dynaps_image_tag "$name")")
	[[ -n $base ]] && args+=(--build-arg "PYTHON_IMAGE=$base")
	docker build "${args[@]}" "$@" "$context" || status=$?
	rm -rf "$context"
	return "$status"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	set -euo pipefail
	for image in "${DYNAPS_IMAGES[@]}"; do
		echo "images: building $(dynaps_image_tag "$image") from docker/$image.Dockerfile"
		build_dynaps_image "$image"
	done
fi
