"""One paired comparison: is judge configuration B worse than A, on the samples both judged?

Every "did it get worse?" question the package asks is this one question: separate against merged
prompts (the ``::merged`` item), an earlier run against this one (``::baseline``), the configured
model against another (``::compare``, ``judge.compare``), the initial against the optimized
instructions (the optimizer's test evaluation). A judge configuration is what decides its scores:
the instructions, the prompt shape, the model and the scoring rule. Both sides are judged on the
same samples; each criterion's agreement is measured for both on the samples both scored, with the
paired interval of the difference (``stats.paired_difference``: every replicate leaves the same
documents out of both, so the noise they share cancels).

Verdicts per criterion (b minus a; a *drop* is a minus b):

- ``pass``: the interval shows the drop is within ``max_drop`` (its lower end is at least
  ``-max_drop``); a point estimate alone never passes;
- ``fail``: the drop is beyond ``max_drop`` and the interval excludes zero; or side b's failed
  judgments exceed the criterion's allowed rate (and a's); or, at ``level: group``, side b is
  constant in more documents than ``correlation.max_skipped_groups`` allows (and than a is);
- ``inconclusive``: neither can be shown (the interval is too wide, or there is none: too few
  documents); it fails unless the rules say inconclusive passes (``interference.inconclusive: pass``;
  ``baseline.inconclusive`` defaults to pass). The sample size that would settle it is computed for
  80% power (POWER), in judged samples;
- ``undefined`` (fails): the difference cannot be computed (a constant judge, too few pairs);
- ``no baseline``: side a's own agreement is undefined, so there is nothing to lose; it passes unless
  side b's judgments fail beyond the allowed rate.

At ``level: group`` a document counts only where both sides (and the humans) vary in it: a judge that
is constant in a document is not measured there, and neither is the other, so skipping documents can
never favour one side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .agreement import CORRELATIONS, METRICS, higher_is_better

if TYPE_CHECKING:
    from .judge import Judgment
    from .replies import Usage
    from .spec import Model, Spec
    from .stats import PairedDifference

POWER = 0.80  # of the sample size that would settle an inconclusive verdict
VERDICTS = ("pass", "fail", "inconclusive", "undefined", "no baseline")


@dataclass(frozen=True)
class Configuration:
    """What decides a judge's scores: instructions, prompt shape, model, scoring rule (and the data judged)."""

    label: str
    instructions: Mapping[str, str]
    shape: str
    model: str
    scoring: str
    data_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "instructions": dict(self.instructions), "shape": self.shape, "model": self.model,
                "scoring": self.scoring, "data_hash": self.data_hash}


def scoring_of(spec: Spec, model: Model | str) -> str:
    """The scoring rule of a spec's judge on a model (or its description), in words: two sides scored by
    different rules are not comparable (``logprobs: auto`` weighs on the embedded model only)."""
    from .judge import uses_logprobs
    from .spec import Model

    if isinstance(model, str):
        model = Model(model.split(" ", 1)[0])
    settings = spec.judge
    rule = "probability-weighted" if uses_logprobs(settings.logprobs, model) else "parsed"
    return rule if settings.n == 1 else f"{rule}, mean of {settings.n} replies"


def differences(a: Configuration, b: Configuration) -> list[str]:
    """What differs between two configurations, in words (instructions by criterion)."""
    out = []
    changed = sorted(c for c in set(a.instructions) | set(b.instructions) if a.instructions.get(c) != b.instructions.get(c))
    if changed:
        out.append(f"instructions ({', '.join(changed)})")
    for name in ("model", "shape", "scoring"):
        if getattr(a, name) != getattr(b, name):
            out.append(f"{name} ({getattr(a, name)} -> {getattr(b, name)})")
    if a.data_hash != b.data_hash:
        out.append(f"data hash ({short(a.data_hash)} -> {short(b.data_hash)})")
    return out


def short(digest: str | None) -> str:
    return "unknown" if digest is None else digest[:12]


@dataclass(frozen=True)
class Rules:
    """How a comparison decides: the drop allowed, the confidence, and whether inconclusive passes."""

    max_drop: float = 0.02
    confidence: float = 0.95
    inconclusive_passes: bool = False
    # the words of the reasons: what changed ("merging") and what each side's judgments are called
    change: str = "the change"
    a_noun: str = "side a"
    b_noun: str = "side b"


