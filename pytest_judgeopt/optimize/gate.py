"""The val gate: what it measures of a set of instructions, which rewrites it keeps, and why.

A step's decision has two parts. ``choose`` applies the spec's rule to the candidate as the gate
judged it (every proposal in force at once). What would be kept may differ from what was judged: a
per-criterion rule can keep coherence's rewrite and drop fluency's, and in a merged prompt the one
left forms a prompt nobody judged. So ``confirm`` looks at exactly the combination kept: the
candidate itself when everything passed, the candidate's per-criterion values where each criterion
has its own prompt (ST: the others' prompts are unchanged), and otherwise a judgment of the
combination on val, made by the loop. The combination is kept only if the rule still keeps all of
it and no criterion is harmed; its measured values become the val values in force.

Harm is a list of checks (``CHECKS``), each asked about every criterion: agreement dropping beyond
``tolerance``, failed judgments rising beyond the criterion's ``max_parse_failure_rate`` (a rewrite
that makes the judge answer only on easy samples raises the agreement of what is left). Another
check is one more function in that list.

The gate measures as the items do (``gate_level``): pooled, or at ``correlation.level: group`` the mean of each
document's own value, two measurements compared on the documents both have a value in (``shared_documents``,
as compare.py pairs two sides): a rewrite must not gain by turning constant in the documents it got wrong.

One tie rule for per_criterion and no_regression: a rewrite is kept only on a gain, a val value
strictly better than before; equal values, or undefined ones before and after (no evidence), keep
the instruction in force. An undefined value is the worst: defined after undefined is a gain,
undefined after defined a drop. ``mean`` is the paper's rule, kept for reproduction: the mean over
criteria may not fall (a tie passes), so one criterion may pay for another; only failed judgments
veto it.

The rule a spec does not name is the mode's (``default_rule``), decided here and nowhere else:
``optimize.mode`` may differ from the mode run (``--judge-mode``, the study), so a spec leaves an
unset rule unset.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..agreement import MetricOptions, higher_is_better
from ..judge import Judged, Judgment, failed_replies, replies
from ..spec import Gate, Spec
from .protocol import Stages

REJECTED = "rejected by the val gate"


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


# ---------------------------------------------------------------------------------------------
# what the gate measures


LEVELS = ("pooled", "group")


def gate_level(spec: Spec) -> str:
    """The level the gate measures at: the items' (``correlation.level``) where there are documents to average
    over (``dataset.group``), else pooled."""
    return spec.correlation.level if spec.dataset.group else "pooled"


@dataclass(frozen=True)
class Measured:
    """One set of instructions on val, per criterion: the gate metric's value, and failed / judged replies (one per
    judgment unless judge.n > 1).

    At level group, ``documents`` holds each document's own value (those that have one): the value is their
    mean, and two measurements are compared on the documents both have a value in (``shared_documents``).
    """

    value: dict[str, float | None]
    failed: dict[str, int] = field(default_factory=dict)
    judged: dict[str, int] = field(default_factory=dict)
    documents: dict[str, dict[str, float]] = field(default_factory=dict)

    def rate(self, criterion: str) -> float:
        judged = self.judged.get(criterion, 0)
        return self.failed.get(criterion, 0) / judged if judged else 0.0

    def counts(self, criterion: str) -> str:
        return f"{self.failed.get(criterion, 0)}/{self.judged.get(criterion, 0)}"

    def updated(self, other: Measured, only: Sequence[str] | None = None) -> Measured:
        """These values with ``other``'s where it measured (``only`` those criteria, when given)."""
        names = [c for c in other.value if only is None or c in only]
        documents = {c: v for c, v in self.documents.items() if c not in names}
        documents.update({c: other.documents[c] for c in names if c in other.documents})
        return Measured({**self.value, **{c: other.value[c] for c in names}},
                        {**self.failed, **{c: other.failed.get(c, 0) for c in names}},
                        {**self.judged, **{c: other.judged.get(c, 0) for c in names}}, documents)

    def failure_counts(self) -> dict[str, list[int]]:
        """The checkpoint's and the step record's form: criterion -> [failed, judged]."""
        return {c: [self.failed.get(c, 0), self.judged.get(c, 0)] for c in self.value}

    @classmethod
    def from_counts(cls, value: Mapping[str, float | None], counts: Mapping[str, Sequence[int]],
                    documents: Mapping[str, Mapping[str, float]] | None = None) -> Measured:
        return cls(dict(value), {c: int(n[0]) for c, n in counts.items()}, {c: int(n[1]) for c, n in counts.items()},
                   {c: dict(d) for c, d in (documents or {}).items()})


