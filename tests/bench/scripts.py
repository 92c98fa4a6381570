"""The scripts of bench/ as modules: bench/ is a folder of scripts, not a package."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str) -> ModuleType:
    """``bench/<name>.py``, imported once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -P bench/<name>.py ARGS`` with the repository and the runtime importable."""
    root = BENCH.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'runtime'}"}
    return subprocess.run(
        [sys.executable, "-P", str(BENCH / f"{name}.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
