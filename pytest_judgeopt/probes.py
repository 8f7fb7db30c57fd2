"""Behavioural probes: metamorphic checks of the judge, each a pytest item with a paired statistic and a gate.

Agreement with the humans does not say whether the judge gives the same answer twice, whether
padding a summary with filler buys it a higher score, or whether shuffling its sentences lowers
its coherence. A probe changes one thing about the prompts of the test split (or the
``--judge-sample`` of it) and measures, on the same samples, how the scores move:

- ``retest``: the same prompts judged ``k`` more times, each with its own seed, at the spec's
  temperature; the judge's agreement with itself (the spec's metric, first judgment against each
  repetition, pooled, with a document jackknife interval) must reach ``min``;
- ``pad``: filler appended to one input (a built-in neutral text, or the spec's); the mean score
  must not rise by more than ``max_rise`` (verbosity bias);
- ``transform``: a user-named change of the inputs from a ``pytest_judgeopt_transforms`` hook, with
  the expected direction per criterion; it passes when the paired mean change has that sign and its
  interval excludes zero (a claim, so it needs the evidence).

Every result carries the mean change with its interval (each leaving out one whole document: a jackknife), the number of
pairs, the failed judgments and the worst examples. Failed judgments are left out of the pairs and
counted; above the criterion's allowed rate the probe fails, as an item does.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .data import Record
from .problems import SpecError, dotted, problem
from .spec import Spec

if TYPE_CHECKING:
    from .judge import Judgment
    from .stats import MeanChange

KINDS = ("retest", "pad", "transform")
DIRECTIONS = ("lower", "higher")
DEFAULT_K = 2
WORST_SHOWN = 3
COMMON_KEYS = frozenset({"kind", "name", "sample"})
KIND_KEYS = {"retest": frozenset({"criteria", "k", "min", "metric", "gate"}),
             "pad": frozenset({"criteria", "input", "filler", "max_rise", "gate"}),
             "transform": frozenset({"transform", "expect"})}
# Appended by `pad` unless the spec gives its own: sentences that add no information, claim nothing
# and fit after any text, so a score that rises with them rewards length, not content.
NEUTRAL_FILLER = ("It is worth noting that the points above are presented in the order in which they appear. "
                  "In general terms, the text covers the matters described, and the details given are part of "
                  "the overall account. Taken together, these elements form the content as outlined here.")

Transform = Callable[[dict[str, str]], "Mapping[str, str] | None"]


@dataclass(frozen=True)
class Probe:
    name: str
    kind: str
    criteria: tuple[str, ...]
    line: int
    k: int = DEFAULT_K
    min: float | None = None
    metric: str = "spearman"
    input: str | None = None
    filler: str = NEUTRAL_FILLER
    max_rise: float | None = None
    transform: str | None = None
    expect: dict[str, str] = field(default_factory=dict)
    gate: str = "point"
    sample: int | None = None

    @property
    def item_name(self) -> str:
        return f"probe[{self.name}]"

    def settings(self) -> dict[str, Any]:
        """What the probe does, for the reports: only the settings of its kind."""
        chosen: dict[str, Any]
        if self.kind == "retest":
            chosen = {"k": self.k, "min": self.min, "metric": self.metric, "gate": self.gate}
        elif self.kind == "pad":
            chosen = {"input": self.input, "filler": self.filler, "max_rise": self.max_rise, "gate": self.gate}
        else:
            chosen = {"transform": self.transform, "expect": dict(self.expect)}
        return {**chosen, "sample": self.sample}


# --------------------------------------------------------------------------
# reading and checking


def load_probes(spec: Spec, metrics: Sequence[str], transforms: Mapping[str, Any] | None) -> tuple[Probe, ...]:
    """The spec's probes, checked against its criteria, inputs, metrics and (when known) the transforms the
    hooks give; raises SpecError listing every problem, each with the file, the line, the key and the fix."""
    entries = spec.raw.get("probes") or []
    problems: list[str] = []
    probes: list[Probe] = []
    first: dict[str, int] = {}
    criteria = list(spec.criteria)
    inputs = list(spec.dataset.inputs)
    for i, entry in enumerate(entries):
        at = ("probes", i)
        line = spec.line_of(*at) or 1
        count = len(problems)

        def report(what: str, fix: str, *key: str | int, at: tuple[str, int] = at, line: int = line) -> None:
            problems.append(problem(spec.path, spec.line_of(*at, *key) or line, dotted(at + key), what, fix))

        def known(name: str, options: list[str], what: str, *key: str | int) -> None:
            if name not in options:
                guess = difflib.get_close_matches(name, options, n=1)
                report(f"no {what} '{name}'", f"did you mean '{guess[0]}'?" if guess else f"use one of: {', '.join(options)}",
                       *key)

        kind = entry["kind"]
        allowed = COMMON_KEYS | KIND_KEYS[kind]
        for key in entry:
            if key not in allowed:
                report(f"`{key}` is not a setting of a {kind} probe",
                       f"remove it; a {kind} probe takes {', '.join(sorted(allowed))}", key)
        named = entry.get("criteria", criteria)
        named = [named] if isinstance(named, str) else list(named)
        for n, name in enumerate(named):
            known(name, criteria, "criterion", "criteria", *((n,) if isinstance(entry.get("criteria"), list) else ()))
        if kind == "transform":
            named = list(entry["expect"])
            for name in named:
                known(name, criteria, "criterion", "expect", name)
            if transforms is not None and entry["transform"] not in transforms:
                options = sorted(transforms)
                guess = difflib.get_close_matches(entry["transform"], options, n=1)
                have = f" (the hooks give: {', '.join(options)})" if options else " (no pytest_judgeopt_transforms hook gives any)"
                report(f"no transform '{entry['transform']}'{have}",
                       f"did you mean '{guess[0]}'?" if guess else
                       "return it from a pytest_judgeopt_transforms hook in a conftest.py (see pytest_judgeopt/hooks.py)",
                       "transform")
        if kind == "pad" and "input" in entry:
            known(entry["input"], inputs, "input", "input")
        metric = entry.get("metric", spec.correlation.method)
        if kind == "retest" and metric not in metrics:
            known(metric, list(metrics), "metric", "metric")
        name = entry.get("name") or (entry["transform"] if kind == "transform" else kind)
        if name in first:
            report(f"two probes are named '{name}' (the first on line {first[name]})",
                   "give each probe its own `name:`: it is the item's id probe[NAME]", "name" if "name" in entry else "kind")
        first.setdefault(name, line)
        if len(problems) > count:
            continue
        probes.append(Probe(name=name, kind=kind, criteria=tuple(dict.fromkeys(named)), line=line,
                            k=entry.get("k", DEFAULT_K), min=entry.get("min"), metric=metric,
                            input=entry.get("input", inputs[-1]) if kind == "pad" else None,
                            filler=entry.get("filler", NEUTRAL_FILLER), max_rise=entry.get("max_rise"),
                            transform=entry.get("transform"), expect=dict(entry.get("expect", {})),
                            gate=entry.get("gate", "point"), sample=entry.get("sample")))
    if problems:
        raise SpecError(problems)
    return tuple(probes)


# --------------------------------------------------------------------------
# the changed inputs


class ProbeError(Exception):
    """A transform that returned something that is not inputs; the message names the transform and the fix."""


def padded(probe: Probe, records: Sequence[Record]) -> list[Record]:
    assert probe.input is not None
    return [replace(r, inputs={**r.inputs, probe.input: f"{r.inputs[probe.input].rstrip()} {probe.filler}"}) for r in records]


def transformed(probe: Probe, records: Sequence[Record], function: Transform) -> tuple[list[Record], int]:
    """Each record with the transform's inputs, and how many records it left out (None, or nothing changed)."""
    out, skipped = [], 0
    for record in records:
        result = function(dict(record.inputs))
        if result is None:
            skipped += 1
            continue
        if not isinstance(result, Mapping):
            raise ProbeError(f"the transform '{probe.transform}' returned {type(result).__name__} for record {record.id}. "
                             "Fix: return a dict of inputs (placeholder -> text), or None to leave the record out")
        unknown = [k for k in result if k not in record.inputs]
        wrong = [k for k, v in result.items() if not isinstance(v, str)]
        if unknown or wrong:
            said = (f"unknown input(s) {', '.join(map(str, unknown))}" if unknown
                    else f"a value that is not text for {', '.join(map(str, wrong))}")
            raise ProbeError(f"the transform '{probe.transform}' returned {said} for record {record.id}. Fix: return "
                             f"texts for the spec's inputs ({', '.join(record.inputs)})")
        inputs = {**record.inputs, **result}
        if inputs == record.inputs:
            skipped += 1
            continue
        out.append(replace(record, inputs=inputs))
    return out, skipped


