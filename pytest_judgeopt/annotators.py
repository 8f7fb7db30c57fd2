"""Several annotators per item: the human score they make together, their own agreement, and the
alternative annotator test.

With ``dataset.annotators`` each record holds every annotator's score per criterion. The humans' own
agreement is the ceiling a judge is held to: each annotator against the aggregate of the others
(leave-one-out), averaged over annotators, beside the judge against the very same leave-one-out
references, so the two numbers answer the same question ("how well does one rater predict the rest?").

The alternative annotator test (Calderon, Reichart and Dror, ACL 2025, "The Alternative Annotator Test
for LLM-as-a-Judge", arXiv 2501.10970) asks, per annotator j, whether the judge represents the other
annotators at least as well as j does, minus a cost-benefit margin epsilon: per item, the judge's
alignment with the others against j's (accuracy for labels, negative RMSE for scores); the judge's
advantage rho_f - rho_h over the items is tested one-sided against -epsilon with a paired t-test;
the p-values are corrected across annotators by Benjamini-Yekutieli; the judge passes when it wins
against at least half of the annotators. Where ``dataset.group`` is set, the per-item differences are
averaged per document and the test's units are documents (items of one document are not independent:
the reason every interval here leaves out whole documents).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .agreement import CATEGORICAL, METRICS, MetricOptions

if TYPE_CHECKING:
    import numpy as np

AGGREGATES = ("mean", "median", "majority")
MIN_ANNOTATORS = 3  # the paper: with two, the test only asks which of the two the judge resembles more


# --------------------------------------------------------------------------
# reading and aggregating


def read_ratings(holder: Any, criterion: str, scale: tuple[float, float]) -> tuple[tuple[float | None, ...] | None, str | None]:
    """One record's ratings of a criterion from the annotators' field: (ratings, None), (None, None) when
    nobody rated it, or (None, what is wrong)."""
    if not isinstance(holder, Mapping):
        return None, f"the annotators' field holds {type(holder).__name__}, not {{criterion: [scores]}}"
    found = holder.get(criterion)
    if found is None:
        return None, None
    if not isinstance(found, list):
        return None, f"'{criterion}' holds {type(found).__name__}, not a list of the annotators' scores"
    out: list[float | None] = []
    for k, value in enumerate(found):
        if value is None or value == "":
            out.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None, f"annotator {k + 1}'s score {value!r} is not a number"
        if not scale[0] <= value <= scale[1]:
            return None, f"annotator {k + 1}'s score {value:g} is outside the scale [{scale[0]:g}, {scale[1]:g}]"
        out.append(float(value))
    if all(v is None for v in out):
        return None, None
    return tuple(out), None


def aggregate(ratings: Sequence[float | None], how: str = "mean") -> float:
    """The human score of one item from its annotators' (None: did not rate).

    majority is the most frequent label (scores rounded to labels); a tie goes to the tied label nearest
    the median of all the ratings, and the lower one when two are equally near.
    """
    given = [v for v in ratings if v is not None]
    if not given:
        raise ValueError("no annotator rated this item")
    if how == "mean":
        return statistics.fmean(given)
    if how == "median":
        return float(statistics.median(given))
    if how != "majority":
        raise ValueError(f"unknown aggregate {how!r}; expected one of {AGGREGATES}")
    counts: dict[int, int] = {}
    for v in given:
        counts[round(v)] = counts.get(round(v), 0) + 1
    top = max(counts.values())
    tied = sorted(label for label, count in counts.items() if count == top)
    middle = statistics.median(given)
    return float(min(tied, key=lambda label: (abs(label - middle), label)))


def _aggregate_rows(ratings: np.ndarray, how: str) -> np.ndarray:
    """Per row, the aggregate of the ratings given (NaN where none was)."""
    import numpy as np

    out = np.full(len(ratings), np.nan)
    for i, row in enumerate(ratings):
        given = row[~np.isnan(row)]
        if len(given):
            out[i] = aggregate(given.tolist(), how)
    return out


# --------------------------------------------------------------------------
# the humans' own agreement, and the judge's with the same references


@dataclass(frozen=True)
class AnnotatorResult:
    """One annotator left out: their agreement with the others', the judge's with the same reference, and
    (with gate: alt_test) the test against them."""

    annotator: int  # 1-based, in the order of the data's lists
    items: int
    human: float | None
    judge: float | None
    reason: str | None = None
    # alt_test
    units: int = 0
    judge_rate: float | None = None  # rho_f: share of items where the judge aligns with the others at least as well
    human_rate: float | None = None  # rho_h: the same for the annotator
    p_value: float | None = None
    p_adjusted: float | None = None
    won: bool | None = None
    test_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"annotator": self.annotator, "items": self.items, "human": self.human, "judge": self.judge,
                "reason": self.reason, "units": self.units, "judge_rate": self.judge_rate, "human_rate": self.human_rate,
                "advantage": None if self.judge_rate is None or self.human_rate is None else self.judge_rate - self.human_rate,
                "p_value": self.p_value, "p_adjusted": self.p_adjusted, "won": self.won, "test_reason": self.test_reason}


@dataclass(frozen=True)
class AltTest:
    """The alternative annotator test's outcome: per annotator in ``Humans.annotators``, and overall."""

    epsilon: float
    alpha: float
    scoring: str  # "accuracy" (labels) or "-rmse" (scores)
    winning_rate: float | None
    advantage: float | None  # the average advantage probability (mean rho_f over annotators)
    passed: bool
    reason: str | None  # why the test could not be made, or why it failed

    def to_json(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "alpha": self.alpha, "scoring": self.scoring, "correction": "benjamini-yekutieli",
                "winning_rate": self.winning_rate, "advantage": self.advantage, "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True)
class Humans:
    """The annotators' leave-one-out agreement (``human``) beside the judge's with the same references
    (``judge``), each averaged over annotators, with document-jackknife intervals."""

    method: str
    aggregate: str
    annotators: tuple[AnnotatorResult, ...]
    human: float | None
    human_low: float | None
    human_high: float | None
    judge: float | None
    judge_low: float | None
    judge_high: float | None
    items: int
    units: int
    reason: str | None = None  # why the humans' agreement is undefined
    interval_reason: str | None = None
    alt_test: AltTest | None = None
    confidence: float = 0.95
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.annotators)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "aggregate": self.aggregate, "annotators": len(self.annotators),
                "items": self.items, "units": self.units, "confidence": self.confidence,
                "human": self.human, "human_low": self.human_low, "human_high": self.human_high,
                "judge": self.judge, "judge_low": self.judge_low, "judge_high": self.judge_high,
                "reason": self.reason, "interval_reason": self.interval_reason,
                "per_annotator": [a.to_json() for a in self.annotators],
                "alt_test": None if self.alt_test is None else self.alt_test.to_json()}


