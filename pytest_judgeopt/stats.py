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
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

from .spec import BUILTIN_METRICS

LEVELS = ("pooled", "group")

MIN_PAIRS = 3
MIN_GROUP_PAIRS = 2
BOOTSTRAP_CELLS = 2_000_000  # resampled pairs held at once by the bootstrap (times 8 bytes, per array)

Statistic = Callable[["np.ndarray"], "np.ndarray"]


@dataclass(frozen=True)
class Agreement:
    """A correlation with its bootstrap interval; ``reason`` explains a ``None`` value."""

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
    resamples_dropped: int = 0


@dataclass(frozen=True)
class PairedDifference:
    """Judge b minus judge a on the same resamples; ``reason`` explains a ``None`` diff."""

    a: float | None
    b: float | None
    diff: float | None
    low: float | None
    high: float | None
    confidence: float
    n: int
    reason: str | None
    resamples_dropped: int = 0


# --------------------------------------------------------------------------
# validation


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


def _constant_reason(judge: np.ndarray, human: np.ndarray) -> str | None:
    """Name the constant side, since a constant judge and constant humans need different fixes."""
    import numpy as np
    reasons = [
        f"{name} scores are constant (all {values[0]:g})"
        for name, values in (("judge", judge), ("human", human))
        if np.all(values == values[0])
    ]
    return "; ".join(reasons) or None


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


def _scalar(method: str, judge: np.ndarray, human: np.ndarray) -> float:
    """scipy value, or NaN for numerically degenerate input."""
    from scipy import stats
    with _quiet():
        if method in CUSTOM:
            value = CUSTOM[method](judge, human)
            return float("nan") if value is None else float(value)
        scalar = {"spearman": stats.spearmanr, "kendall": stats.kendalltau, "pearson": stats.pearsonr}[method]
        return float(scalar(judge, human).statistic)


def _pooled(method: str, judge: np.ndarray, human: np.ndarray) -> tuple[float | None, str | None]:
    if len(judge) < MIN_PAIRS:
        return None, f"only {_plural(len(judge), 'pair')} (need at least {MIN_PAIRS})"
    reason = _constant_reason(judge, human)
    if reason:
        return None, reason
    value = _scalar(method, judge, human)
    return (value, None) if math.isfinite(value) else (None, f"{method} correlation is undefined")


def _qualifies(judge: np.ndarray, human: np.ndarray) -> bool:
    """A group counts only if a within-group correlation can exist at all."""
    return len(judge) >= MIN_GROUP_PAIRS and _constant_reason(judge, human) is None


def _group_values(
    method: str, judge: np.ndarray, human: np.ndarray, members: list[np.ndarray]
) -> np.ndarray:
    """Per-group correlation, NaN for groups that are too small or constant (skipped)."""
    import numpy as np
    values = np.full(len(members), np.nan)
    for k, rows in enumerate(members):
        if _qualifies(judge[rows], human[rows]):
            values[k] = _scalar(method, judge[rows], human[rows])
    return values


def _grouped(
    method: str, judge: np.ndarray, human: np.ndarray, members: list[np.ndarray]
) -> tuple[float | None, int, int, str | None]:
    import numpy as np
    values = _group_values(method, judge, human, members)
    used = int(np.isfinite(values).sum())
    skipped = len(members) - used
    if used == 0:
        return None, 0, skipped, (
            f"no group has varying scores ({_plural(skipped, 'group')} skipped: "
            f"constant scores or fewer than {MIN_GROUP_PAIRS} pairs)"
        )
    return float(np.nanmean(values)), used, skipped, None


def _correlation(
    method: str,
    level: str,
    judge: np.ndarray,
    human: np.ndarray,
    members: list[np.ndarray] | None,
) -> tuple[float | None, int, int, str | None]:
    if len(judge) < MIN_PAIRS or level == "pooled" or members is None:
        value, reason = _pooled(method, judge, human)
        return value, 0, 0, reason
    return _grouped(method, judge, human, members)


def correlation(
    method: str,
    judge: Sequence[float],
    human: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    level: str = "pooled",
) -> tuple[float | None, int, int, str | None]:
    """Judge-human correlation; returns (value, groups_used, groups_skipped, reason).

    ``level='group'`` is G-Eval's summary-level protocol: the mean of per-document
    correlations, skipping documents where either side is constant.
    """
    j, h, members = _prepare(method, level, judge, human, groups)
    return _correlation(method, level, j, h, members)