def measure_judgments(judgments: Mapping[str, Sequence[Judgment]], metric: str,
                      options: Mapping[str, MetricOptions] | None = None, level: str = "pooled") -> Measured:
    """The gate metric on the judgments that parsed, and how many failed: agreement alone would reward a
    rewrite that fails on the hard samples. ``options``: per criterion, the metric's settings (f1's positive
    class on the criterion's scale, the kappa's weights), as the items use them. ``level``: as the items
    measure (``gate_level``): pooled over the samples, or the mean of each document's own value."""
    from ..stats import correlation, document_values, mae

    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")
    value: dict[str, float | None] = {}
    documents: dict[str, dict[str, float]] = {}
    for c, js in judgments.items():
        pairs = [(j.score, j.human, j.group) for j in js if j.score is not None]
        scores, humans = [s for s, _, _ in pairs], [h for _, h, _ in pairs]
        chosen = (options or {}).get(c)
        if metric == "none":
            value[c] = None
        elif level == "group":
            documents[c] = document_values(metric, scores, humans, [g for _, _, g in pairs], options=chosen)
            value[c] = statistics.fmean(documents[c].values()) if documents[c] else None
        elif metric == "mae":
            value[c] = mae(scores, humans) if pairs else None
        else:
            value[c] = correlation(metric, scores, humans, options=chosen)[0] if len(pairs) >= 3 else None
    # judge.n > 1: every failed reply counts, of every reply asked, also where the other replies gave the score
    return Measured(value, {c: sum(failed_replies(js).values()) for c, js in judgments.items()},
                    {c: replies(js) for c, js in judgments.items()}, documents)


def measure(judged: Judged, metric: str, options: Mapping[str, MetricOptions] | None = None,
            level: str = "pooled") -> Measured:
    return measure_judgments(judged.judgments, metric, options, level)


def shared_documents(before: Measured, after: Measured) -> tuple[Measured, Measured]:
    """At level group, both measurements on the documents where both have a value of their own (as compare.py
    measures two sides): a rewrite that makes the judge constant in the documents where it is wrong would
    otherwise be measured only where it is right, and gain by being skipped. Criteria without per-document
    values (level pooled) keep theirs; with no document in common both are undefined (no evidence)."""
    b_value, a_value = dict(before.value), dict(after.value)
    for c in before.documents.keys() & after.documents.keys():
        b_docs, a_docs = before.documents[c], after.documents[c]
        shared = [d for d in b_docs if d in a_docs]
        b_value[c] = statistics.fmean(b_docs[d] for d in shared) if shared else None
        a_value[c] = statistics.fmean(a_docs[d] for d in shared) if shared else None
    return replace(before, value=b_value), replace(after, value=a_value)


def metric_options(spec: Spec) -> dict[str, MetricOptions]:
    """Each criterion's metric settings, resolved on its scale (f1's positive class: the scale's top)."""
    return {c: spec.correlation.options.for_scale(crit.scale) for c, crit in spec.criteria.items()}


def gate_values(judged: Judged, metric: str, level: str = "pooled") -> dict[str, float | None]:
    return measure(judged, metric, level=level).value


# ---------------------------------------------------------------------------------------------
# comparing two measurements


@dataclass(frozen=True)
class GateContext:
    """What the rule and the checks may use: the spec's gate, each criterion's allowed failure rate."""

    gate: Gate
    allowed: Mapping[str, float]
    criteria: Sequence[str]

    @classmethod
    def of(cls, spec: Spec) -> GateContext:
        return cls(spec.optimize.gate, {c: crit.max_parse_failure_rate for c, crit in spec.criteria.items()},
                   list(spec.criteria))


def score(value: float | None, metric: str) -> float:
    """Higher is better; an undefined value is the worst. An error metric (mae, rmse) counts negated."""
    if value is None:
        return float("-inf")
    return value if higher_is_better(metric) else -value


