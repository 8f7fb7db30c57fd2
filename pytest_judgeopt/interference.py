"""Instruction interference: does merging every criterion into one prompt cost agreement?

A merged prompt (one call per sample, all criteria) is cheaper than one prompt per criterion,
but instructions that work alone can dilute each other once they share a prompt. The check
treats the merged prompt as a new candidate: each criterion's rho with the merged prompt is
compared with its rho with its own separate prompt on the same samples, with a paired
bootstrap, because both numbers are noisy and most of their noise is shared.

Verdicts per criterion:

- ``fail``: the drop is beyond ``max_drop`` and the interval of the difference excludes zero,
  or merging pushed the failed judgments over the criterion's allowed rate;
- ``inconclusive`` (passes): the drop is beyond ``max_drop`` but the interval contains zero,
  so it may be noise; the sample size that would settle it is reported;
- ``pass``: the drop is within ``max_drop``;
- ``undefined`` (fails): the difference or, for a drop beyond ``max_drop``, its interval
  cannot be computed, so no claim can be made either way;
- ``no baseline`` (passes): the separate prompt's own rho is undefined, so there is no
  agreement for merging to lose; the criterion's own item already fails with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .spec import Interference

if TYPE_CHECKING:
    from .judge import CriterionResult, Judgment
    from .llm import Usage
    from .spec import Spec
    from .stats import PairedDifference

PASSING = ("pass", "inconclusive", "no baseline")


@dataclass(frozen=True)
class Verdict:
    kind: str
    reason: str | None = None
    required_n: int | None = None

    @property
    def passed(self) -> bool:
        return self.kind in PASSING


@dataclass(frozen=True)
class CriterionInterference:
    """One criterion's agreement with its separate prompt and with the merged one, on the same samples."""

    criterion: str
    separate: float | None
    merged: float | None
    diff: float | None
    low: float | None
    high: float | None
    n: int
    judged: int
    failures_separate: dict[str, int]
    failures_merged: dict[str, int]
    verdict: str
    reasons: tuple[str, ...]
    required_n: int | None

    @property
    def passed(self) -> bool:
        return self.verdict in PASSING

    def to_json(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "separate": self.separate, "merged": self.merged, "diff": self.diff,
                "low": self.low, "high": self.high, "n": self.n, "judged": self.judged,
                "failures_separate": self.failures_separate, "failures_merged": self.failures_merged,
                "verdict": self.verdict, "passed": self.passed, "reasons": list(self.reasons),
                "required_n": self.required_n}


@dataclass
class InterferenceResult:
    """The check on one spec: per criterion, and what each prompt shape cost."""

    spec_name: str
    path: str
    split: str
    model: str
    method: str
    level: str
    settings: Interference
    records: int
    criteria: dict[str, CriterionInterference]
    separate: dict[str, CriterionResult] = field(repr=False)
    merged: dict[str, CriterionResult] = field(repr=False)
    usage_separate: Usage
    usage_merged: Usage

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria.values())

    @property
    def failed(self) -> list[CriterionInterference]:
        return [c for c in self.criteria.values() if not c.passed]

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec_name, "path": self.path, "split": self.split, "model": self.model,
                "method": self.method, "level": self.level, "max_drop": self.settings.max_drop,
                "confidence": self.settings.confidence, "records": self.records, "passed": self.passed,
                "usage": {"separate": self.usage_separate.answers_json(), "merged": self.usage_merged.answers_json()},
                "criteria": [c.to_json() for c in self.criteria.values()]}


def compare(spec: Spec, settings: Interference, separate: dict[str, CriterionResult],
            merged: dict[str, CriterionResult], *, split: str, model: str, records: int,
            usage_separate: Usage, usage_merged: Usage) -> InterferenceResult:
    """Pair the two shapes' judgments criterion by criterion and judge each difference."""
    criteria = {name: compare_criterion(spec, settings, separate[name], merged[name]) for name in separate}
    return InterferenceResult(spec_name=spec.name, path=str(spec.path), split=split, model=model,
                              method=spec.correlation.method, level=spec.correlation.level, settings=settings,
                              records=records, criteria=criteria, separate=separate, merged=merged,
                              usage_separate=usage_separate, usage_merged=usage_merged)