@dataclass(frozen=True)
class Side:
    """One configuration's judgments per criterion, with what they cost."""

    configuration: Configuration
    judgments: Mapping[str, Sequence[Judgment]]
    usage: Usage | None = None


@dataclass(frozen=True)
class Verdict:
    kind: str
    reason: str | None = None
    required_n: int | None = None


@dataclass(frozen=True)
class CriterionComparison:
    """One criterion on both sides, on the samples both scored, and the verdict on the difference."""

    criterion: str
    measured: PairedDifference
    judged_a: int
    judged_b: int
    failures_a: dict[str, int]  # failed replies by kind (one per judgment unless judge.n > 1)
    failures_b: dict[str, int]
    documents: int | None
    documents_skipped: int
    verdict: str
    passed: bool
    reasons: tuple[str, ...]
    required_n: int | None
    # each side's scoring: scores probability-weighted and parsed, and the mean probability mass outside the
    # scale over its weighted scores (None: nothing weighted), as a criterion's own result says them
    scoring_a: dict[str, int]
    scoring_b: dict[str, int]
    mass_outside_scale_a: float | None
    mass_outside_scale_b: float | None
    replies_a: int | None = None  # the replies asked for, the failure counts' denominator (judged_a when judge.n is 1)
    replies_b: int | None = None

    @property
    def a(self) -> float | None:
        return self.measured.a

    @property
    def b(self) -> float | None:
        return self.measured.b

    @property
    def diff(self) -> float | None:
        return self.measured.diff

    @property
    def low(self) -> float | None:
        return self.measured.low

    @property
    def high(self) -> float | None:
        return self.measured.high

    @property
    def n(self) -> int:
        """The pairs both sides scored (after skipped documents at level group)."""
        return self.measured.n

    def to_json(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "a": self.a, "b": self.b, "diff": self.diff, "low": self.low,
                "high": self.high, "n": self.n, "judged_a": self.judged_a, "judged_b": self.judged_b,
                "failures_a": self.failures_a, "failures_b": self.failures_b, "replies_a": self.replies_a,
                "replies_b": self.replies_b, "documents": self.documents,
                "documents_skipped": self.documents_skipped, "verdict": self.verdict, "passed": self.passed,
                "reasons": list(self.reasons), "required_n": self.required_n, "scoring_a": self.scoring_a,
                "scoring_b": self.scoring_b, "mass_outside_scale_a": self.mass_outside_scale_a,
                "mass_outside_scale_b": self.mass_outside_scale_b}


@dataclass
class Comparison:
    """A whole comparison of two configurations on one spec's split: per criterion, and what each side cost."""

    kind: str  # merged, baseline, compare, optimize
    spec_name: str
    path: str
    split: str
    method: str
    level: str
    rules: Rules
    a: Configuration
    b: Configuration
    records: int
    criteria: dict[str, CriterionComparison]
    usage_a: Usage | None
    usage_b: Usage | None
    unpaired: dict[str, list[str]] = field(default_factory=dict)  # sample ids only one side judged: "a", "b"
    problems: list[str] = field(default_factory=list)  # what fails the whole comparison (no sample in common, ...)
    notes: list[str] = field(default_factory=list)  # what its reader should know (criteria on one side only, ...)

    @property
    def passed(self) -> bool:
        return not self.problems and all(c.passed for c in self.criteria.values())

    @property
    def failed(self) -> list[CriterionComparison]:
        return [c for c in self.criteria.values() if not c.passed]

    @property
    def differs(self) -> list[str]:
        return differences(self.a, self.b)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec_name, "path": self.path, "split": self.split,
                "method": self.method, "level": self.level, "max_drop": self.rules.max_drop,
                "confidence": self.rules.confidence, "power": POWER,
                "inconclusive": "pass" if self.rules.inconclusive_passes else "fail", "records": self.records,
                "passed": self.passed, "a": self.a.to_json(), "b": self.b.to_json(), "differs": self.differs,
                "unpaired": {side: sorted(ids) for side, ids in sorted(self.unpaired.items())},
                "problems": list(self.problems), "notes": list(self.notes),
                "usage": {"a": usage_json(self.usage_a), "b": usage_json(self.usage_b)},
                "criteria": [c.to_json() for c in self.criteria.values()]}


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
    """A side's answers, their tokens, and dollars where litellm knew every call's price (else None: unknown, not
    zero); None when the side's cost is not this run's (an earlier run's report)."""
    if usage is None:
        return None
    return {**usage.answers_json(), "cost_usd": None if usage.cost_unknown else round(usage.cost, 6)}


