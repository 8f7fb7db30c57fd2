"""The spec keys that choose a metric and a threshold: their aliases, the rules a schema cannot say, and
the warnings when a metric does not fit a criterion's scale.

Kept apart from spec.py (which formats the problems found here with file and line): the agreement
section may be written ``correlation:`` or ``agreement:``, its metric ``method:`` or ``agreement:``, a
threshold ``min_rho:`` or ``min_agreement:`` (higher is better), ``max_error:`` (mae, rmse: lower is
better), or ``min_rho: humans`` / ``{humans: -0.05}`` (the annotators' own agreement, see annotators.py).
Every function returns plain data: (path of the key, what is wrong, the fix).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .agreement import ALPHA_LEVELS, LOWER_IS_BETTER, MetricOptions, as_options, fit_problem, info, options_problem

Found = tuple[tuple[str | int, ...], str, str]  # (where, what, fix)

SECTION_ALIAS = "agreement"  # `agreement:` for `correlation:`
METHOD_ALIAS = "agreement"  # `correlation.agreement:` for `correlation.method:`
THRESHOLD_ALIAS = "min_agreement"  # for `min_rho:`
HUMANS = "humans"


def section_key(data: Mapping[str, Any]) -> str:
    """Which key the agreement settings are under: `correlation` unless only `agreement` is written."""
    return SECTION_ALIAS if SECTION_ALIAS in data and "correlation" not in data else "correlation"


def section(data: Mapping[str, Any]) -> dict[str, Any]:
    """The agreement settings with the aliases resolved (`agreement:` -> `method:`)."""
    found = dict(data.get(section_key(data)) or {})
    if METHOD_ALIAS in found and "method" not in found:
        found["method"] = found.pop(METHOD_ALIAS)
    else:
        found.pop(METHOD_ALIAS, None)
    return found


def method_key(data: Mapping[str, Any]) -> tuple[str, str]:
    """The path of the key naming the metric, for its line."""
    key = section_key(data)
    written = data.get(key) or {}
    return key, (METHOD_ALIAS if METHOD_ALIAS in written and "method" not in written else "method")


def options(data: Mapping[str, Any]) -> MetricOptions:
    return as_options(section(data))


def threshold_key(body: Mapping[str, Any]) -> str | None:
    """The threshold key a criterion uses, or None when it has none."""
    for key in ("min_rho", THRESHOLD_ALIAS, "max_error"):
        if key in body:
            return key
    return None


def humans_margin(value: Any) -> float | None:
    """`humans` -> 0.0, `{humans: -0.05}` -> -0.05, anything else None."""
    if value == HUMANS:
        return 0.0
    if isinstance(value, Mapping) and set(value) == {HUMANS} and isinstance(value[HUMANS], (int, float)) \
            and not isinstance(value[HUMANS], bool):
        return float(value[HUMANS])
    return None


def problems(data: Mapping[str, Any]) -> list[Found]:
    """What the schema cannot say about the metric and the thresholds."""
    out: list[Found] = []
    key = section_key(data)
    if SECTION_ALIAS in data and "correlation" in data:
        out.append(((SECTION_ALIAS,), "`agreement:` and `correlation:` are the same section, written twice",
                    "keep one of them"))
    written = data.get(key) or {}
    if METHOD_ALIAS in written and "method" in written:
        out.append(((key, METHOD_ALIAS), "`agreement:` and `method:` both name the metric", "keep one of them"))
    settings = section(data)
    method = settings.get("method", "spearman")
    lower = method in LOWER_IS_BETTER
    has_annotators = "annotators" in data.get("dataset", {})
    for name, body in data["criteria"].items():
        at = ("criteria", name)
        used = [k for k in ("min_rho", THRESHOLD_ALIAS, "max_error") if k in body]
        if len(used) > 1:
            out.append(((*at, used[1]), f"{' and '.join(used)} are written together", "keep one threshold per criterion"))
            continue
        if not used:
            continue  # missing_gates
        key_used = used[0]
        value = body[key_used]
        if key_used == "max_error" and not lower and value is not None:
            out.append(((*at, "max_error"), f"max_error is a threshold for mae and rmse (lower is better), and the metric is {method}",
                        f"use `min_rho:` (higher is better) with {method}, or set the metric to mae or rmse"))
        elif key_used != "max_error" and lower and value is not None:
            out.append(((*at, key_used), f"{method} is an error (lower is better), so a minimum would pass a worse judge",
                        f"use `max_error:` with the largest {method} allowed"))
        margin = humans_margin(value)
        if key_used != "max_error" and margin is not None and not has_annotators:
            out.append(((*at, key_used), "`humans` is the annotators' own agreement, and the dataset names no annotators",
                        "set `dataset.annotators` to the field holding each annotator's scores, or give a number"))
        if isinstance(value, str) and value != HUMANS:
            out.append(((*at, key_used), f"'{value}' is not a threshold", "write a number, `humans`, or `{humans: -0.05}`"))
        problem = options_problem(method, (float(body["scale"][0]), float(body["scale"][1])), options(data))
        if problem:
            out.append(((key, "positive"), problem, "give a label on the scale, e.g. `positive: 1`"))
    gate = settings.get("gate", "point")
    if gate == "alt_test" and not has_annotators:
        out.append(((key, "gate"), "the alternative annotator test compares the judge with each annotator, and the dataset "
                    "names no annotators", "set `dataset.annotators` (at least 3 annotators), or use `gate: point`"))
    if settings.get("alpha_level") is not None and settings.get("alpha_level") not in ALPHA_LEVELS:
        out.append(((key, "alpha_level"), f"'{settings['alpha_level']}' is not a level", f"use one of {', '.join(ALPHA_LEVELS)}"))
    return out


def missing_gates(data: Any) -> list[Found]:
    """Criteria with no threshold at all, whose item could never fail. Checked beside the schema (it reads only
    what the schema has been asked to check, and skips what is malformed), so one run lists it with the rest."""
    if not isinstance(data, Mapping) or not isinstance(data.get("criteria"), Mapping):
        return []
    settings = data.get(section_key(data))
    settings = settings if isinstance(settings, Mapping) else {}
    if settings.get("gate") == "alt_test":
        return []  # the alternative annotator test is every criterion's gate
    method = settings.get("method", settings.get(METHOD_ALIAS, "spearman"))
    gate = "max_error" if method in LOWER_IS_BETTER else "min_rho"
    what = ("largest error it may have (lower is better; e.g. 0.8)" if gate == "max_error"
            else "agreement it must reach (e.g. 0.3)")
    return [(("criteria", name), f"missing key '{gate}'",
             f"this criterion has no gate, so its item could never fail: add `{gate}:` with the {what}, "
             f"or `{gate}: null` to report its agreement without ever failing")
            for name, body in data["criteria"].items()
            if isinstance(body, Mapping) and threshold_key(body) is None]


def fit_warnings(data: Mapping[str, Any]) -> list[Found]:
    """One warning per criterion whose scale the metric does not fit, naming the better choice."""
    settings = section(data)
    method = settings.get("method", "spearman")
    if info(method) is None:  # a hook's metric: its author knows what it fits
        return []
    chosen = options(data)
    out: list[Found] = []
    for name, body in data["criteria"].items():
        low, high = body["scale"]
        integer = all(isinstance(end, int) and not isinstance(end, bool) for end in body["scale"])
        found = fit_problem(method, (float(low), float(high)), integer, chosen)
        if found:
            out.append((("criteria", name, "scale"), *found))
    return out