# --------------------------------------------------------------------------
# bootstrap


def _pooled_batch(method: str, judge: np.ndarray, human: np.ndarray) -> np.ndarray:
    """Row-wise correlations of (resamples, n) arrays; NaN where a row is constant."""
    import numpy as np
    from scipy import stats
    if method in CUSTOM:
        return np.array([_scalar(method, j, h) for j, h in zip(judge, human, strict=True)], dtype=float)
    if method == "spearman":
        judge, human = stats.rankdata(judge, axis=-1), stats.rankdata(human, axis=-1)
    row_wise = stats.kendalltau if method == "kendall" else stats.pearsonr
    with _quiet():
        return np.asarray(row_wise(judge, human, axis=-1).statistic, dtype=float)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def _mean_defined(values: np.ndarray) -> np.ndarray:
    """Row means over non-NaN entries, NaN for all-NaN rows, without nanmean's warning."""
    import numpy as np
    defined = np.isfinite(values)
    counts = defined.sum(axis=-1)
    sums = np.where(defined, values, 0.0).sum(axis=-1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _statistic(
    method: str,
    level: str,
    judge: np.ndarray,
    human: np.ndarray,
    members: list[np.ndarray] | None,
) -> tuple[int, Statistic]:
    """Number of resampling units and the statistic over a (resamples, units) index array.

    With groups, units are whole groups (cluster bootstrap). At level 'group' a group's
    correlation depends only on its own rows, so it is computed once and reused: a
    group drawn twice counts twice, as separate clusters do.
    """
    import numpy as np
    if members is None:
        return len(judge), lambda idx: _pooled_batch(method, judge[idx], human[idx])
    if level == "group":
        per_group = _group_values(method, judge, human, members)
        return len(members), lambda idx: _mean_defined(per_group[idx])
    if len({len(rows) for rows in members}) == 1:
        table = np.stack(members)  # equal-sized groups: every resample is a rectangular row set

        def pooled_over_equal_groups(idx: np.ndarray) -> np.ndarray:
            rows = table[idx].reshape(len(idx), -1)
            return _pooled_batch(method, judge[rows], human[rows])

        return len(members), pooled_over_equal_groups

    def pooled_over_groups(idx: np.ndarray) -> np.ndarray:
        rows = (np.concatenate([members[g] for g in draw]) for draw in idx)
        return np.array([_nan_if_none(_pooled(method, judge[r], human[r])[0]) for r in rows])

    return len(members), pooled_over_groups


def _interval(
    units: int, statistic: Statistic, confidence: float, resamples: int, seed: int, rows: int | None = None
) -> tuple[float | None, float | None, int]:
    """Percentile interval over the defined resamples: (low, high, resamples_dropped).

    Undefined resamples (e.g. a draw with constant scores) are dropped rather than
    counted as any value; if more than half are undefined the interval is not trusted.
    Resamples are drawn in batches of at most BOOTSTRAP_CELLS resampled ``rows``, so memory stays
    bounded on large datasets (all at once, 100,000 pairs took gigabytes); the draws, and so
    the interval, are the same as in one batch.
    """
    import numpy as np
    from scipy import stats
    if resamples == 0 or units < 2:
        return None, None, 0
    data = (np.arange(units),)

    def batched(idx: np.ndarray, axis: int = -1) -> np.ndarray:  # scipy always passes axis=-1
        return statistic(np.asarray(idx, dtype=np.intp))

    options = {"vectorized": True, "confidence_level": confidence, "method": "percentile"}
    batch = max(1, BOOTSTRAP_CELLS // max(1, rows or units))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            data, batched, n_resamples=resamples, rng=np.random.default_rng(seed), batch=batch, **options
        )
    distribution = np.asarray(result.bootstrap_distribution)
    defined = distribution[np.isfinite(distribution)]
    dropped = distribution.size - defined.size
    if 2 * dropped > distribution.size:
        return None, None, dropped
    if dropped:
        kept = SimpleNamespace(bootstrap_distribution=defined)
        result = stats.bootstrap(data, batched, n_resamples=0, bootstrap_result=kept, **options)
    ci = result.confidence_interval
    return float(ci.low), float(ci.high), dropped


def _pairs_in_used_groups(judge: np.ndarray, human: np.ndarray, members: list[np.ndarray]) -> int:
    return sum(len(rows) for rows in members if _qualifies(judge[rows], human[rows]))


def agreement(
    method: str,
    judge: Sequence[float],
    human: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    level: str = "pooled",
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> Agreement:
    """Point estimate plus a bootstrap interval, resampling whole groups when given.

    Groups are resampled because samples from one source document are not
    independent; resampling pairs would make the interval too narrow.
    ``resamples=0`` skips the interval.
    """
    j, h, members = _prepare(method, level, judge, human, groups)
    value, used, skipped, reason = _correlation(method, level, j, h, members)
    low = high = None
    dropped = 0
    if value is not None:
        units, statistic = _statistic(method, level, j, h, members)
        low, high, dropped = _interval(units, statistic, confidence, resamples, seed, rows=len(j))
    n = len(j) if level == "pooled" or members is None else _pairs_in_used_groups(j, h, members)
    return Agreement(method, level, value, low, high, confidence, n, used, skipped, reason, dropped)


def paired_difference(
    method: str,
    judge_a: Sequence[float],
    judge_b: Sequence[float],
    human: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    level: str = "pooled",
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> PairedDifference:
    """Interval of corr(b) - corr(a) on the same resamples, so shared noise cancels."""
    ja, h, members = _prepare(method, level, judge_a, human, groups)
    jb, _, _ = _prepare(method, level, judge_b, human, groups)
    a, _, _, reason_a = _correlation(method, level, ja, h, members)
    b, _, _, reason_b = _correlation(method, level, jb, h, members)
    if a is None or b is None:
        named = (("judge_a", reason_a), ("judge_b", reason_b))
        reasons = [f"{name}: {reason}" for name, reason in named if reason]
        return PairedDifference(a, b, None, None, None, confidence, len(h), "; ".join(reasons))
    units, stat_a = _statistic(method, level, ja, h, members)
    _, stat_b = _statistic(method, level, jb, h, members)
    low, high, dropped = _interval(
        units, lambda idx: stat_b(idx) - stat_a(idx), confidence, resamples, seed, rows=len(h)
    )
    return PairedDifference(a, b, b - a, low, high, confidence, len(h), None, dropped)


@dataclass(frozen=True)
class MeanChange:
    """The mean of ``after - before`` over paired samples, with its bootstrap interval; ``reason`` explains a
    ``None``. ``groups`` is the number of documents resampled (0 when the pairs themselves are)."""

    value: float | None
    low: float | None
    high: float | None
    confidence: float
    n: int
    groups: int
    reason: str | None
    resamples_dropped: int = 0


def mean_change(
    before: Sequence[float],
    after: Sequence[float],
    *,
    groups: Sequence[str] | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> MeanChange:
    """Paired mean change (after minus before) with a percentile bootstrap that resamples whole groups.

    A resample of documents is scored as the pooled mean of its pairs (the sum of their changes over
    their number), so a long document weighs by its pairs, as in the point estimate.
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
        units, statistic = len(change), lambda idx: change[idx].mean(axis=-1)
        used = 0
    else:
        if len(groups) != len(change):
            raise ValueError(f"groups has {len(groups)} labels but there are {len(change)} pairs")
        members = _members(groups)
        sums = np.array([change[rows].sum() for rows in members])
        counts = np.array([len(rows) for rows in members], dtype=float)
        units, used = len(members), len(members)

        def statistic(idx: np.ndarray) -> np.ndarray:
            return sums[idx].sum(axis=-1) / counts[idx].sum(axis=-1)

    low, high, dropped = _interval(units, statistic, confidence, resamples, seed, rows=len(change))
    reason = None
    if low is None:
        unit = "documents" if groups is not None else "pairs"
        reason = f"an interval needs at least 2 {unit}, there {'is' if units == 1 else 'are'} {units}"
    return MeanChange(value, low, high, confidence, len(change), used, reason, dropped)


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


def required_sample_size(
    diff: float, low: float, high: float, n: int, confidence: float
) -> int | None:
    """Rough n at which an interval this wide would exclude zero (half-width ~ 1/sqrt(n)).

    ``confidence`` is the level ``low``/``high`` were computed at; it enters only
    through their width. Never less than ``n``: an interval that already excludes
    zero needs no more samples.
    """
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    if n < 1 or high < low:
        raise ValueError("need n >= 1 and low <= high")
    if diff == 0:
        return None
    half_width = (high - low) / 2
    return max(n, math.ceil(round(n * (half_width / abs(diff)) ** 2, 9)))