# --------------------------------------------------------------------------------------------
# comparing


def compare(spec: Spec, a: Side, b: Side, *, kind: str, split: str, rules: Rules, records: int,
            criteria: Sequence[str] | None = None, seed: int | None = None) -> Comparison:
    """Pair the two sides' judgments criterion by criterion (by sample id) and decide each difference."""
    names = list(criteria or [c for c in spec.criteria if c in a.judgments and c in b.judgments])
    ids_a = {j.record_id for c in names for j in a.judgments[c]}
    ids_b = {j.record_id for c in names for j in b.judgments[c]}
    out = {name: compare_criterion(spec, rules, name, a.judgments[name], b.judgments[name],
                                   seed=spec.split.seed if seed is None else seed) for name in names}
    unpaired = {side: sorted(ids) for side, ids in (("a", ids_a - ids_b), ("b", ids_b - ids_a)) if ids}
    return Comparison(kind=kind, spec_name=spec.name, path=str(spec.path), split=split, method=spec.correlation.method,
                      level=spec.correlation.level, rules=rules, a=a.configuration, b=b.configuration, records=records,
                      criteria=out, usage_a=a.usage, usage_b=b.usage, unpaired=unpaired)


def compare_criterion(spec: Spec, rules: Rules, name: str, judged_a: Sequence[Judgment], judged_b: Sequence[Judgment],
                      *, seed: int) -> CriterionComparison:
    from .judge import mass_outside_scale, replies, scoring_counts
    from .stats import correlation, paired_difference  # scipy: only once something was judged

    corr = spec.correlation
    grouped = spec.dataset.group is not None
    rows = paired(judged_a, judged_b)
    documents = len({r[3] for r in rows}) if grouped else None
    skipped, why_skipped = 0, ""
    if grouped and corr.level == "group":
        rows, skipped, why_skipped = shared_documents(rows)
    a, b, human, groups = (list(column) for column in zip(*rows, strict=False)) if rows else ([], [], [], [])
    options = corr.options.for_scale(spec.criteria[name].scale) if name in spec.criteria else corr.options
    measured = oriented(corr.method, paired_difference(corr.method, a, b, human, groups=groups if grouped else None,
                                                       level=corr.level, confidence=rules.confidence,
                                                       **interval_settings(spec), seed=seed, options=options))
    own = [(j.score, j.human, j.group) for j in judged_a if j.score is not None]
    baseline_defined = bool(own) and correlation(
        corr.method, [s for s, _, _ in own], [h for _, h, _ in own], groups=[g for _, _, g in own] if grouped else None,
        level=corr.level, options=options)[0] is not None
    decided = decide(measured, rules, baseline_defined=baseline_defined, judged=max(len(judged_a), len(judged_b)),
                     metric=corr.method)
    extra = failure_reasons(spec, rules, name, judged_a, judged_b, baseline_defined=baseline_defined)
    if skipped:
        extra += skipped_reasons(spec, skipped, documents or 0, why_skipped)
    kind = "fail" if extra else decided.kind
    passed = kind in ("pass", "no baseline") or (kind == "inconclusive" and rules.inconclusive_passes)
    failures_a = failure_counts(judged_a)
    failures_b = failure_counts(judged_b)
    reasons = tuple(extra) + ((decided.reason,) if decided.reason else ())
    if skipped and not extra:
        reasons += (f"{skipped} of {documents} documents skipped for both sides ({why_skipped})",)
    return CriterionComparison(criterion=name, measured=measured, judged_a=len(judged_a), judged_b=len(judged_b),
                               failures_a=failures_a, failures_b=failures_b, documents=documents,
                               documents_skipped=skipped, verdict=kind, passed=passed, reasons=reasons,
                               required_n=decided.required_n, scoring_a=scoring_counts(judged_a),
                               scoring_b=scoring_counts(judged_b), mass_outside_scale_a=mass_outside_scale(judged_a),
                               mass_outside_scale_b=mass_outside_scale(judged_b),
                               replies_a=replies(judged_a), replies_b=replies(judged_b))


