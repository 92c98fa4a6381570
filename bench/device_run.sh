#!/usr/bin/env bash
# Issue 18's 16-core runs in one command, for the device machine (bench/README.md, "Scaling
# run"): MF 200,000 x 20,000 at 1, 2, 4, 8 nodes dynamic and 8 static (bench/apps.py
# --scaling), then the CPU-work scaling of MF and KGE at 1, 2, 4, 8 nodes
# (bench/cpu_scaling.py), each JSON, PNG and log into $OUT (default bench/results).
#
# Prepare here first: scripts/device-wheels.sh (the packages the device lacks, into .whl/).
# Then one device call from the repository root, carrying .whl:
#
#   bench/device_run.sh             # at most 9.5 minutes (a device command may run 10)
#   bench/device_run.sh smoke       # tiny sizes: checks the set-up anywhere (1-2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-full}
case "$size" in
  full | smoke) ;;
  *) echo "usage: bench/device_run.sh [full|smoke]" >&2; exit 2 ;;
esac
out=${OUT:-bench/results}
mkdir -p "$out"
if ! ls .whl/*.whl > /dev/null 2>&1; then
  echo "device_run: no wheels in .whl/; run scripts/device-wheels.sh here first and carry .whl" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dynaps-site .whl/*.whl
export PYTHONPATH=/tmp/dynaps-site:$PWD/runtime PYTHONUNBUFFERED=1
{ echo "cores $(nproc)"; python3 --version; grep -m1 'model name' /proc/cpuinfo || true; } | tee "$out/device-machine.txt"
nodes="1,2,4,8"
scaling=()
cpu=()
if [ "$size" = smoke ]; then
  nodes="1,2"
  scaling=(--scaling-size tiny)
  cpu=(--quick)
fi
status=0  # the second run goes on if the first fails or runs out of time
timeout 300 python3 -P bench/apps.py --scaling "${scaling[@]}" --out "$out/apps-scaling-device.json" 2>&1 |
  tee "$out/apps-scaling-device.log" || status=$?
timeout 260 python3 -P bench/cpu_scaling.py --nodes "$nodes" "${cpu[@]}" --out "$out/cpu-scaling-device.json" 2>&1 |
  tee "$out/cpu-scaling-device.log" || status=$?
exit "$status"