# --------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class ProbeCriterion:
    """One criterion of one probe: the statistic its gate reads, the paired mean change, the verdict."""

    criterion: str
    statistic: str
    value: float | None
    low: float | None
    high: float | None
    change: MeanChange
    n: int
    judged: int
    failed: int
    passed: bool
    reasons: tuple[str, ...]
    worst: tuple[dict[str, Any], ...]
    threshold: float | None = None
    expected: str | None = None

    def to_json(self) -> dict[str, Any]:
        c = self.change
        return {"criterion": self.criterion, "statistic": self.statistic, "value": self.value, "low": self.low,
                "high": self.high, "change": c.value, "change_low": c.low, "change_high": c.high,
                "confidence": c.confidence, "n": self.n, "groups": c.groups, "judged": self.judged, "failed": self.failed,
                "threshold": self.threshold, "expected": self.expected, "passed": self.passed,
                "reasons": list(self.reasons), "worst": list(self.worst)}


@dataclass
class ProbeResult:
    probe: Probe
    spec_name: str
    path: str
    split: str
    shape: str
    model: str
    records: int
    criteria: dict[str, ProbeCriterion]
    skipped: int = 0
    calls: int = 0  # model calls this probe made; the rest of its judgments came from the answer cache
    cache_hits: int = 0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria.values())

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec_name, "path": self.path, "probe": self.probe.name, "kind": self.probe.kind,
                "line": self.probe.line, "settings": self.probe.settings(), "split": self.split, "shape": self.shape,
                "model": self.model, "records": self.records, "skipped": self.skipped, "calls": self.calls, "cache_hits": self.cache_hits,
                "passed": self.passed, "criteria": [c.to_json() for c in self.criteria.values()]}

    def properties(self) -> dict[str, Any]:
        """The probe item's JUnit properties: per criterion the statistic, the mean change with its interval, n."""
        out: dict[str, Any] = {"probe_kind": self.probe.kind, "probe_passed": self.passed, "probe_records": self.records}
        for name, c in self.criteria.items():
            out.update({f"probe_{name}_statistic": c.statistic, f"probe_{name}_value": c.value,
                        f"probe_{name}_low": c.low, f"probe_{name}_high": c.high, f"probe_{name}_change": c.change.value,
                        f"probe_{name}_change_low": c.change.low, f"probe_{name}_change_high": c.change.high,
                        f"probe_{name}_n": c.n, f"probe_{name}_failed": c.failed, f"probe_{name}_passed": c.passed})
        return out