def compare_criterion(spec: Spec, settings: Interference, separate: CriterionResult,
                      merged: CriterionResult) -> CriterionInterference:
    from .stats import paired_difference  # scipy: only once something was judged

    a, b, human, groups = paired(separate.judgments, merged.judgments)
    corr = spec.correlation
    measured = paired_difference(corr.method, a, b, human, groups=groups if spec.dataset.group else None,
                                 level=corr.level, confidence=settings.confidence, resamples=corr.resamples,
                                 seed=spec.split.seed)
    decided = decide(measured, settings.max_drop, baseline_defined=separate.rho is not None)
    extra = failure_reasons(spec, separate, merged)
    kind = "fail" if extra and decided.passed else decided.kind
    reasons = tuple(extra) + ((decided.reason,) if decided.reason else ())
    return CriterionInterference(
        criterion=separate.criterion.name, separate=measured.a, merged=measured.b, diff=measured.diff,
        low=measured.low, high=measured.high, n=len(a), judged=len(separate.judgments),
        failures_separate=dict(sorted(separate.failures.items())), failures_merged=dict(sorted(merged.failures.items())),
        verdict=kind, reasons=reasons, required_n=decided.required_n)


def paired(separate: list[Judgment], merged: list[Judgment]) -> tuple[list[float], list[float], list[float], list[str]]:
    """Scores of the records both shapes scored, aligned by record id, in the separate run's order.

    A record that failed in either shape is left out of both, so the two rhos are measured
    on exactly the same samples; the failures are counted and judged on their own.
    """
    by_id = {j.record_id: j.score for j in merged if j.score is not None}
    a: list[float] = []
    b: list[float] = []
    human: list[float] = []
    groups: list[str] = []
    for j in separate:
        other = by_id.get(j.record_id)
        if j.score is not None and other is not None:
            a.append(j.score)
            b.append(other)
            human.append(j.human)
            groups.append(j.group)
    return a, b, human, groups


def decide(measured: PairedDifference, max_drop: float, *, baseline_defined: bool = True) -> Verdict:
    """The verdict on one criterion's difference (merged minus separate); see the module docstring."""
    from .stats import required_sample_size

    if not baseline_defined:
        return Verdict("no baseline", "the separate prompt's rho is undefined, so there is no agreement to lose")
    if measured.diff is None:
        return Verdict("undefined", f"the difference is undefined ({measured.reason})")
    drop = -measured.diff
    if drop <= max_drop:
        return Verdict("pass")
    where = f"merging drops rho by {drop:.3f} ({measured.a:.3f} -> {measured.b:.3f}), beyond max_drop {max_drop:g}"
    if measured.low is None or measured.high is None:
        return Verdict("undefined", f"{where}, and no interval could be computed to tell it from noise "
                                    "(too few documents or too many degenerate resamples); judge more samples")
    ci = f"the {measured.confidence:.0%} interval of the difference [{measured.low:+.3f}, {measured.high:+.3f}]"
    if measured.high < 0:
        return Verdict("fail", f"{where}; {ci} excludes zero")
    needed = required_sample_size(measured.diff, measured.low, measured.high, max(measured.n, 1), measured.confidence)
    return Verdict("inconclusive", f"{where}, but {ci} contains zero: it may be noise; "
                                   f"about {needed} samples would settle it", needed)


def failure_reasons(spec: Spec, separate: CriterionResult, merged: CriterionResult) -> list[str]:
    """Failed judgments that merging caused: over the criterion's allowed rate, and more than separate had."""
    from .judge import replay_missing

    out = []
    n = len(merged.judgments)
    missing = [j.record_id for j in merged.judgments if j.failure == "call_replay_miss"]
    if missing:
        out.append(replay_missing(spec, missing, "merged answers"))
    allowed = separate.criterion.max_parse_failure_rate
    failed, before = merged.failed_count, separate.failed_count
    if n and failed / n > allowed and failed > before:  # the kinds follow in the report's detail lines
        out.append(f"{failed}/{n} merged judgments failed ({failed / n:.0%}), above the allowed "
                   f"{allowed:.0%}; separate prompts failed {before}/{len(separate.judgments)}")
    return out
