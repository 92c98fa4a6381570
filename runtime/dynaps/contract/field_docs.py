"""The contract's field docstrings, as descriptions in a model's JSON Schema (the CRD's,
``dynaps explain``'s).

A field of a ``dynaps.contract`` model is documented by the string right after it::

    num_shards: Annotated[int, Field(ge=1)] = 1024
    \"\"\"Shards the keys are split into: what a server homes and a migration moves.\"\"\"

Pydantic can read these itself (``use_attribute_docstrings``), but only by reading each
model's source when its class is made: 30 ms more to import the contract in every process
of every job.  They are read here instead, with :mod:`ast`, only where a schema is written
for people (the operator's crdgen, ``dynaps explain``): into the schema wherever pydantic
did not put a description of its own.  Not imported by ``dynaps.contract`` itself.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Any

from pydantic import BaseModel

from dynaps.contract.base import models_in

JsonDict = dict[str, Any]


@functools.cache  # a model's source is read and parsed once per process
def docstrings(model: type[BaseModel]) -> dict[str, str]:
    """``model``'s field docstrings by alias (a subclass's own over its bases'; the same dict
    for every caller: read it, do not change it)."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):  # no source (built in, or made at run time): nothing to read
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for field, after in zip(body.body, body.body[1:], strict=False):
            if not (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)):
                continue
            literal = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            text = after.value.value if literal else None  # type: ignore[attr-defined]
            if isinstance(text, str) and field.target.id in model.model_fields:
                info = model.model_fields[field.target.id]
                found[info.alias or field.target.id] = " ".join(text.split())
    return found


def nested_models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """``model`` and every model its fields hold, however deep, by class name (the names
    pydantic gives their ``$defs``)."""
    seen: dict[str, type[BaseModel]] = {}
    waiting = [model]
    while waiting:
        current = waiting.pop()
        if current.__name__ in seen:
            continue
        seen[current.__name__] = current
        for info in current.model_fields.values():
            waiting += models_in(info.annotation)
    return seen


def describe(schema: JsonDict, model: type[BaseModel]) -> JsonDict:
    """``model``'s JSON Schema (pydantic's, with ``$defs``) with every documented field's
    docstring as its description, unless the field has one already (``Field(description=)``)."""
    models = nested_models(model)
    nodes = [(schema, model), *((node, models.get(name)) for name, node in schema.get("$defs", {}).items())]
    for node, cls in nodes:
        if cls is None:  # a definition that is no model (an enum): no fields
            continue
        docs = docstrings(cls)
        for alias, prop in node.get("properties", {}).items():
            if alias in docs and "description" not in prop:
                prop["description"] = docs[alias]
    return schema


def documented_schema(model: type[BaseModel]) -> JsonDict:
    """``model``'s JSON Schema as a manifest is written (by alias, for validation), described."""
    return describe(model.model_json_schema(by_alias=True, mode="validation"), model)


def inlined(node: JsonDict, defs: JsonDict) -> tuple[JsonDict, bool]:
    """What a schema node holds: through ``$ref`` (the node's own keys, e.g. its description
    and default, over the definition's) and ``Optional[X]``'s ``anyOf`` to ``X``; and whether
    it may be null.  ValueError for other unions, which a CRD's structural schema cannot say."""
    nullable = False
    while True:
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        elif "anyOf" in node:
            options = [option for option in node["anyOf"] if option.get("type") != "null"]
            if len(options) != 1:
                raise ValueError("unions other than Optional[X] have no structural schema")
            nullable = True
            node = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        else:
            return node, nullable
