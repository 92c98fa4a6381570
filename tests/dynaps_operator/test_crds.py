"""The CRD files are generated, current, identical in crds/ and in the chart, and structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dynaps.contract import ConditionReason, ConditionType, JobPhase
from dynaps_operator import crdgen

REPO = Path(__file__).resolve().parents[2]


def test_crd_files_are_current() -> None:
    assert crdgen.main(["--check", "--root", str(REPO)]) == 0, "run `make crds`"


def test_chart_copy_is_identical_to_crds() -> None:
    first, second = (REPO / path for path in crdgen.OUTPUTS)
    assert first.read_bytes() == second.read_bytes()


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    target = tmp_path / crdgen.OUTPUTS[1]
    target.write_text(target.read_text() + "# edited by hand\n")
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        nodes += walk(sub, f"{path}.{name}")
    if "items" in schema:
        nodes += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += walk(schema["additionalProperties"], f"{path}.*")
    return nodes


def test_schema_is_structural() -> None:
    crd = yaml.safe_load((REPO / crdgen.OUTPUTS[0]).read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert not {"$ref", "anyOf", "allOf"} & node.keys(), path
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not isinstance(node.get("exclusiveMinimum"), int | float) or isinstance(
            node.get("exclusiveMinimum"), bool
        ), path
        if "default" in node and isinstance(node["default"], dict):
            assert None not in node["default"].values(), path


def test_every_field_is_described_for_kubectl_explain() -> None:
    """Every property says what it is: ``kubectl explain psjob.spec.rebalancePolicy`` and editors
    show the models' field docstrings (dynaps.contract.field_docs; a field without one had no
    description at all)."""
    crd = crdgen.crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    bare = [
        f"{path}.{name}"
        for path, node in walk(schema)
        for name, field in node.get("properties", {}).items()
        if len(field.get("description", "")) < 8 and f"{path}.{name}" != ".metadata"  # (the API server's)
    ]
    assert not bare, f"fields without a description (a docstring in dynaps.contract): {bare}"
    spec = schema["properties"]["spec"]["properties"]  # a subclass's docstring over its base's
    assert spec["servers"]["properties"]["replicas"]["description"].startswith("Server pods")
    assert spec["workers"]["properties"]["replicas"]["description"].startswith("Worker pods")
    # a Field(description=) stays as it is
    policy = spec["runPolicy"]["properties"]["schedulingPolicy"]["properties"]
    assert policy["queue"]["description"] == "The Volcano queue (scheduler: volcano)."


def test_free_form_fields_keep_unknown_fields_and_enums_are_listed() -> None:
    crd = crdgen.crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for role in ("coordinator", "servers", "workers"):
        assert spec[role]["properties"]["template"]["x-kubernetes-preserve-unknown-fields"] is True
        assert spec[role]["properties"]["resources"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["allocation"]["enum"] == ["dynamic", "static"]
    assert spec["runPolicy"]["properties"]["cleanPodPolicy"]["enum"] == ["Running", "All", "None"]
    assert spec["workers"]["properties"]["replicas"]["minimum"] == 1
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [p.value for p in JobPhase]
    assert status["conditions"]["items"]["properties"]["type"]["enum"] == [t.value for t in ConditionType]


def test_scale_subresource_and_printer_columns() -> None:
    version = crdgen.crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.workers.replicas"
    names = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert names == ["Phase", "Servers", "Workers", "Epoch", "Age"]
    assert crdgen.crd()["spec"]["names"]["shortNames"] == ["psjob"]


def test_every_condition_reason_is_documented() -> None:
    guide = (REPO / "docs" / "operator.md").read_text()
    missing = [reason.value for reason in ConditionReason if f"`{reason.value}`" not in guide]
    assert not missing, f"docs/operator.md does not explain {missing}"
