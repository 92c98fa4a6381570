"""Finds the Kubernetes test binaries that scripts/k8s-binaries.sh provides.

The script is the one source of truth for versions and the cache location, so the tests ask it
(`--print-dir` never builds) instead of repeating either here.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "k8s-binaries.sh"
# what every control plane needs (the script also checks the real node's and the second
# scheduler's binaries: `--print-dir` fails until all of them are there)
NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "helm")


class BinariesMissingError(RuntimeError):
    """The binaries are not built yet; the message says how to get them."""


def _print_dir(script: Path) -> tuple[Path | None, str]:
    """The folder ``script --print-dir`` names (it never builds), or None and its last word."""
    result = subprocess.run(
        ["bash", str(script), "--print-dir"],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
        timeout=120,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return None, (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
    return Path(lines[-1]), ""


def find_bin_dir() -> Path:
    """Returns the folder holding the test binaries or raises BinariesMissingError."""
    bin_dir, last = _print_dir(SCRIPT)
    if bin_dir is None:
        detail = re.sub(r"^\[k8s-binaries [0-9:]+\] |\s*\(run scripts/k8s-binaries.sh\)$", "", last)
        raise BinariesMissingError(
            f"Kubernetes test binaries unavailable ({detail}): "
            "run scripts/k8s-binaries.sh (or `make k8s-binaries`) once; it builds them into a cache"
        )
    absent = [name for name in NAMES if not os.access(bin_dir / name, os.X_OK)]
    if absent:
        raise BinariesMissingError(f"{bin_dir} lacks {', '.join(absent)}; run scripts/k8s-binaries.sh")
    return bin_dir


IMAGES_SCRIPT = REPO_ROOT / "scripts" / "node-images.sh"


def find_images_dir() -> Path:
    """Returns the folder of the real node's image tarballs or raises BinariesMissingError."""
    images, last = _print_dir(IMAGES_SCRIPT)
    if images is None:
        raise BinariesMissingError(
            f"the real node's images are not built ({last}): run scripts/node-images.sh (make test does)"
        )
    return images
