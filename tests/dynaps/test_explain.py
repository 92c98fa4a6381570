"""``dynaps explain``: every field of the manifest explained from the contract's docstrings."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from dynaps.errors import ConfigError
from dynaps.explain import explain

FIELD_LINE = re.compile(r"^  (\w+) <([^>]+)>")


def fields_of(text: str) -> list[str]:
    return [match.group(1) for line in text.splitlines() if (match := FIELD_LINE.match(line))]


def every_path(root: str) -> list[str]:
    """Every field under ``root``, however deep, by walking what explain lists."""
    paths, waiting = [], [root]
    while waiting:
        path = waiting.pop()
        paths.append(path)
        waiting += [f"{path}.{name}" for name in fields_of(explain(path))]
    return paths


def test_a_field_says_its_type_bounds_default_and_meaning() -> None:
    text = explain("rebalancePolicy")
    assert text.startswith("FIELD: spec.rebalancePolicy <object>")
    assert "  maxConcurrentMigrations <integer, >= 1>, default 4" in text.splitlines()
    assert "Migrations of shards between servers in flight at once" in text
    assert '  partition <string: range | hash>, default "range"' in text.splitlines()
    leaf = explain("spec.tables.updater.kind")
    assert (
        leaf.splitlines()[0]
        == 'FIELD: spec.tables.updater.kind <string: add | sgd | adagrad | adam | custom>, default "add"'
    )
    assert "adagrad" in leaf.splitlines()[2]


def test_a_list_explains_its_items_and_marks_what_is_required() -> None:
    text = explain("tables")
    assert text.startswith("FIELD: spec.tables <list of object>")
    lines = text.splitlines()
    assert "  numKeys <integer, > 0, <= 1099511627776> (required)" in lines
    assert "  name <string> (required)" in lines
    assert "  env <map of string>" in explain("workers").splitlines()
    assert "  template <object (free form)>" in explain("workers").splitlines()


@pytest.mark.parametrize("root", ["spec", "status"])
def test_every_field_under_spec_and_status_has_a_meaning(root: str) -> None:
    paths = every_path(root)
    assert len(paths) > 40
    for path in paths:
        text = explain(path)
        lines = text.splitlines()
        assert lines[1] == "", path
        assert lines[2].startswith("  "), path
        assert len(lines[2].strip()) >= 8, path
        for i, line in enumerate(lines):  # each listed field has its description under it
            if FIELD_LINE.match(line):
                assert lines[i + 1].startswith("      "), f"{path}: {line.strip()} has no description"


def test_kubectls_spelling_of_a_path_is_understood() -> None:
    assert explain("psjob.spec.tables[0].dim") == explain("tables.dim")
    assert explain("ParameterServerJob.status") == explain("status")


def test_a_path_that_names_no_field_says_which_there_are() -> None:
    with pytest.raises(
        ConfigError, match=r"spec.faultTolerance has no field 'nope'; its fields: replication,"
    ):
        explain("faultTolerance.nope")
    with pytest.raises(ConfigError, match="its fields: none: it is a value"):
        explain("faultTolerance.replication.more")


def dynaps_explain(path: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dynaps", "explain", path]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_command_prints_it_and_refuses_a_wrong_path_in_one_line() -> None:
    done = dynaps_explain("faultTolerance.checkpoint")
    assert done.returncode == 0, done.stderr
    assert "restoreFrom <string>" in done.stdout
    wrong = dynaps_explain("spec.wrokers")
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("dynaps: error: spec has no field 'wrokers'; its fields: image,")
    assert "Traceback" not in wrong.stderr