def paired(before: Sequence[Judgment], after: Sequence[Judgment]) -> list[tuple[Judgment, Judgment]]:
    """The records scored on both sides, in the order of ``before``; failed judgments are left out of both."""
    by_id = {j.record_id: j for j in after if j.score is not None}
    return [(b, by_id[b.record_id]) for b in before if b.score is not None and b.record_id in by_id]


def worst(pairs: Sequence[tuple[Judgment, Judgment]], key: Callable[[float], float]) -> tuple[dict[str, Any], ...]:
    """The pairs that moved the most the wrong way (``key`` of the change, largest first), for the report."""
    ranked = sorted(pairs, key=lambda p: (-key((p[1].score or 0.0) - (p[0].score or 0.0)), p[0].record_id))
    return tuple({"record_id": b.record_id, "before": b.score, "after": a.score, "change": (a.score or 0.0) - (b.score or 0.0),
                  "reply_before": (b.reply or "")[:200], "reply_after": (a.reply or "")[:200]}
                 for b, a in ranked[:WORST_SHOWN])


def replay_reason(spec: Spec, judgments: Sequence[Judgment]) -> list[str]:
    """In replay mode, the answers that are not recorded: which samples, and the fix (ahead of what they caused)."""
    missing = list(dict.fromkeys(j.record_id for j in judgments if j.failure == "call_replay_miss"))
    if not missing:
        return []
    from .judge import replay_missing

    return [replay_missing(spec, missing)]