def oriented(method: str, measured: PairedDifference) -> PairedDifference:
    """For an error metric (mae, rmse: lower is better) the difference is turned around, a's error minus b's,
    so that a negative difference is a loss for every metric and one rule decides them all; a and b stay the
    errors measured."""
    from dataclasses import replace

    if higher_is_better(method) or measured.diff is None:
        return measured
    return replace(measured, diff=-measured.diff, low=None if measured.high is None else -measured.high,
                   high=None if measured.low is None else -measured.low)


def interval_settings(spec: Spec) -> dict[str, Any]:
    """The spec's interval settings, as paired_difference takes them."""
    corr = spec.correlation
    return {"min_groups": corr.min_groups}


def paired(judged_a: Sequence[Judgment], judged_b: Sequence[Judgment]) -> list[tuple[float, float, float, str]]:
    """(score a, score b, human, group) of the samples both sides scored, by sample id, in a's order, with
    b's human score and group (this run's data, when a is an earlier run).

    A sample that failed on either side is left out of both, so the two agreements are measured on
    exactly the same samples; the failures are counted and judged on their own.
    """
    by_id = {j.record_id: j for j in judged_b if j.score is not None}
    out = []
    for j in judged_a:
        other = by_id.get(j.record_id)
        if j.score is not None and other is not None and other.score is not None:
            out.append((j.score, other.score, other.human, other.group))
    return out


def shared_documents(rows: list[tuple[float, float, float, str]]) -> tuple[list[tuple[float, float, float, str]], int, str]:
    """At level group, the rows of the documents where both sides and the humans have a correlation of their
    own; the number of documents left out, and why (which side was constant in how many)."""
    from .stats import MIN_GROUP_PAIRS

    by_group: dict[str, list[tuple[float, float, float, str]]] = {}
    for row in rows:
        by_group.setdefault(row[3], []).append(row)
    kept: list[tuple[float, float, float, str]] = []
    causes = {"a": 0, "b": 0, "humans": 0, "few": 0}
    for members in by_group.values():
        varies = {side: len({m[k] for m in members}) > 1 for side, k in (("a", 0), ("b", 1), ("humans", 2))}
        if len(members) >= MIN_GROUP_PAIRS and all(varies.values()):
            kept += members
            continue
        if len(members) < MIN_GROUP_PAIRS:
            causes["few"] += 1
        for side, ok in varies.items():
            causes[side] += not ok
    skipped = len(by_group) - len({r[3] for r in kept})
    words = {"a": "judge a constant", "b": "judge b constant", "humans": "humans constant",
             "few": f"fewer than {MIN_GROUP_PAIRS} scored pairs"}
    why = ", ".join(f"{words[k]} in {v}" for k, v in causes.items() if v)
    return kept, skipped, why


def skipped_reasons(spec: Spec, skipped: int, documents: int, why: str) -> list[str]:
    """Documents skipped beyond ``correlation.max_skipped_groups``: a judge constant in many documents is not
    measured in them, so its agreement would rest on the documents where it happens to vary."""
    allowed = spec.correlation.max_skipped_groups
    if not documents or skipped / documents <= allowed:
        return []
    return [f"{skipped} of {documents} documents skipped for both sides ({why}), above the allowed {allowed:.0%} "
            "(correlation.max_skipped_groups)"]


def failure_counts(judgments: Sequence[Judgment]) -> dict[str, int]:
    """Failed replies by kind: with judge.n > 1 each failed reply counts, also in a judgment others scored."""
    from .judge import failed_replies

    return dict(sorted(failed_replies(judgments).items()))


def failure_reasons(spec: Spec, rules: Rules, name: str, judged_a: Sequence[Judgment], judged_b: Sequence[Judgment], *,
                    baseline_defined: bool = True) -> list[str]:
    """Failed judgments on side b: over the criterion's allowed rate and more than a had (with no baseline to
    compare with, over the allowed rate is enough); answers missing from a replay cache are named as such."""
    from .judge import replies

    out = []
    n = replies(judged_b)
    failures = failure_counts(judged_b)
    missing = [j.record_id for j in judged_b if j.failure == "call_replay_miss"]
    if missing:
        from .judge import replay_missing

        out.append(replay_missing(spec, missing, f"{rules.b_noun} answers"))
    allowed = spec.criteria[name].max_parse_failure_rate
    failed, before = sum(failures.values()), sum(failure_counts(judged_a).values())
    # judge.n > 1: the rates are over replies, and a side that asked more replies is compared by its rate
    asked_a = replies(judged_a)
    rate_a = before / asked_a if asked_a else 0.0
    what = "judgments" if n == len(judged_b) else "replies"
    if n and failed / n > allowed and (failed / n > rate_a or not baseline_defined):
        out.append(f"{failed}/{n} {rules.b_noun} {what} failed ({failed / n:.0%}), above the allowed {allowed:.0%}; "
                   f"{rules.a_noun} failed {before}/{asked_a}")
    return out


