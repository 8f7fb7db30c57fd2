"""Structured judge replies: the JSON schema a judge call asks for, and whether a reply keeps to it.

A provider with structured outputs (litellm's ``response_format`` with a JSON schema) holds its
reply to the schema, so the reply parses and every score is inside the scale; the embedded
model does the same with a llama.cpp grammar. The schema is the judgment itself, one property
per criterion: an enum of the scale's integers for an integer scale, a number with its minimum
and maximum for a continuous one. A reply that ignores the schema (prose, say, from a provider
that accepts ``response_format`` and does not enforce it) is still parsed as text; a JSON reply
that breaks the schema is a failure of its own kind (``schema_violation``), never a score.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from .parse import json_objects

if TYPE_CHECKING:
    from .spec import Criterion

SCHEMA_NAME = "judgment"
# a continuous score is read to this many characters at most ("-100.25"); the bound that sizes max_tokens
NUMBER_CHARS = 8


def value_schema(criterion: Criterion) -> dict[str, Any]:
    low, high = criterion.scale
    if criterion.integer:
        return {"type": "integer", "enum": list(range(int(low), int(high) + 1))}
    return {"type": "number", "minimum": low, "maximum": high}


def judgment_schema(criteria: Sequence[Criterion]) -> dict[str, Any]:
    """The JSON schema of one judgment, for both prompt shapes (one criterion or several)."""
    return {"type": "object", "properties": {c.name: value_schema(c) for c in criteria},
            "required": [c.name for c in criteria], "additionalProperties": False}


def response_format(criteria: Sequence[Criterion]) -> dict[str, Any]:
    """litellm's (and OpenAI's) structured-output request: strict, so the provider enforces the schema."""
    return {"type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": judgment_schema(criteria), "strict": True}}


def schema_of(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema inside a ``response_format`` request, or None when it asks for none."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    return (response_format.get("json_schema") or {}).get("schema")


def longest_reply(schema: dict[str, Any]) -> str:
    """The longest reply the schema admits, written as ``json.dumps`` does (one space after ":" and ","):
    its length in characters bounds the reply's tokens, which sizes ``max_tokens`` from the schema."""
    values = {name: longest_value(sub) for name, sub in schema.get("properties", {}).items()}
    return "{" + ", ".join(f"{json.dumps(name)}: {value}" for name, value in values.items()) + "}"


def longest_value(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return max((json.dumps(v) for v in schema["enum"]), key=len)
    return "9" * NUMBER_CHARS


def violation(reply: str | None, schema: dict[str, Any]) -> str | None:
    """Why a JSON reply breaks the schema, or None when it keeps to it or holds no JSON object at all
    (a reply that ignored the schema is parsed as text). The reply's JSON is its first object."""
    objects = json_objects(reply or "")
    if not objects:
        return None
    errors = sorted(_validator(json.dumps(schema, sort_keys=True)).iter_errors(objects[0]), key=lambda e: e.message)
    if not errors:
        return None
    shown = ["/".join(map(str, e.absolute_path)) + ": " + e.message if e.absolute_path else e.message for e in errors]
    return "the reply breaks the requested JSON schema: " + "; ".join(shown)


@cache
def _validator(schema: str) -> Any:
    """One validator per schema (a run asks for a few), not one per reply."""
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(schema))