def failure_reason(spec: Spec, criterion: str, failed: int, judged: int) -> list[str]:
    allowed = spec.criteria[criterion].max_parse_failure_rate
    if judged and failed / judged > allowed:
        return [f"{failed}/{judged} judgments failed ({failed / judged:.0%}), above the allowed {allowed:.0%}"]
    return []


def change_of(spec: Spec, pairs: Sequence[tuple[Judgment, Judgment]]) -> MeanChange:
    from .stats import mean_change

    corr = spec.correlation
    return mean_change([b.score or 0.0 for b, _ in pairs], [a.score or 0.0 for _, a in pairs],
                       groups=[b.group for b, _ in pairs] if spec.dataset.group else None,
                       confidence=corr.confidence, min_groups=corr.min_groups, seed=spec.split.seed)


def assess_retest(probe: Probe, spec: Spec, criterion: str, base: Sequence[Judgment],
                  repeats: Sequence[Sequence[Judgment]]) -> ProbeCriterion:
    """The judge against itself: the first judgment against every repetition, pooled."""
    from .stats import agreement

    corr = spec.correlation
    pairs = [pair for again in repeats for pair in paired(base, again)]
    judged = len(base) * (1 + len(repeats))
    failed = sum(j.score is None for j in base) + sum(j.score is None for again in repeats for j in again)
    measured = agreement(probe.metric, [a.score or 0.0 for _, a in pairs], [b.score or 0.0 for b, _ in pairs],
                         groups=[b.group for b, _ in pairs] if spec.dataset.group else None, level="pooled",
                         confidence=corr.confidence, min_groups=corr.min_groups, seed=spec.split.seed)
    reasons = replay_reason(spec, [*base, *(j for again in repeats for j in again)])
    reasons += failure_reason(spec, criterion, failed, judged)
    floor = probe.min if probe.min is not None else 1.0
    if measured.value is None:
        reasons.append(f"the judge's {probe.metric} with itself is undefined: {measured.reason}")
    elif probe.gate == "bound":
        if measured.low is None:
            reasons.append("no interval could be computed for the bound gate (too few documents)")
        elif measured.low < floor:
            reasons.append(f"the interval's lower end {measured.low:.3f} of the judge's {probe.metric} with itself "
                           f"is below min {floor:g}")
    elif measured.value < floor:
        reasons.append(f"the judge's {probe.metric} with itself is {measured.value:.3f}, below min {floor:g}: "
                       f"asked again (k={probe.k}, temperature {spec.judge.temperature:g}), it changes its scores")
    return ProbeCriterion(criterion, f"{probe.metric} with itself", measured.value, measured.low, measured.high,
                          change_of(spec, pairs), len(pairs), judged, failed, not reasons, tuple(reasons),
                          worst(pairs, abs), threshold=floor)


def assess_shift(probe: Probe, spec: Spec, criterion: str, before: Sequence[Judgment],
                 after: Sequence[Judgment]) -> ProbeCriterion:
    """pad and transform: the paired mean change of the scores, against the gate of the probe's kind."""
    pairs = paired(before, after)
    kept = {j.record_id for j in after}
    before = [j for j in before if j.record_id in kept]  # records the transform left out are not judged twice
    judged = len(before) + len(after)
    failed = sum(j.score is None for j in before) + sum(j.score is None for j in after)
    change = change_of(spec, pairs)
    reasons = replay_reason(spec, [*before, *after]) + failure_reason(spec, criterion, failed, judged)
    ci = (f"[{change.low:+.3f}, {change.high:+.3f}]" if change.low is not None and change.high is not None else None)
    if change.value is None:
        reasons.append(f"the change is undefined: {change.reason}")
        return ProbeCriterion(criterion, "mean change", None, None, None, change, len(pairs), judged, failed, False,
                              tuple(reasons), (), threshold=probe.max_rise, expected=probe.expect.get(criterion))
    if probe.kind == "pad":
        limit = probe.max_rise if probe.max_rise is not None else 0.0
        if change.value > limit:
            reasons.append(f"with filler appended to {probe.input}, the mean score rises by {change.value:+.3f}"
                           f"{f' {ci}' if ci else ''}, beyond max_rise {limit:g}: the judge rewards length")
        elif probe.gate == "bound":
            if change.high is None:
                reasons.append(f"no interval could be computed for the bound gate ({change.reason})")
            elif change.high > limit:
                reasons.append(f"the mean rise {change.value:+.3f} is within max_rise {limit:g}, but its interval {ci} "
                               "reaches beyond it (gate: bound); judge more samples")
        shown = worst(pairs, lambda d: d)
        return ProbeCriterion(criterion, "mean change", change.value, change.low, change.high, change, len(pairs), judged,
                              failed, not reasons, tuple(reasons), shown, threshold=limit)
    direction = probe.expect[criterion]
    sign = -1.0 if direction == "lower" else 1.0
    if change.low is None or change.high is None:
        reasons.append(f"the mean change {change.value:+.3f} has no interval ({change.reason}), so it cannot show that "
                       f"the transform makes {criterion} {direction}")
    elif sign * change.value <= 0:
        reasons.append(f"expected {criterion} to get {direction} under '{probe.transform}', but the mean change is "
                       f"{change.value:+.3f} {ci}")
    elif (change.high >= 0) if direction == "lower" else (change.low <= 0):
        reasons.append(f"{criterion} gets {direction} under '{probe.transform}' ({change.value:+.3f}), but the interval "
                       f"{ci} contains zero: it may be noise; judge more samples")
    return ProbeCriterion(criterion, "mean change", change.value, change.low, change.high, change, len(pairs), judged,
                          failed, not reasons, tuple(reasons), worst(pairs, lambda d: -sign * d), expected=direction)


