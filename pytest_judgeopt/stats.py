"""Agreement statistics between judge and human scores.

Undefined results are ``None`` with a human-readable reason, never NaN, so a
degenerate correlation can never pass a threshold check by accident. numpy and scipy are
imported inside the functions that compute, so the result types (public names of the package)
can be imported without paying for scipy's import.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

from .agreement import BUILTIN_METRICS, CORRELATIONS, DEFAULT_OPTIONS, METRICS, MetricOptions

LEVELS = ("pooled", "group")

MIN_PAIRS = 3
# A document's own correlation at level group needs this many scored pairs: with 2, every document
# counts as +1 or -1 with full weight.
MIN_GROUP_PAIRS = 3
# The default of correlation.min_groups: below it no interval (and no verdict resting on one) is given.
# Measured in benchmarks/validity.py: from 8 documents on, the interval covers the truth at its nominal rate.
MIN_GROUPS = 8
JACKKNIFE_BLOCKS = 200  # above this many documents (or samples), the jackknife leaves out blocks of them
FISHER_CLIP = 1 - 1e-12  # a correlation of exactly +-1 has an infinite z: kept finite, the interval stays a point


@dataclass(frozen=True)
class Agreement:
    """A correlation with its interval; ``reason`` explains a ``None`` value, ``interval_reason`` a missing
    interval; ``units`` is the number of documents (samples without groups) the interval rests on."""

    method: str
    level: str
    value: float | None
    low: float | None
    high: float | None
    confidence: float
    n: int
    groups: int
    groups_skipped: int
    reason: str | None
    units: int = 0
    interval_reason: str | None = None


@dataclass(frozen=True)
class PairedDifference:
    """Judge b minus judge a, the interval on the same documents; ``reason`` explains a ``None`` diff."""

    a: float | None
    b: float | None
    diff: float | None
    low: float | None
    high: float | None
    confidence: float
    n: int
    reason: str | None
    units: int = 0
    interval_reason: str | None = None


# --------------------------------------------------------------------------
# validation


@dataclass(frozen=True)
class _Metric:
    """A metric's name with the settings it is computed with (f1's positive class, the kappa's weights)."""

    name: str
    options: MetricOptions = DEFAULT_OPTIONS


def _check_choice(method: str, level: str) -> None:
    """Fail loudly on typos instead of silently computing something else."""
    if method not in BUILTIN_METRICS and method not in CUSTOM:
        raise ValueError(f"unknown method {method!r}; expected one of {BUILTIN_METRICS + tuple(CUSTOM)}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")


def _as_scores(name: str, values: Sequence[float]) -> np.ndarray:
    """NaN or inf inputs would leak NaN into results, so they are the caller's bug."""
    import numpy as np
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite values; drop unparsed pairs first")
    return array


