"""The val gate: what it measures, and which rewrites it keeps by the spec's rule.

The rule a spec does not name is the mode's (``default_rule``), decided here and nowhere else:
``optimize.mode`` may differ from the mode run (``--judge-mode``, the study), so a spec leaves an
unset rule unset.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace

from ..judge import Judged
from ..spec import Gate, Spec
from .protocol import Stages


def default_rule(mode: Stages) -> str:
    """A separate optimizer's rewrites are independent, so each stands on its own val result; a joint rewrite
    is one change, kept whole and only if no criterion loses (nor held back by another criterion's loss)."""
    return "per_criterion" if mode.optimizer.per_criterion else "no_regression"


def with_gate_rule(spec: Spec, mode: Stages) -> Spec:
    """The spec with the gate rule of the mode actually run, unless the spec names a rule."""
    if spec.optimize.gate.rule is not None:
        return spec
    gate = replace(spec.optimize.gate, rule=default_rule(mode))
    return replace(spec, optimize=replace(spec.optimize, gate=gate))


def gate_values(judged: Judged, metric: str) -> dict[str, float | None]:
    from ..stats import correlation, mae

    out: dict[str, float | None] = {}
    for c, judgments in judged.judgments.items():
        pairs = [(j.score, j.human) for j in judgments if j.score is not None]
        scores, humans = [s for s, _ in pairs], [h for _, h in pairs]
        if metric == "none":
            out[c] = None
        elif metric == "mae":
            out[c] = mae(scores, humans) if pairs else None
        else:
            value, _, _, _ = correlation(metric, scores, humans) if len(pairs) >= 3 else (None, 0, 0, "")
            out[c] = value
    return out


def score(value: float | None, metric: str) -> float:
    """Higher is better; an undefined value is the worst."""
    if value is None:
        return float("-inf")
    return -value if metric == "mae" else value


def accepted(gate: Gate, before: Mapping[str, float | None], after: Mapping[str, float | None],
             proposed: Sequence[str]) -> list[str]:
    """Which proposals to keep, by the spec's rule; a rule over several criteria is all or nothing."""
    if not proposed:
        return []
    if gate.metric == "none":
        return list(proposed)
    b = {c: score(before[c], gate.metric) for c in before}
    a = {c: score(after[c], gate.metric) for c in after}
    if gate.rule == "per_criterion":
        return [c for c in proposed if a[c] >= b[c]]
    if gate.rule == "no_regression":
        ok = all(a[c] >= b[c] - gate.tolerance for c in b) and any(a[c] > b[c] for c in proposed)
        return list(proposed) if ok else []
    floor = -1.0 if gate.metric != "mae" else -10.0  # mean rule: an undefined criterion counts as the worst value
    mean_before = statistics.fmean(max(v, floor) for v in b.values())
    mean_after = statistics.fmean(max(v, floor) for v in a.values())
    return list(proposed) if mean_after >= mean_before else []