def describe_failure(result: ProbeResult) -> str:
    """A failing probe's message: per criterion the reasons, the change with its interval, the worst examples."""
    p = result.probe
    lines = [f"{result.spec_name}::{p.item_name} failed ({p.kind}, {result.split} split, {result.records} samples, "
             f"{result.shape} prompts, {result.model}):"]
    if result.skipped:
        lines.append(f"  {result.skipped} records left out (the transform returned None or changed nothing)")
    for c in result.criteria.values():
        lines += [f"  - {c.criterion}: {reason}" for reason in c.reasons]
    for c in result.criteria.values():
        value = "undefined" if c.value is None else f"{c.value:.3f}"
        interval = f" [{c.low:.3f}, {c.high:.3f}]" if c.low is not None and c.high is not None else ""
        ch = c.change
        moved = "-" if ch.value is None else f"{ch.value:+.3f}"
        moved += f" [{ch.low:+.3f}, {ch.high:+.3f}]" if ch.low is not None and ch.high is not None else ""
        statistic = f"{c.statistic} {value}{interval}; " if p.kind == "retest" else ""
        lines.append(f"  {c.criterion}: {statistic}mean change {moved} "
                     f"({ch.confidence:.0%} CI, n={c.n}, {ch.groups} documents, failed {c.failed}/{c.judged})")
        for w in c.worst:
            if w["change"] != 0 or p.kind != "retest":
                lines.append(f"    {w['record_id']}: {w['before']:g} -> {w['after']:g}, replies "
                             f"{json.dumps(w['reply_before'][:60])} -> {json.dumps(w['reply_after'][:60])}")
    return "\n".join(lines)


def changed_batches(probe: Probe, records: Sequence[Record], transforms: Mapping[str, Transform],
                    spec_path: Any) -> tuple[list[list[Any]], int]:
    """The batches a probe judges beside the unchanged records: the same records k times (retest), padded
    copies (pad) or a transform's output (transform); and how many records the transform skipped."""
    if probe.kind == "retest":
        return [list(records)] * probe.k, 0
    if probe.kind == "pad":
        return [padded(probe, records)], 0
    name = probe.transform or ""
    if name not in transforms:
        raise SpecError([f"{spec_path}:{probe.line}: probes: no transform '{name}'. Fix: return it "
                         "from a pytest_judgeopt_transforms hook in a conftest.py"])
    kept, skipped = transformed(probe, records, transforms[name])
    return [kept], skipped


def assess_probe(probe: Probe, spec: Spec, base: Mapping[str, list[Judgment]],
                 afters: Sequence[Mapping[str, list[Judgment]]]) -> dict[str, Any]:
    """Each probed criterion's verdict: agreement with itself across reruns, or the mean change under a transform."""
    if probe.kind == "retest":
        return {c: assess_retest(probe, spec, c, base[c], [a[c] for a in afters]) for c in probe.criteria}
    return {c: assess_shift(probe, spec, c, base[c], afters[0][c]) for c in probe.criteria}
