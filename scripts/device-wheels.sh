#!/usr/bin/env bash
# The wheels the device machine lacks for bench/device_run.sh, into .whl/ (git-ignored).
#
# The device (a 16-core machine lent to some sessions, /work/.library/device) cannot fetch
# packages; its python3 (3.12) already has numpy, psutil, prometheus-client, PyYAML and
# matplotlib. The runtime also needs pydantic (with its core), pyzmq and cryptography:
# fetched here at the versions of this checkout's .venv, for the device's Python.
#
#   scripts/device-wheels.sh                    # for the device (cp312)
#   DEVICE_PYTHON=3.11 scripts/device-wheels.sh # another Python (a local smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${DEVICE_PYTHON:-3.12}
venv=.venv/bin/python
if [ ! -x "$venv" ]; then
  echo "device-wheels: no .venv here; run 'make venv' first (the versions come from it)" >&2
  exit 2
fi
names=(pydantic pydantic-core annotated-types typing-inspection typing-extensions pyzmq cryptography cffi pycparser)
pins=()
for name in "${names[@]}"; do
  pins+=("$name==$("$venv" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf .whl && mkdir -p .whl
platforms=()
for tag in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]}"
echo "device-wheels: $(du -sh .whl | cut -f1) for Python $py:"
ls -1 .whl
