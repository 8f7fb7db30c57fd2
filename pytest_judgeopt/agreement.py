"""The agreement metrics a criterion can be gated on, and what each one is fit for.

One table (METRICS) says, per metric, which direction is better, the range its values live in, the
label scales it fits and what to use instead where it does not fit. stats.py computes every metric
through ``value`` below (and takes its intervals, the document jackknife, from the same table);
spec.py checks a spec's metric names and scales against it; judge.py and the optimizer's gate ask
it which way is better. The coefficients come from well-kept libraries (scipy, scikit-learn,
``krippendorff``), imported when a metric is computed, never when this module is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class MetricInfo:
    """What the verdicts and the warnings need to know about a metric."""

    name: str
    higher_is_better: bool
    low: float | None  # the range the value lives in (None: unbounded on that side)
    high: float | None
    kind: str  # "correlation", "categorical" (compares labels), "alpha" or "error"
    fits: str  # what it is for, in the words a warning uses

    @property
    def lower_is_better(self) -> bool:
        return not self.higher_is_better


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("spearman", True, -1.0, 1.0, "correlation", "ordinal and continuous scores (ranks)"),
    MetricInfo("kendall", True, -1.0, 1.0, "correlation", "ordinal scores with many ties (ranks)"),
    MetricInfo("pearson", True, -1.0, 1.0, "correlation", "continuous scores (linear)"),
    MetricInfo("cohen_kappa", True, -1.0, 1.0, "categorical", "binary and nominal labels, chance-corrected"),
    MetricInfo("weighted_kappa", True, -1.0, 1.0, "categorical", "ordinal labels, chance-corrected, near misses count"),
    MetricInfo("krippendorff_alpha", True, -1.0, 1.0, "alpha", "ordinal, interval or nominal labels, missing ratings allowed"),
    MetricInfo("accuracy", True, 0.0, 1.0, "categorical", "binary and nominal labels, not chance-corrected"),
    MetricInfo("f1", True, 0.0, 1.0, "categorical", "binary labels where the positive class matters"),
    MetricInfo("mae", False, 0.0, None, "error", "any numeric scale: the size of the error in scale points"),
    MetricInfo("rmse", False, 0.0, None, "error", "any numeric scale: large errors weigh more"),
)}
BUILTIN_METRICS = tuple(METRICS)
CORRELATIONS = ("spearman", "kendall", "pearson")
CATEGORICAL = tuple(name for name, m in METRICS.items() if m.kind == "categorical")
LOWER_IS_BETTER = tuple(name for name, m in METRICS.items() if m.lower_is_better)
# a confusion matrix is shown for the metrics that compare labels
CONFUSION_METRICS = CATEGORICAL
MAX_CONFUSION_LABELS = 11  # above this many labels a matrix is no longer a compact summary
WEIGHTS = ("quadratic", "linear")
ALPHA_LEVELS = ("ordinal", "interval", "nominal")


def info(method: str) -> MetricInfo | None:
    """The table's entry, or None for a metric a pytest_judgeopt_metrics hook added (higher is better,
    range unknown)."""
    return METRICS.get(method)


def higher_is_better(method: str) -> bool:
    found = METRICS.get(method)
    return True if found is None else found.higher_is_better


@dataclass(frozen=True)
class MetricOptions:
    """The settings some metrics take (``correlation.positive``, ``.weights``, ``.alpha_level``).

    ``positive`` None means the scale's highest value, the usual "yes" of a 0/1 or 1/2 scale; it is
    resolved against the criterion's scale with ``for_scale`` before anything is computed.
    """

    positive: float | None = None
    weights: str = "quadratic"
    alpha_level: str = "ordinal"
    scale: tuple[float, float] | None = None

    def for_scale(self, scale: tuple[float, float]) -> MetricOptions:
        return MetricOptions(self.positive if self.positive is not None else scale[1], self.weights,
                             self.alpha_level, scale)


DEFAULT_OPTIONS = MetricOptions()


# --------------------------------------------------------------------------
# the coefficients


def labels(values: np.ndarray) -> np.ndarray:
    """Scores as labels for the metrics that compare labels: an averaged or probability-weighted judge score
    (3.7) counts as the nearest scale point (4), as a human would have written it."""
    import numpy as np

    return np.rint(values).astype(int)


def undefined_reason(method: str, judge: np.ndarray, human: np.ndarray, options: MetricOptions = DEFAULT_OPTIONS) -> str | None:
    """Why ``method`` has no value on these pairs (None when it has one), in words the user can act on.

    Correlations need both sides to vary; a kappa needs some disagreement to be possible (both sides
    giving one and the same label leaves chance agreement at 1 and kappa at 0/0); alpha needs some
    variation in the ratings; f1 needs a positive label on some side. Accuracy and the errors always exist.
    """
    import numpy as np

    kind = METRICS[method].kind if method in METRICS else "correlation"
    if kind == "correlation":
        reasons = [f"{name} scores are constant (all {values[0]:g})" for name, values in (("judge", judge), ("human", human))
                   if len(values) and np.all(values == values[0])]
        return "; ".join(reasons) or None
    if method in ("cohen_kappa", "weighted_kappa"):
        both = np.concatenate([labels(judge), labels(human)])
        if len(both) and np.all(both == both[0]):
            return f"judge and humans give one label only (all {both[0]:g}): chance agreement is 1 and kappa is 0/0"
        return None
    if kind == "alpha":
        both = np.concatenate([judge, human])
        if len(both) and np.all(both == both[0]):
            return f"every rating is {both[0]:g}: alpha has no variation to explain"
        return None
    if method == "f1":
        positive = _positive(options, judge, human)
        if not (np.any(labels(judge) == positive) or np.any(labels(human) == positive)):
            return f"no judge or human label is the positive class {positive:g}: f1 is 0/0 (correlation.positive)"
    return None


def _positive(options: MetricOptions, judge: np.ndarray, human: np.ndarray) -> int:
    """The positive label; without a setting or a scale, the highest label seen."""
    import numpy as np

    if options.positive is not None:
        return round(options.positive)
    return int(max(np.max(labels(judge)), np.max(labels(human))))


def value(method: str, judge: np.ndarray, human: np.ndarray, options: MetricOptions = DEFAULT_OPTIONS) -> float:
    """The metric on paired scores; NaN where it is numerically undefined (the caller reports the reason)."""
    import numpy as np

    if method in CORRELATIONS:
        from scipy import stats

        scalar = {"spearman": stats.spearmanr, "kendall": stats.kendalltau, "pearson": stats.pearsonr}[method]
        return float(scalar(judge, human).statistic)
    if method == "mae":
        return float(np.mean(np.abs(judge - human)))
    if method == "rmse":
        return float(np.sqrt(np.mean((judge - human) ** 2)))
    if method == "krippendorff_alpha":
        return alpha(np.vstack([judge, human]), options.alpha_level)
    from sklearn import metrics  # scikit-learn: only once a metric that needs it is computed

    j, h = labels(judge), labels(human)
    if method == "cohen_kappa":
        return float(metrics.cohen_kappa_score(h, j))
    if method == "weighted_kappa":
        return float(metrics.cohen_kappa_score(h, j, weights=options.weights))
    if method == "accuracy":
        return float(metrics.accuracy_score(h, j))
    if method == "f1":
        positive = _positive(options, judge, human)
        if not (np.any(j == positive) or np.any(h == positive)):
            return math.nan
        # pos_label must be one of the labels seen: a judge and humans that never say "yes" were caught above
        return float(metrics.f1_score(h == positive, j == positive, pos_label=True, zero_division=0.0))
    raise ValueError(f"unknown metric {method!r}")


def alpha(ratings: np.ndarray, level: str = "ordinal") -> float:
    """Krippendorff's alpha over a raters x items matrix with NaN where a rater did not rate.

    Ordinal and nominal levels compare labels, so scores are rounded to the scale's points first; the
    value domain is the labels seen, which is what the ``krippendorff`` package infers by itself.
    """
    import krippendorff  # only once alpha is computed
    import numpy as np

    data = np.asarray(ratings, dtype=float)
    if level != "interval":
        data = np.where(np.isnan(data), np.nan, np.rint(data))
    seen = data[~np.isnan(data)]
    if len(np.unique(seen)) < 2:
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(krippendorff.alpha(reliability_data=data, level_of_measurement=cast(Any, level)))


def confusion(judge: Sequence[float], human: Sequence[float], scale: tuple[float, float], integer: bool = True) -> dict[str, Any] | None:
    """Rows the humans' label, columns the judge's, over the scale's points (or the labels seen on a scale
    too long for a compact matrix). None without pairs."""
    import numpy as np

    if not len(judge):
        return None
    j, h = labels(np.asarray(judge, dtype=float)), labels(np.asarray(human, dtype=float))
    points = list(range(round(scale[0]), round(scale[1]) + 1)) if integer else []
    if not points or len(points) > MAX_CONFUSION_LABELS:
        points = sorted({int(x) for x in np.concatenate([j, h])})
    index = {label: k for k, label in enumerate(points)}
    matrix = [[0] * len(points) for _ in points]
    for hv, jv in zip(h.tolist(), j.tolist(), strict=True):
        if hv in index and jv in index:
            matrix[index[hv]][index[jv]] += 1
    return {"labels": points, "rows": "human", "columns": "judge", "matrix": matrix}


# --------------------------------------------------------------------------
# fit of a metric to a criterion's scale (collection warnings)


def scale_points(scale: tuple[float, float], integer: bool) -> int | None:
    """How many labels an integer scale has; None for a continuous one."""
    return round(scale[1] - scale[0]) + 1 if integer else None


def fit_problem(method: str, scale: tuple[float, float], integer: bool,
                options: MetricOptions = DEFAULT_OPTIONS) -> tuple[str, str] | None:
    """Why ``method`` does not fit a criterion's scale and the better choice, as (what, fix); None when it fits.

    The cases are the ones that quietly measure something else: a rank correlation on 0/1 labels is a
    point-biserial (or phi) correlation in disguise and ignores chance agreement; a kappa, accuracy or f1
    on a continuous scale compares rounded scores as if they were names; an unweighted kappa or f1 on a
    1-5 scale counts a 4 for a 5 as wrong as a 1 for a 5.
    """
    points = scale_points(scale, integer)
    shown = f"[{scale[0]:g}, {scale[1]:g}]"
    if method in CORRELATIONS and points == 2:
        return (f"{method} on the two-label scale {shown} is a point-biserial correlation in disguise and ignores chance "
                "agreement", "set `correlation.method: cohen_kappa` (or accuracy, or f1 with `correlation.positive`)")
    if method in CATEGORICAL and points is None:
        return (f"{method} compares labels, and the scale {shown} is continuous (written with a decimal point)",
                "use spearman or pearson, or krippendorff_alpha with `alpha_level: interval`")
    if method == "krippendorff_alpha" and points is None and options.alpha_level != "interval":
        return (f"krippendorff_alpha at level {options.alpha_level} compares labels, and the scale {shown} is continuous",
                "set `correlation.alpha_level: interval`")
    if method in ("cohen_kappa", "accuracy", "f1") and points is not None and points > 2:
        return (f"{method} treats the {points} points of the scale {shown} as unordered names (a 4 for a 5 counts as "
                "wrong as a 1 for a 5)", "use weighted_kappa or krippendorff_alpha for ordinal labels")
    return None


def options_problem(method: str, scale: tuple[float, float], options: MetricOptions) -> str | None:
    """A positive class that is not on the scale would make f1 0/0 on every run."""
    if method == "f1" and options.positive is not None and not scale[0] <= options.positive <= scale[1]:
        return f"the positive class {options.positive:g} is outside the scale {list(scale)}"
    return None


def describe_options(method: str, options: MetricOptions) -> str:
    """The setting a value depends on, for the summary ("weighted_kappa (quadratic)")."""
    if method == "weighted_kappa":
        return f"{method} ({options.weights})"
    if method == "krippendorff_alpha":
        return f"{method} ({options.alpha_level})"
    if method == "f1" and options.positive is not None:
        return f"{method} (positive {options.positive:g})"
    return method


def compare_word(method: str) -> str:
    """How a reason says which way passes."""
    return "lower is better" if not higher_is_better(method) else "higher is better"


def as_options(settings: Mapping[str, Any]) -> MetricOptions:
    return MetricOptions(settings.get("positive"), settings.get("weights", "quadratic"), settings.get("alpha_level", "ordinal"))


# --------------------------------------------------------------------------
# the threshold


def threshold_reasons(method: str, gate: str, value: float, low: float | None, high: float | None,
                      minimum: float | None, maximum: float | None, interval_reason: str | None = None) -> list[str]:
    """Why an estimate misses its threshold: ``minimum`` for a metric where higher is better (min_rho),
    ``maximum`` for an error (max_error, lower is better). The lower_bound gate compares the end of the
    interval on the losing side: the lower end of an agreement, the upper end of an error."""
    out = []
    if maximum is not None:
        if gate == "lower_bound":
            if high is None:
                out.append(f"the interval gate needs an interval and there is none: {interval_reason}")
            elif high > maximum:
                out.append(f"the interval's upper end {high:.3f} is above max_error {maximum:.2f} by {high - maximum:.3f} "
                           f"({method}: lower is better)")
        elif value > maximum:
            out.append(f"{method} {value:.3f} is above max_error {maximum:.2f} by {value - maximum:.3f} (lower is better)")
    elif minimum is not None:
        if gate == "lower_bound":
            if low is None:
                out.append(f"the lower-bound gate needs an interval and there is none: {interval_reason}")
            elif low < minimum:
                out.append(f"the interval's lower end {low:.3f} is below min_rho {minimum:.2f} by {minimum - low:.3f}")
        elif value < minimum:
            out.append(f"{method} {value:.3f} is below min_rho {minimum:.2f} by {minimum - value:.3f}")
    return out
