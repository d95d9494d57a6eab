"""The spec's JSON schemas (the server's openapi.json) and a small validator, for tests that hold a resource or
an event to them: required fields, JSON types, enums, $ref/allOf/anyOf/oneOf."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["SCHEMAS", "schema_problems"]

SPEC = json.loads((Path(__file__).parents[1] / "src/headwater/server/openapi.json").read_text())
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]


def schema_problems(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Where ``value`` misses a required field or has the wrong JSON type under ``schema`` (the spec's
    components: $ref, allOf, anyOf/oneOf with a ``type`` discriminator, enums)."""
    if "$ref" in schema:
        return schema_problems(value, SCHEMAS[schema["$ref"].rsplit("/", 1)[-1]], path)
    problems: list[str] = []
    for part in schema.get("allOf", []):
        problems += schema_problems(value, part, path)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            options = [schema_problems(value, option, path) for option in schema[key]]
            if all(options):
                problems.append(f"{path}: matches none of {key}: {min(options, key=len)}")
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool, "null": type(None)}
    if isinstance(kind, str) and kind in types and not isinstance(value, types[kind]):
        return [*problems, f"{path}: {type(value).__name__} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        problems += [f"{path}.{name}: missing" for name in schema.get("required", []) if name not in value]
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                problems += schema_problems(value[name], sub, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += schema_problems(item, schema["items"], f"{path}[{i}]")
    return problems
