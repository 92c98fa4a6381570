"""The README's example program runs as printed."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.integration
def test_readme_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    program = tmp_path / "example.py"
    program.write_text(blocks[0])
    done = subprocess.run(
        [sys.executable, str(program)], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    results = ast.literal_eval(done.stdout.strip())
    assert len(results) == 2
    assert all(isinstance(r, float) for r in results)
