"""``dynaps explain [FIELD]``: what a manifest's fields mean, on a laptop without kubectl.

The text comes from the contract's own field docstrings (:mod:`dynaps.contract.field_docs`),
the descriptions ``kubectl explain psjob`` shows from the CRD, with each field's type, bounds
and default from the models' JSON Schema::

    dynaps explain                          # the fields of spec
    dynaps explain faultTolerance.checkpoint
    dynaps explain spec.tables.updater.kind
    dynaps explain status.dataLoss
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

from pydantic import BaseModel

from dynaps.contract import JobSpec, JobStatus, field_docs
from dynaps.errors import ConfigError

JsonDict = dict[str, Any]
ROOTS: dict[str, type[BaseModel]] = {"spec": JobSpec, "status": JobStatus}
KINDS = {"psjob", "parameterserverjob", "parameterserverjobs"}  # a leading resource name, as kubectl's
WIDTH = 88


def explain(path: str = "") -> str:
    """The text for ``path`` (``spec`` when empty; a path without ``spec.``/``status.`` is
    under ``spec``); ConfigError naming the fields there for a path that names none."""
    # kubectl's habits are welcome: psjob.spec.tables[0].dim names spec.tables.dim
    parts = [part for part in re.sub(r"\[\d*\]", "", path).split(".") if part]
    if parts and parts[0].lower() in KINDS:
        parts = parts[1:]
    if not parts or parts[0] not in ROOTS:
        parts = ["spec", *parts]
    model = ROOTS[parts[0]]
    schema = field_docs.documented_schema(model)
    defs: JsonDict = schema.get("$defs", {})
    node: JsonDict = schema
    where = parts[0]
    for name in parts[1:]:
        fields = _resolved(node, defs).get("properties", {})
        if name not in fields:
            known = ", ".join(fields) if fields else "none: it is a value"
            raise ConfigError(f"{where} has no field {name!r}; its fields: {known}")
        node, where = fields[name], f"{where}.{name}"
    return _render(where, node, defs)


def _resolved(node: JsonDict, defs: JsonDict) -> JsonDict:
    """The object or value a property holds: through $ref, an Optional's anyOf and a list's
    items (so a list of tables explains one table's fields)."""
    while True:
        node, _ = field_docs.inlined(node, defs)
        if node.get("type") != "array" or not isinstance(node.get("items"), dict):
            return node
        node = node["items"]


def _kind(node: JsonDict, defs: JsonDict) -> str:
    """A field's type and bounds in a few words: ``integer >= 1``, ``list of object``..."""
    listed = node.get("type") == "array" or any(o.get("type") == "array" for o in node.get("anyOf", ()))
    value = _resolved(node, defs)
    words = value.get("type", "object")
    extra = value.get("additionalProperties")
    if words == "object" and "properties" not in value:
        words = (
            f"map of {extra['type']}" if isinstance(extra, dict) and "type" in extra else "object (free form)"
        )
    if "enum" in value:
        words += ": " + " | ".join(str(option) for option in value["enum"])
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in value:
            words += f", {sign} {value[key]}"
    return f"list of {words}" if listed else words


def _render(where: str, node: JsonDict, defs: JsonDict) -> str:
    value = _resolved(node, defs)
    lines = [f"FIELD: {where} <{_kind(node, defs)}>{_default(node)}", ""]
    lines += _wrapped(node.get("description") or value.get("description") or "", "  ")
    fields: JsonDict = value.get("properties", {})
    if fields:
        required = set(value.get("required", ()))
        lines += ["", "FIELDS:"]
        for name, field in fields.items():
            extra = " (required)" if name in required else _default(field)
            lines.append(f"  {name} <{_kind(field, defs)}>{extra}")
            lines += _wrapped(field.get("description", ""), "      ")
    return "\n".join(lines)


def _default(field: JsonDict) -> str:
    default = field.get("default")
    if default is None or isinstance(default, dict | list):
        return ""  # an object's defaults are its fields'
    return f", default {json.dumps(default)}"


def _wrapped(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent) if text else []