def shown(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def gain(ctx: GateContext, before: Measured, after: Measured, c: str) -> str | None:
    """None when ``c`` gained; else why not (the tie rule: equal, or undefined both times, is no gain)."""
    metric = ctx.gate.metric
    b, a = before.value.get(c), after.value.get(c)
    if a is None and b is None:
        return f"{c} val {metric} is undefined before and after: no evidence the rewrite helps"
    if score(a, metric) > score(b, metric):
        return None
    return f"{c} val {metric} does not improve ({shown(b)} -> {shown(a)})"


def agreement_drop(ctx: GateContext, before: Measured, after: Measured, c: str) -> str | None:
    """``c``'s agreement falls beyond the tolerance, or becomes undefined (the mean rule lets criteria trade)."""
    if ctx.gate.rule == "mean":
        return None
    metric = ctx.gate.metric
    b, a = before.value.get(c), after.value.get(c)
    if b is None and a is None:
        return None  # nothing measurable to lose; a rewrite of c itself still needs a gain
    if score(a, metric) < score(b, metric) - ctx.gate.tolerance:
        verb = "would fall" if higher_is_better(metric) else "would worsen"
        return f"{c} val {metric} {verb} from {shown(b)} to {shown(a)} (tolerance {ctx.gate.tolerance:g})"
    return None


def failures_rise(ctx: GateContext, before: Measured, after: Measured, c: str) -> str | None:
    """More failed judgments than the criterion allows, and more than before."""
    allowed = ctx.allowed.get(c, 1.0)
    rate = after.rate(c)
    if rate > allowed and rate > before.rate(c):
        return (f"{c} failed judgments would rise from {before.counts(c)} to {after.counts(c)} ({rate:.0%}), "
                f"above the allowed {allowed:.0%}")
    return None


Check = Callable[[GateContext, Measured, Measured, str], "str | None"]
CHECKS: list[Check] = [agreement_drop, failures_rise]  # each asked about every criterion


def harms(ctx: GateContext, before: Measured, after: Measured, criteria: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in criteria:
        found = [reason for check in CHECKS if (reason := check(ctx, before, after, c))]
        if found:
            out[c] = "; ".join(found)
    return out


# ---------------------------------------------------------------------------------------------
# the decision


@dataclass
class Decision:
    keep: list[str]
    reasons: dict[str, str]  # per proposed criterion not kept


def choose(ctx: GateContext, before: Measured, after: Measured, proposed: Sequence[str]) -> Decision:
    """The spec's rule on the candidate as judged. per_criterion: each rewrite on its own criterion (a gain, and
    no harm to it); no_regression and mean: the proposals as one change, all or nothing. At level group both
    are measured on the documents both have a value in."""
    proposed = list(proposed)
    if not proposed or ctx.gate.metric == "none":
        return Decision(proposed, {})
    before, after = shared_documents(before, after)
    if ctx.gate.rule == "per_criterion":
        reasons = {}
        for c in proposed:
            why = harms(ctx, before, after, [c]).get(c) or gain(ctx, before, after, c)
            if why:
                reasons[c] = f"{REJECTED}: {why}"
        return Decision([c for c in proposed if c not in reasons], reasons)
    harmed = harms(ctx, before, after, ctx.criteria)
    if harmed:
        return reject_all(proposed, "; ".join(harmed.values()))
    if ctx.gate.rule == "no_regression":
        if all(gain(ctx, before, after, c) for c in proposed):
            return reject_all(proposed, "no criterion's val agreement improved: "
                              + "; ".join(gain(ctx, before, after, c) or "" for c in proposed))
        return Decision(proposed, {})
    floor = -1.0 if higher_is_better(ctx.gate.metric) else -10.0  # mean rule: an undefined criterion counts as the worst value
    mean_before = statistics.fmean(max(score(before.value.get(c), ctx.gate.metric), floor) for c in ctx.criteria)
    mean_after = statistics.fmean(max(score(after.value.get(c), ctx.gate.metric), floor) for c in ctx.criteria)
    if mean_after >= mean_before:
        return Decision(proposed, {})
    return reject_all(proposed, f"the mean val {ctx.gate.metric} over criteria falls")


def reject_all(proposed: Sequence[str], why: str) -> Decision:
    return Decision([], dict.fromkeys(proposed, f"{REJECTED}: {why}"))


def combination(before: Measured, after: Measured, keep: Sequence[str], proposed: Sequence[str],
                joint: bool) -> Measured | None:
    """The kept combination's values when they are known without judging again: the candidate when all of it
    is kept; the kept criteria's own values when each criterion has its own prompt. None: judge it."""
    if list(keep) == list(proposed):
        return after
    if not joint:
        return before.updated(after, only=keep)
    return None


def confirm(ctx: GateContext, before: Measured, kept: Measured, decision: Decision, judged_again: bool) -> Decision:
    """Keep the combination only if the rule still keeps all of it and no criterion is harmed."""
    if not decision.keep or ctx.gate.metric == "none":
        return decision
    before, kept = shared_documents(before, kept)
    again = choose(ctx, before, kept, decision.keep)
    harmed = harms(ctx, before, kept, ctx.criteria)
    problems = list(dict.fromkeys([*(r.removeprefix(f"{REJECTED}: ") for r in again.reasons.values()),
                                   *harmed.values()]))
    if not problems:
        return decision
    dropped = [c for c in decision.reasons]
    prefix = f"kept without {', '.join(dropped)}'s rewrite, " if judged_again and dropped else ""
    reasons = dict(decision.reasons)
    reasons.update(dict.fromkeys(decision.keep, f"{REJECTED}: {prefix}{'; '.join(problems)}"))
    return Decision([], reasons)


def accepted(gate: Gate, before: Mapping[str, float | None], after: Mapping[str, float | None],
             proposed: Sequence[str], allowed: Mapping[str, float] | None = None) -> list[str]:
    """Which proposals the rule keeps from values alone (no failure counts): for callers that hold values."""
    ctx = GateContext(gate, allowed or {}, list(before))
    return choose(ctx, Measured(dict(before)), Measured(dict(after)), proposed).keep
