"""The spec's JSON Schema (the same file editors use) and its errors turned into sentences: one per
mistake, at the line of the key concerned, with a fix a user can act on rather than the validator's
wording.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from .problems import Path_, dotted, problem

SCHEMA_FILE = "judge-spec.schema.json"


@cache
def schema() -> dict[str, Any]:
    return json.loads(resources.files("pytest_judgeopt").joinpath("schemas", SCHEMA_FILE).read_text())


def schema_problems(path: Path, data: Any, lines: dict[Path_, int],
                    splits: dict[Path_, tuple[str, str]] | None = None) -> list[str]:
    import jsonschema

    if not isinstance(data, dict):
        return [problem(path, 1, "", f"a spec is a YAML mapping, not {type_name(data)}",
                        "start from the example in the README: name, model, dataset, criteria")]
    validator = jsonschema.Draft202012Validator(schema())
    found = []
    for error in validator.iter_errors(data):
        found.extend(explain(path, error, lines, splits or {}))
    return sorted(set(found), key=lambda text: line_number(text))


def line_number(message: str) -> int:
    head = message.split(": ", 1)[0]
    tail = head.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def type_name(value: Any) -> str:
    return {type(None): "empty", bool: "true/false", int: "a number", float: "a number", str: "text",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def explain(path: Path, error: Any, lines: dict[Path_, int],
            splits: dict[Path_, tuple[str, str]] | None = None) -> list[str]:
    """One readable sentence per schema error, at the line of the key concerned."""
    splits = splits or {}
    at: Path_ = tuple(error.absolute_path)
    cut = comma_problem(path, at, lines, splits)
    if cut is not None:  # an empty value where a text or a mapping belongs, because a comma cut it out
        return [cut]
    where = dotted(at)
    line = lines.get(at)
    rule = error.validator
    sub = error.schema
    value = error.instance
    if "propertyNames" in error.schema_path:  # the error is about a key, so point at the key
        key = (*at, str(value))
        return [problem(path, lines.get(key, line), dotted(key), f"'{value}' is not a valid criterion name",
                        "use letters, digits, '_' and '-', starting with a letter; quote a name YAML reads as a number or true/false")]
    if rule == "additionalProperties":
        known = sorted(sub.get("properties", {}))
        out = []
        for key in sorted(set(value) - set(known), key=str):
            cut = comma_problem(path, (*at, key), lines, splits)
            if cut is not None:
                out.append(cut)
                continue
            guess = difflib.get_close_matches(str(key), known, n=1)
            fix = f"did you mean '{guess[0]}'?" if guess else f"use one of: {', '.join(known)}"
            out.append(problem(path, lines.get((*at, key), line), dotted((*at, key)), f"unknown key '{key}'", fix))
        return out
    if rule == "required":
        missing = error.message.split("'")[1]
        if at and at[0] in ("cases", "probes"):  # a case or a probe: its own keys, its own hints
            return [problem(path, line, where, f"missing key '{missing}'", PART_HINTS.get(missing, f"add `{missing}:`"))]
        hint = {"dataset": "add `dataset:` with `path`, `inputs` and `scores`",
                "criteria": "add `criteria:` with at least one criterion (instruction, scale)",
                "instruction": "add `instruction:` with the text the judge follows for this criterion",
                "scale": "add `scale: [1, 5]` (the lowest and highest score)",
                "min_rho": "this criterion has no gate, so its item could never fail: add `min_rho:` with the agreement it "
                           "must reach (e.g. 0.3), or `min_rho: null` to report its agreement without ever failing",
                "name": "add `name:` with a litellm model string"}.get(missing, f"add `{missing}:`")
        return [problem(path, line, where or "spec", f"missing key '{missing}'", hint)]
    if rule == "enum":
        options = [o if isinstance(o, str) else json.dumps(o) for o in sub["enum"]]  # true, not True
        guess = difflib.get_close_matches(str(value), options, n=1)
        fix = f"did you mean '{guess[0]}'?" if guess else f"use one of: {', '.join(options)}"
        return [problem(path, line, where, f"'{value}' is not allowed", fix)]
    if rule == "type":
        expected = sub["type"]
        expected = expected if isinstance(expected, str) else " or ".join(expected)
        return [problem(path, line, where, f"expected {article(expected)}, got {type_name(value)} ({short(value)})",
                        f"write {article(expected)} here")]
    if rule in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        low = sub.get("minimum", sub.get("exclusiveMinimum"))
        high = sub.get("maximum", sub.get("exclusiveMaximum"))
        span = f"[{low}, {high}]" if low is not None and high is not None else (f">= {low}" if low is not None else f"<= {high}")
        open_ = " (exclusive)" if "exclusiveMinimum" in sub or "exclusiveMaximum" in sub else ""
        return [problem(path, line, where, f"{value} is outside {span}{open_}", f"use a value in {span}{open_}")]
    if rule in ("minItems", "maxItems") and at and at[-1] == "scale":
        return [problem(path, line, where, f"a scale is two numbers [lowest, highest], got {short(value)}", "write e.g. `scale: [1, 5]`")]
    if rule == "maxLength":
        n = sub["maxLength"]
        return [problem(path, line, where, f"{short(value)} is longer than {n} character{'s' if n > 1 else ''}",
                        f"write {'one character' if n == 1 else f'at most {n} characters'}")]
    if rule == "pattern":
        return [problem(path, line, where, f"{short(value)} is not a valid name",
                        "use letters, digits, '_', '-' and '.', starting with a letter or digit")]
    if rule in ("minLength", "minProperties", "minItems"):
        return [problem(path, line, where, "is empty", "fill it in")]
    if rule == "maxProperties":
        return [problem(path, line, where, f"{len(value):,} entries, over the limit of {sub['maxProperties']}",
                        "split the judge into several spec files")]
    if rule == "oneOf":
        # inside a branch of the value's own kind (a model mapping, an interference mapping) the
        # branch's error is the useful one: "missing key 'name'", not "unexpected a mapping"
        inner = [e for e in error.context if e.relative_path or e.validator not in ("type", "const")]
        if inner:
            return [text for e in inner for text in explain(path, e, lines, splits)]
        if at and at[-1] in ("min_rho", "min_agreement"):
            return [problem(path, line, where, f"expected a number or null, got {type_name(value)} ({short(value)})",
                            "write a number or null here, or `humans` (the annotators' own agreement, "
                            "`{humans: -0.05}` with a margin)")]
        return [problem(path, line, where, f"unexpected {type_name(value)} ({short(value)})", one_of_fix(at))]
    return [problem(path, line, where, error.message, "see the spec format in the README or the JSON Schema")]


PART_HINTS = {"name": "add `name:` with a short name (letters, digits, '_', '-', '.'): it becomes the item's id case[NAME]",
              "expect": "add `expect:` with the scores allowed per criterion, e.g. `{coherence: [1, 2]}` or `{fluency: \">= 4\"}`",
              "kind": "add `kind:` with retest, pad or transform",
              "min": "add `min:` with the least agreement of the judge with itself, e.g. 0.8",
              "max_rise": "add `max_rise:` with the most the mean score may rise, e.g. 0.25",
              "transform": "add `transform:` with the name a pytest_judgeopt_transforms hook returns"}


def one_of_fix(at: Path_) -> str:
    last = at[-1] if at else ""
    if last == "scores":
        return "write the name of a field holding {criterion: score}, or a mapping {criterion: field}"
    if last == "path":
        return "write the data file's path, a glob such as data/*.jsonl, or a list of paths"
    if last == "interference":
        return "write `interference: false`, or a mapping with max_drop and confidence"
    return "write a litellm model string such as openai/gpt-4o-mini, or a mapping with `name:` and litellm arguments"


def article(kind: str) -> str:
    names = {"number": "a number", "integer": "a whole number", "string": "text", "object": "a mapping",
             "array": "a list", "boolean": "true or false"}
    return " or ".join(names.get(k, k) for k in kind.split(" or "))


def short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def comma_problem(path: Path, at: Path_, lines: dict[Path_, int], splits: dict[Path_, tuple[str, str]]) -> str | None:
    """The message for a key an unquoted comma made, or None when the key was written as a key."""
    if at not in splits:
        return None
    key, value = splits[at]
    whole = f"{value}, {at[-1]}"
    where = dotted((*at[:-1], key))
    return problem(path, lines.get(at), where,
                   f"the value was split at a comma: inside {{...}} YAML ends '{value}' at the comma and reads "
                   f"'{at[-1]}' as a key of its own",
                   f"quote the value: {key}: {json.dumps(whole, ensure_ascii=False)}")
