"""What a data-plane process imports at start rather than in the middle of training."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["dynaps.node.process", "dynaps.client.ps", "dynaps.coordinator.core"])
def test_the_first_unique_of_a_process_imports_nothing(module: str) -> None:
    # np.unique imports numpy.ma on its first plain call (24 ms): a node paid it in its first
    # relocation, mid-training, until dynaps.store imported it at start
    code = (
        f"import sys, numpy as np, {module}\n"
        "before = set(sys.modules)\n"
        "np.unique(np.array([3, 1, 3]))\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