def decide(measured: PairedDifference, rules: Rules, *, baseline_defined: bool = True,
           judged: int | None = None, metric: str = "spearman") -> Verdict:
    """The verdict on one criterion's difference (b minus a; for an error metric, a's error minus b's, see
    ``oriented``); see the module docstring."""
    if not baseline_defined:
        return Verdict("no baseline", f"the agreement of {rules.a_noun} is undefined, so there is no agreement to lose")
    if measured.diff is None or measured.a is None or measured.b is None:
        return Verdict("undefined", f"the difference is undefined ({measured.reason})")
    max_drop = rules.max_drop
    drop = -measured.diff
    rho = "rho" if metric in CORRELATIONS or metric not in METRICS else (
        metric if higher_is_better(metric) else f"agreement ({metric} rises: lower is better)")
    if drop > max_drop:
        where = f"{rules.change} drops {rho} by {drop:.3f} ({measured.a:.3f} -> {measured.b:.3f}), beyond max_drop {max_drop:g}"
    else:
        where = (f"{rules.change} changes {rho} by {measured.diff:+.3f} ({measured.a:.3f} -> {measured.b:.3f}), within "
                 f"max_drop {max_drop:g}")
    if measured.low is None or measured.high is None:
        why = getattr(measured, "interval_reason", None) or "too few documents or too many degenerate resamples"
        return Verdict("inconclusive", f"{where}, and no interval could be computed to tell it from noise ({why}); "
                                       "judge more samples")
    ci = f"the {measured.confidence:.0%} interval of the difference [{measured.low:+.3f}, {measured.high:+.3f}]"
    if measured.low >= -max_drop:
        return Verdict("pass")
    if drop > max_drop and measured.high < 0:
        return Verdict("fail", f"{where}; {ci} excludes zero")
    needed = required_sample_size(measured.diff, measured.low, measured.high, max_drop, pairs=max(measured.n, 1),
                                  judged=judged or measured.n, confidence=measured.confidence)
    settle = (f"; about {needed} judged samples would settle it ({POWER:.0%} power)" if needed is not None
              else "; it sits at -max_drop, where no sample size settles it")
    if drop > max_drop:
        return Verdict("inconclusive", f"{where}, but {ci} contains zero: it may be noise{settle}", needed)
    return Verdict("inconclusive", f"{where}, but {ci} reaches below -{max_drop:g}: a drop beyond max_drop is not "
                                   f"ruled out{settle}", needed)


def required_sample_size(diff: float, low: float, high: float, max_drop: float, *, pairs: int, judged: int,
                         confidence: float, power: float = POWER) -> int | None:
    """Judged samples at which, if the true difference were the observed one, the verdict would settle with
    ``power``: a drop beyond max_drop would show an interval excluding zero; a smaller one an interval whose
    lower end clears ``-max_drop``.

    The standard error is read from the interval's width (half-width / z), and shrinks as 1/sqrt(n) in
    documents; with the documents' size unchanged that is 1/sqrt(n) in samples too. The pairs both sides
    scored are scaled to samples judged by the share that was scored, since failed judgments pair nothing.
    None when the observed difference sits exactly at the boundary it would have to clear.
    """
    from scipy.stats import norm

    if not 0 < confidence < 1 or not 0 < power < 1:
        raise ValueError("confidence and power must be between 0 and 1")
    if pairs < 1 or high < low:
        raise ValueError("need pairs >= 1 and low <= high")
    distance = -diff if -diff > max_drop else diff + max_drop
    z_alpha, z_beta = float(norm.ppf(0.5 + confidence / 2)), float(norm.ppf(power))
    se = (high - low) / (2 * z_alpha)
    if distance <= 0 or se == 0:
        return None
    pairs_needed = pairs * ((z_alpha + z_beta) * se / distance) ** 2
    return max(judged, math.ceil(round(pairs_needed * judged / pairs, 6)))