def _prepare(
    method: str,
    level: str,
    judge: Sequence[float],
    human: Sequence[float],
    groups: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
    """Validate once so every public function rejects the same bad inputs."""
    _check_choice(method, level)
    j, h = _as_scores("judge", judge), _as_scores("human", human)
    if len(j) != len(h):
        raise ValueError(f"judge has {len(j)} scores but human has {len(h)}")
    if groups is None:
        if level == "group":
            raise ValueError("level='group' needs groups")
        return j, h, None
    if len(groups) != len(j):
        raise ValueError(f"groups has {len(groups)} labels but there are {len(j)} pairs")
    return j, h, _members(groups)


def _members(groups: Sequence[str]) -> list[np.ndarray]:
    """Row indices per group, in first-seen order so results do not depend on label sorting."""
    import numpy as np
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(groups):
        rows.setdefault(label, []).append(i)
    return [np.array(r, dtype=np.intp) for r in rows.values()]


# --------------------------------------------------------------------------
# point estimates


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _undefined(m: _Metric, judge: np.ndarray, human: np.ndarray) -> str | None:
    """Why the metric has no value on these pairs (agreement.py says per metric), naming the side to fix."""
    from .agreement import undefined_reason

    return undefined_reason(m.name if m.name in METRICS else "spearman", judge, human, m.options)


@contextmanager
def _quiet() -> Iterator[None]:
    """Degenerate inputs are reported as reasons, so scipy's warnings about them are noise."""
    from scipy import stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
        yield


# Metrics added by pytest_judgeopt_metrics hooks: name -> f(judge, human) -> float (NaN if undefined).
CUSTOM: dict[str, Callable[[np.ndarray, np.ndarray], float | None]] = {}


def register_metric(name: str, function: Callable[[np.ndarray, np.ndarray], float | None]) -> None:
    if name in BUILTIN_METRICS:
        raise ValueError(f"{name!r} is built in and cannot be replaced")
    CUSTOM[name] = function


def _scalar(m: _Metric, judge: np.ndarray, human: np.ndarray) -> float:
    """The metric's value (agreement.py, a hook's function), or NaN for numerically degenerate input."""
    from .agreement import value

    with _quiet():
        if m.name in CUSTOM:
            found = CUSTOM[m.name](judge, human)
            return float("nan") if found is None else float(found)
        return value(m.name, judge, human, m.options)


def _pooled(m: _Metric, judge: np.ndarray, human: np.ndarray) -> tuple[float | None, str | None]:
    if len(judge) < MIN_PAIRS:
        return None, f"only {_plural(len(judge), 'pair')} (need at least {MIN_PAIRS})"
    reason = _undefined(m, judge, human)
    if reason:
        return None, reason
    value = _scalar(m, judge, human)
    return (value, None) if math.isfinite(value) else (None, f"{m.name} is undefined on these scores")


def _qualifies(m: _Metric, judge: np.ndarray, human: np.ndarray) -> bool:
    """A group counts only if a within-group value can exist at all."""
    return len(judge) >= MIN_GROUP_PAIRS and _undefined(m, judge, human) is None


def _group_values(
    m: _Metric, judge: np.ndarray, human: np.ndarray, members: list[np.ndarray]
) -> np.ndarray:
    """Per-group correlation, NaN for groups that are too small or constant (skipped)."""
    import numpy as np
    values = np.full(len(members), np.nan)
    for k, rows in enumerate(members):
        if _qualifies(m, judge[rows], human[rows]):
            values[k] = _scalar(m, judge[rows], human[rows])
    return values


def _grouped(
    m: _Metric, judge: np.ndarray, human: np.ndarray, members: list[np.ndarray]
) -> tuple[float | None, int, int, str | None]:
    import numpy as np
    values = _group_values(m, judge, human, members)
    used = int(np.isfinite(values).sum())
    skipped = len(members) - used
    if used == 0:
        return None, 0, skipped, (
            f"no group has varying scores ({_plural(skipped, 'group')} skipped: "
            f"constant scores or fewer than {MIN_GROUP_PAIRS} pairs)"
        )
    return float(np.nanmean(values)), used, skipped, None


def _correlation(
    m: _Metric,
    level: str,
    judge: np.ndarray,
    human: np.ndarray,
    members: list[np.ndarray] | None,
) -> tuple[float | None, int, int, str | None]:
    if len(judge) < MIN_PAIRS or level == "pooled" or members is None:
        value, reason = _pooled(m, judge, human)
        return value, 0, 0, reason
    return _grouped(m, judge, human, members)


def correlation(
    method: str,
    judge: Sequence[float],
    human: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    level: str = "pooled",
    options: MetricOptions | None = None,
) -> tuple[float | None, int, int, str | None]:
    """Judge-human agreement by any metric; returns (value, groups_used, groups_skipped, reason).

    ``level='group'`` is G-Eval's summary-level protocol: the mean of per-document
    values, skipping documents where the metric is undefined (constant scores for a correlation).
    """
    j, h, members = _prepare(method, level, judge, human, groups)
    return _correlation(_Metric(method, options or DEFAULT_OPTIONS), level, j, h, members)


def document_values(method: str, judge: Sequence[float], human: Sequence[float], groups: Sequence[str], *,
                    options: MetricOptions | None = None) -> dict[str, float]:
    """Each document's own value of the metric, for the documents that have one (``MIN_GROUP_PAIRS`` pairs, the
    metric defined): what ``level='group'`` averages, by document, so that two judges can be compared on the
    documents where both have a value (the optimizer's gate, as compare.py does for two sides)."""
    import numpy as np

    j, h, members = _prepare(method, "group", judge, human, groups)
    assert members is not None
    values = _group_values(_Metric(method, options or DEFAULT_OPTIONS), j, h, members)
    labels = list(dict.fromkeys(groups))  # _members' order: first seen
    return {label: float(v) for label, v in zip(labels, values, strict=True) if np.isfinite(v)}


# --------------------------------------------------------------------------
# intervals: a delete-one-document jackknife with a t quantile


def _units(m: _Metric, level: str, judge: np.ndarray, human: np.ndarray,
           members: list[np.ndarray] | None) -> list[np.ndarray]:
    """The independent units an interval rests on: documents (only those with their own correlation at
    level group), or single samples when there are no groups."""
    import numpy as np

    if members is None:
        return [np.array([i], dtype=np.intp) for i in range(len(judge))]
    if level == "group":
        return [rows for rows in members if _qualifies(m, judge[rows], human[rows])]
    return members


def _blocks(units: int, seed: int) -> np.ndarray:
    """Which jackknife block each unit falls in: one block per unit, or, above JACKKNIFE_BLOCKS units,
    that many blocks of whole units (seeded), so the cost stays bounded on large datasets."""
    import numpy as np

    if units <= JACKKNIFE_BLOCKS:
        return np.arange(units)
    order = np.random.default_rng(seed).permutation(units)
    block = np.empty(units, dtype=np.intp)
    block[order] = np.arange(units) % JACKKNIFE_BLOCKS
    return block


Replicate = Callable[["np.ndarray"], float]  # the statistic on the units marked True


def _statistic(m: _Metric, level: str, judge: np.ndarray, human: np.ndarray,
               units: list[np.ndarray]) -> Replicate:
    """The estimate recomputed on a subset of the units (whole documents, or samples)."""
    import numpy as np

    if level == "group":
        per_unit = _group_values(m, judge, human, units)

        def mean_of_kept(keep: np.ndarray) -> float:
            values = per_unit[keep]
            values = values[np.isfinite(values)]
            return float(values.mean()) if len(values) else math.nan

        return mean_of_kept
    unit_of_row = np.empty(len(judge), dtype=np.intp)
    for k, rows in enumerate(units):
        unit_of_row[rows] = k

    def pooled_over_kept(keep: np.ndarray) -> float:
        rows = keep[unit_of_row]
        value, _ = _pooled(m, judge[rows], human[rows])
        return math.nan if value is None else value

    return pooled_over_kept


def _fisher(method: str, level: str) -> bool:
    """Correlations pooled over samples are bounded by +-1 and skewed near the bounds: their interval is
    made on Fisher's z scale. A per-document mean is made on its own scale (the t-interval over the
    per-document values), and so are the other metrics (kappa, alpha, accuracy, errors), whose sampling
    distribution is not a correlation's, and a metric added by a hook, whose range is unknown."""
    return level == "pooled" and method in CORRELATIONS


def _range(method: str) -> tuple[float | None, float | None]:
    """Where the metric's values live (an interval is clipped to it); unknown for a hook's metric."""
    found = METRICS.get(method)
    return (None, None) if found is None else (found.low, found.high)


def _jackknife(estimate: float, replicate: Replicate, units: int, confidence: float, seed: int, *,
               fisher: bool, bounds: tuple[float | None, float | None]) -> tuple[float | None, float | None, str | None]:
    """Delete-one-unit jackknife: the standard error from the estimates without each unit (or block of
    units), the interval estimate +- t(k-1) * se, so that a few documents give a wide interval, as they
    should. For a mean of per-document values this is exactly the t-interval over those values.

    An estimate that becomes undefined when one document is left out rests on that document alone: no
    interval, with that reason.
    """
    import numpy as np
    from scipy import stats

    block = _blocks(units, seed)
    k = int(block.max()) + 1
    values = np.array([replicate(block != b) for b in range(k)])
    undefined = int((~np.isfinite(values)).sum())
    if undefined:
        return None, None, (f"the estimate is undefined without {_plural(undefined, 'document')} of {k}: it rests on "
                            "too few documents with varying scores for an interval")

    def forward(x: np.ndarray | float) -> np.ndarray:
        return np.arctanh(np.clip(x, -FISHER_CLIP, FISHER_CLIP)) if fisher else np.asarray(x, dtype=float)

    z = forward(values)
    se = math.sqrt((k - 1) / k * float(((z - z.mean()) ** 2).sum()))
    t = float(stats.t.ppf(0.5 + confidence / 2, k - 1))
    center = float(forward(estimate))
    low, high = center - t * se, center + t * se
    if fisher:  # an estimate of exactly +-1 was clipped to stay finite on the z scale: it stays inside
        low, high = min(math.tanh(low), estimate), max(math.tanh(high), estimate)
    if bounds[0] is not None:
        low = max(low, bounds[0])
    if bounds[1] is not None:
        high = min(high, bounds[1])
    return float(low), float(high), None


def _interval(m: _Metric, level: str, estimate: float, j: np.ndarray, h: np.ndarray,
              members: list[np.ndarray] | None, *, confidence: float, min_groups: int, seed: int,
              difference_of: np.ndarray | None = None) -> tuple[float | None, float | None, int, str | None]:
    """(low, high, units, reason): the interval, the documents (or samples) it rests on, and why it is
    missing when it is. ``difference_of`` is judge a's scores when the estimate is corr(b) - corr(a)."""
    if difference_of is None:
        units = _units(m, level, j, h, members)
        counted = len(units)
    else:  # each judge's estimate over its own documents, as the point estimate; counted where both have one
        units = _units(m, "pooled", j, h, members)
        counted = len(units) if level == "pooled" else sum(
            _qualifies(m, j[rows], h[rows]) and _qualifies(m, difference_of[rows], h[rows]) for rows in units)
    if counted < min_groups:
        word = "samples" if members is None else "documents"
        return None, None, counted, (f"too few {word}: {counted} (an interval needs at least {min_groups}; "
                                     "correlation.min_groups)")
    replicate = _statistic(m, level, j, h, units)
    bounds = _range(m.name)
    if difference_of is not None:
        of_a = _statistic(m, level, difference_of, h, units)
        of_b = replicate

        def replicate(keep: np.ndarray) -> float:
            return of_b(keep) - of_a(keep)

        width = None if bounds[0] is None or bounds[1] is None else bounds[1] - bounds[0]
        bounds = (None, None) if width is None else (-width, width)
    fisher = difference_of is None and _fisher(m.name, level)
    low, high, reason = _jackknife(estimate, replicate, len(units), confidence, seed, fisher=fisher, bounds=bounds)
    return low, high, counted, reason


def document_interval(estimate: float, replicate: Replicate, unit_count: int, *, confidence: float, min_groups: int,
                      seed: int, bounds: tuple[float | None, float | None] = (None, None),
                      grouped: bool = True) -> tuple[float | None, float | None, str | None]:
    """The same delete-one-document jackknife as every other interval, for a statistic another module defines
    (the annotators' leave-one-out agreement): ``replicate(keep)`` recomputes it on the documents (samples
    without groups) marked True. Below ``min_groups`` units there is no interval, with that reason."""
    if unit_count < min_groups:
        word = "documents" if grouped else "samples"
        return None, None, (f"too few {word}: {unit_count} (an interval needs at least {min_groups}; "
                            "correlation.min_groups)")
    return _jackknife(estimate, replicate, unit_count, confidence, seed, fisher=False, bounds=bounds)


def metric_value(method: str, judge: Sequence[float], human: Sequence[float],
                 options: MetricOptions | None = None) -> tuple[float | None, str | None]:
    """One metric on paired scores, pooled: (value, reason), the value None with the reason when undefined."""
    j, h = _as_scores("judge", judge), _as_scores("human", human)
    return _pooled(_Metric(method, options or DEFAULT_OPTIONS), j, h)


def _pairs_in_used_groups(m: _Metric, judge: np.ndarray, human: np.ndarray, members: list[np.ndarray]) -> int:
    return sum(len(rows) for rows in members if _qualifies(m, judge[rows], human[rows]))


def agreement(
    method: str,
    judge: Sequence[float],
    human: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    level: str = "pooled",
    confidence: float = 0.95,
    min_groups: int = MIN_GROUPS,
    seed: int = 0,
    options: MetricOptions | None = None,
) -> Agreement:
    """Point estimate plus an interval that leaves out whole documents (a delete-one-document jackknife).

    Documents are the units because samples from one source document are not independent; treating
    samples as units would make the interval too narrow. Below ``min_groups`` documents (samples
    without groups) there is no interval, with that reason in ``interval_reason``.
    """
    j, h, members = _prepare(method, level, judge, human, groups)
    m = _Metric(method, options or DEFAULT_OPTIONS)
    value, used, skipped, reason = _correlation(m, level, j, h, members)
    low = high = None
    units = 0
    interval_reason = None
    if value is not None:
        low, high, units, interval_reason = _interval(m, level, value, j, h, members, confidence=confidence,
                                                      min_groups=min_groups, seed=seed)
    n = len(j) if level == "pooled" or members is None else _pairs_in_used_groups(m, j, h, members)
    return Agreement(method, level, value, low, high, confidence, n, used, skipped, reason, units, interval_reason)


def paired_difference(
    method: str,
    judge_a: Sequence[float],
    judge_b: Sequence[float],
    human: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    level: str = "pooled",
    confidence: float = 0.95,
    min_groups: int = MIN_GROUPS,
    seed: int = 0,
    options: MetricOptions | None = None,
) -> PairedDifference:
    """Interval of corr(b) - corr(a), each jackknife replicate leaving the same document out of both,
    so the noise the two judges share cancels."""
    ja, h, members = _prepare(method, level, judge_a, human, groups)
    jb, _, _ = _prepare(method, level, judge_b, human, groups)
    m = _Metric(method, options or DEFAULT_OPTIONS)
    a, _, _, reason_a = _correlation(m, level, ja, h, members)
    b, _, _, reason_b = _correlation(m, level, jb, h, members)
    if a is None or b is None:
        named = (("judge_a", reason_a), ("judge_b", reason_b))
        reasons = [f"{name}: {reason}" for name, reason in named if reason]
        return PairedDifference(a, b, None, None, None, confidence, len(h), "; ".join(reasons))
    low, high, units, interval_reason = _interval(m, level, b - a, jb, h, members, confidence=confidence,
                                                  min_groups=min_groups, seed=seed, difference_of=ja)
    return PairedDifference(a, b, b - a, low, high, confidence, len(h), None, units, interval_reason)


@dataclass(frozen=True)
class MeanChange:
    """The mean of ``after - before`` over paired samples, with its interval; ``reason`` explains a ``None``
    value or a missing interval. ``groups`` is the number of documents left out in turn (0 when the pairs
    themselves are)."""

    value: float | None
    low: float | None
    high: float | None
    confidence: float
    n: int
    groups: int
    reason: str | None


def mean_change(
    before: Sequence[float],
    after: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    confidence: float = 0.95,
    min_groups: int = MIN_GROUPS,
    seed: int = 0,
) -> MeanChange:
    """Paired mean change (after minus before) with the document jackknife of the other intervals.

    Without one document the estimate is the pooled mean of the remaining pairs (the sum of their changes
    over their number), so a long document weighs by its pairs, as in the point estimate. Below
    ``min_groups`` documents (pairs without groups) there is no interval, with that reason.
    """
    import numpy as np

    b, a = _as_scores("before", before), _as_scores("after", after)
    if len(b) != len(a):
        raise ValueError(f"before has {len(b)} scores but after has {len(a)}")
    if len(b) == 0:
        return MeanChange(None, None, None, confidence, 0, 0, "no pairs: every judgment failed or nothing was judged")
    change = a - b
    value = float(change.mean())
    if groups is None:
        sums, counts, used = change, np.ones(len(change)), 0
    else:
        if len(groups) != len(change):
            raise ValueError(f"groups has {len(groups)} labels but there are {len(change)} pairs")
        members = _members(groups)
        sums = np.array([change[rows].sum() for rows in members])
        counts = np.array([len(rows) for rows in members], dtype=float)
        used = len(members)
    units = len(sums)
    if units < min_groups:
        word = "pairs" if groups is None else "documents"
        return MeanChange(value, None, None, confidence, len(change), used,
                          f"too few {word}: {units} (an interval needs at least {min_groups}; correlation.min_groups)")

    def pooled_mean(keep: np.ndarray) -> float:
        return float(sums[keep].sum() / counts[keep].sum())

    low, high, reason = _jackknife(value, pooled_mean, units, confidence, seed, fisher=False, bounds=(None, None))
    return MeanChange(value, low, high, confidence, len(change), used, reason)


# --------------------------------------------------------------------------
# helpers for reporting


def mae(judge: Sequence[float], human: Sequence[float]) -> float:
    """Mean absolute error, which catches a judge that ranks well but is offset in scale."""
    import numpy as np
    j, h = _as_scores("judge", judge), _as_scores("human", human)
    if len(j) != len(h):
        raise ValueError(f"judge has {len(j)} scores but human has {len(h)}")
    if len(j) == 0:
        raise ValueError("mae of no pairs is undefined")
    return float(np.mean(np.abs(j - h)))

