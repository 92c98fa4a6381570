"""Every module of a layered package is named in its import contract (pyproject.toml).

import-linter checks only the modules a layers contract names: a module left out may import
whatever it likes, and a package's layering says nothing about it.  Seven modules had
escaped so (2026-12-07); this keeps new ones from doing the same.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"dynaps": ROOT / "runtime", "dynaps_operator": ROOT / "operator"}


def layered_containers() -> list[tuple[str, set[str]]]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = []
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["type"] != "layers":
            continue
        named = {part.strip() for layer in contract["layers"] for part in layer.replace(":", "|").split("|")}
        found += [(container, named) for container in contract.get("containers", [])]
    return found


def modules_of(container: str) -> set[str]:
    folder = SOURCES[container.split(".", maxsplit=1)[0]] / container.replace(".", "/")
    files = {path.stem for path in folder.glob("*.py")} - {"__init__"}
    return files | {path.name for path in folder.iterdir() if (path / "__init__.py").exists()}


CONTAINERS = layered_containers()


@pytest.mark.parametrize(("container", "named"), CONTAINERS, ids=[container for container, _ in CONTAINERS])
def test_every_module_is_named_in_its_layers(container: str, named: set[str]) -> None:
    assert modules_of(container), f"{container} has no modules: the contract names a package that moved"
    missing = sorted(modules_of(container) - named)
    assert not missing, f"{container}: {missing} are in no layer of its import contract (pyproject.toml)"