def matrix(ratings: Sequence[Sequence[float | None]]) -> np.ndarray:
    """Items x annotators with NaN where an annotator did not rate (lists of unequal length are padded)."""
    import numpy as np

    width = max((len(r) for r in ratings), default=0)
    out = np.full((len(ratings), width), np.nan)
    for i, row in enumerate(ratings):
        for k, v in enumerate(row):
            if v is not None:
                out[i, k] = v
    return out


def _references(ratings: np.ndarray, how: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per annotator j: (rows where j and at least one other rated, the others' aggregate on every row)."""
    import numpy as np

    out = []
    for j in range(ratings.shape[1]):
        others = np.delete(ratings, j, axis=1)
        reference = _aggregate_rows(others, how)
        rows = ~np.isnan(ratings[:, j]) & ~np.isnan(reference)
        out.append((rows, reference))
    return out


def _unit_index(groups: Sequence[str] | None, n: int) -> tuple[np.ndarray, int]:
    """Each item's unit (its document, or itself without groups) and the number of units."""
    import numpy as np

    if groups is None:
        return np.arange(n), n
    first: dict[str, int] = {}
    index = np.array([first.setdefault(g, len(first)) for g in groups], dtype=np.intp)
    return index, len(first)


def humans_agreement(method: str, judge: Sequence[float], ratings: Sequence[Sequence[float | None]], *,
                     groups: Sequence[str] | None = None, aggregate_by: str = "mean",
                     options: MetricOptions | None = None, confidence: float = 0.95, min_groups: int = 8,
                     seed: int = 0) -> Humans:
    """Leave-one-out agreement of the annotators, and of the judge with the same references.

    For each annotator j, over the items j and at least one other annotator rated: the metric of j's scores
    against the others' aggregate, and of the judge's against that same aggregate. Both are averaged over
    the annotators where j's own value is defined, so the two averages cover the same comparisons. The
    intervals leave out whole documents (samples without groups), as every interval here does.
    """
    import numpy as np

    from .stats import document_interval, metric_value

    scores = np.asarray(judge, dtype=float)
    table = matrix(ratings)
    if table.shape[0] != len(scores):
        raise ValueError(f"{len(scores)} judge scores but {table.shape[0]} items rated")
    references = _references(table, aggregate_by)
    unit_of, unit_count = _unit_index(groups, len(scores))

    def per_annotator(keep_rows: np.ndarray) -> list[tuple[float | None, float | None, int, str | None]]:
        out = []
        for j, (rows, reference) in enumerate(references):
            use = rows & keep_rows
            human, why = metric_value(method, table[use, j], reference[use], options)
            machine, _ = metric_value(method, scores[use], reference[use], options)
            out.append((human, machine, int(use.sum()), why))
        return out

    def averaged(found: list[tuple[float | None, float | None, int, str | None]]) -> tuple[float, float]:
        pairs = [(h, m) for h, m, _, _ in found if h is not None and m is not None]
        if not pairs:
            return math.nan, math.nan
        return float(np.mean([h for h, _ in pairs])), float(np.mean([m for _, m in pairs]))

    everything = np.ones(len(scores), dtype=bool)
    found = per_annotator(everything)
    results = tuple(AnnotatorResult(j + 1, n, h, m, why) for j, (h, m, n, why) in enumerate(found))
    items = int(np.any(np.stack([rows for rows, _ in references]), axis=0).sum()) if references else 0
    used_units = len(set(unit_of[np.any(np.stack([rows for rows, _ in references]), axis=0)].tolist())) if references else 0
    human, machine = averaged(found)
    if table.shape[1] < 2 or not math.isfinite(human):
        reasons = "; ".join(f"annotator {a.annotator}: {a.reason}" for a in results if a.reason)
        why = ("fewer than 2 annotators: there is no one to agree with" if table.shape[1] < 2
               else f"no annotator's leave-one-out {method} is defined ({reasons or 'no item has two ratings'})")
        return Humans(method, aggregate_by, results, None, None, None, None, None, None, items, used_units, why,
                      confidence=confidence)
    found_range = METRICS.get(method)
    bounds = (None, None) if found_range is None else (found_range.low, found_range.high)
    intervals = []
    for pick in (0, 1):
        def replicate(keep: np.ndarray, pick: int = pick) -> float:
            return averaged(per_annotator(keep[unit_of]))[pick]

        intervals.append(document_interval((human, machine)[pick], replicate, unit_count, confidence=confidence,
                                           min_groups=min_groups, seed=seed, bounds=bounds, grouped=groups is not None))
    (h_low, h_high, reason), (j_low, j_high, _) = intervals
    return Humans(method, aggregate_by, results, human, h_low, h_high, machine, j_low, j_high, items, used_units,
                  None, reason, confidence=confidence)


# --------------------------------------------------------------------------
# the alternative annotator test


def scoring_for(method: str, options: MetricOptions | None = None) -> str:
    """The paper's alignment score: accuracy for labels, negative RMSE for scores."""
    if method in CATEGORICAL or (method == "krippendorff_alpha" and options is not None and options.alpha_level == "nominal"):
        return "accuracy"
    return "-rmse"


def _alignment(value: np.ndarray, others: np.ndarray, scoring: str) -> np.ndarray:
    """Per item, how well one rating represents the other annotators' (NaN ignored)."""
    import numpy as np

    with np.errstate(invalid="ignore"):
        if scoring == "accuracy":
            same = np.where(np.isnan(others), np.nan, (np.rint(others) == np.rint(value)[:, None]).astype(float))
            return np.nanmean(same, axis=1)
        return -np.sqrt(np.nanmean((others - value[:, None]) ** 2, axis=1))


def _one_sided_p(x: np.ndarray) -> float:
    """p of a one-sided t-test that the mean of x is above 0; a constant x is decided by its sign."""
    import numpy as np
    from scipy import stats

    if np.all(x == x[0]):
        return 0.0 if x[0] > 0 else 1.0
    return float(stats.ttest_1samp(x, 0.0, alternative="greater").pvalue)


def alt_test(judge: Sequence[float], ratings: Sequence[Sequence[float | None]], *, method: str = "spearman",
             options: MetricOptions | None = None, epsilon: float = 0.1, alpha: float = 0.05, min_items: int = 30,
             groups: Sequence[str] | None = None, annotators: Sequence[AnnotatorResult] | None = None,
             ) -> tuple[AltTest, tuple[AnnotatorResult, ...]]:
    """The alternative annotator test; returns the outcome and each annotator's result (``annotators``, if given,
    are the leave-one-out results to extend with the test's numbers).

    Per annotator j, on the items j and at least one other annotator rated: W_f = [S(judge) >= S(j)] and
    W_h = [S(j) >= S(judge)], where S is the alignment with the other annotators (a tie counts for both);
    the test is H0: mean(W_f - W_h) <= -epsilon against H1: > -epsilon, one-sided, paired per item (per
    document with groups). Benjamini-Yekutieli across annotators at ``alpha``; the judge wins against j when
    the adjusted p is at most alpha, and passes with a winning rate of at least 0.5.
    """
    import numpy as np
    from scipy import stats

    scores = np.asarray(judge, dtype=float)
    table = matrix(ratings)
    scoring = scoring_for(method, options)
    m = table.shape[1]
    rated = [int((~np.isnan(table[:, j])).sum()) for j in range(m)]
    active = [j for j in range(m) if rated[j]]
    base = list(annotators) if annotators is not None else [AnnotatorResult(j + 1, rated[j], None, None) for j in range(m)]
    if len(active) < MIN_ANNOTATORS:
        why = (f"the alternative annotator test needs at least {MIN_ANNOTATORS} annotators, and "
               f"{len(active)} rated these items (with two, it only asks which of them the judge resembles more)")
        return AltTest(epsilon, alpha, scoring, None, None, False, why), tuple(base)
    unit_of, _ = _unit_index(groups, len(scores))
    pvalues: dict[int, float] = {}
    extended = list(base)
    short = []
    for j in active:
        others = np.delete(table, j, axis=1)
        rows = ~np.isnan(table[:, j]) & np.any(~np.isnan(others), axis=1)
        s_judge = _alignment(scores[rows], others[rows], scoring)
        s_human = _alignment(table[rows, j], others[rows], scoring)
        w_f = (s_judge >= s_human).astype(float)
        w_h = (s_human >= s_judge).astype(float)
        diff = w_f - w_h + epsilon
        units = unit_of[rows]
        labels = np.unique(units)
        per_unit = np.array([diff[units == u].mean() for u in labels])
        item = replace_test(extended[j], units=len(labels), judge_rate=float(w_f.mean()) if len(w_f) else None,
                            human_rate=float(w_h.mean()) if len(w_h) else None)
        if len(labels) < min_items:
            word = "documents" if groups is not None else "items"
            why = (f"{len(labels)} {word} rated by annotator {j + 1} and another, fewer than the {min_items} the test "
                   f"needs (correlation.min_items; the paper advises 50-100 items)")
            short.append(why)
            extended[j] = replace_test(item, test_reason=why, won=False)
            continue
        pvalues[j] = _one_sided_p(per_unit)
        extended[j] = replace_test(item, p_value=pvalues[j])
    if short:
        return AltTest(epsilon, alpha, scoring, None, None, False, "; ".join(short)), tuple(extended)
    ordered = sorted(pvalues)
    adjusted = stats.false_discovery_control([pvalues[j] for j in ordered], method="by")
    wins = 0
    for j, p_adj in zip(ordered, adjusted, strict=True):
        won = bool(p_adj <= alpha)
        wins += won
        extended[j] = replace_test(extended[j], p_adjusted=float(p_adj), won=won)
    rate = wins / len(ordered)
    rates = [r for j in ordered if (r := extended[j].judge_rate) is not None]
    advantage = float(np.mean(rates)) if rates else None
    passed = rate >= 0.5
    lost = None if passed else (f"the judge wins against {wins} of {len(ordered)} annotators (winning rate {rate:.2f}, "
                                f"needs 0.5; epsilon {epsilon:g}, Benjamini-Yekutieli at {alpha:g})")
    return AltTest(epsilon, alpha, scoring, rate, advantage, passed, lost), tuple(extended)


def replace_test(result: AnnotatorResult, **changes: Any) -> AnnotatorResult:
    from dataclasses import replace

    return replace(result, **changes)


# --------------------------------------------------------------------------
# the verdict


def measure(method: str, gate: str, judge: Sequence[float], ratings: Sequence[Sequence[float | None]], *,
            groups: Sequence[str] | None, aggregate_by: str, options: MetricOptions | None, confidence: float,
            min_groups: int, seed: int, epsilon: float, alpha: float, min_items: int) -> Humans:
    """The humans' agreement, and the alternative annotator test when the gate is alt_test."""
    from dataclasses import replace

    found = humans_agreement(method, judge, ratings, groups=groups, aggregate_by=aggregate_by, options=options,
                             confidence=confidence, min_groups=min_groups, seed=seed)
    if gate != "alt_test":
        return found
    test, per = alt_test(judge, ratings, method=method, options=options, epsilon=epsilon, alpha=alpha, min_items=min_items,
                         groups=groups, annotators=found.annotators)
    return replace(found, annotators=per, alt_test=test)


def reasons(humans: Humans | None, margin: float | None, gate: str) -> list[str]:
    """Why the item fails on the humans: below their own agreement (``min_rho: humans``), or the alternative
    annotator test lost or not possible."""
    out = []
    if margin is not None:
        if humans is None or humans.human is None:
            out.append("min_rho: humans needs the annotators' own agreement, and it is undefined: "
                       + (humans.reason if humans is not None and humans.reason else "no annotators' scores"))
        else:
            bar = humans.human + margin
            shown = f"the humans' {humans.human:.3f}" + (f" {margin:+.2f}" if margin else "")
            if gate == "lower_bound":
                if humans.judge_low is None:
                    out.append(f"the lower-bound gate needs an interval and there is none: {humans.interval_reason}")
                elif humans.judge_low < bar:
                    out.append(f"the interval's lower end {humans.judge_low:.3f} of the judge's leave-one-out {humans.method} "
                               f"is below {shown} = {bar:.3f} (min_rho: humans)")
            elif humans.judge is None or humans.judge < bar:
                value = "undefined" if humans.judge is None else f"{humans.judge:.3f}"
                out.append(f"the judge's leave-one-out {humans.method} {value} is below {shown} = {bar:.3f} "
                           "(min_rho: humans; both against the same leave-one-out references)")
    if gate == "alt_test":
        test = humans.alt_test if humans is not None else None
        if test is None:
            out.append("gate: alt_test needs the annotators' scores (dataset.annotators)")
        elif not test.passed:
            out.append(f"the alternative annotator test fails: {test.reason}")
    return out
