"""The label and error metrics (agreement.py) against hand-computed values and the libraries, their
intervals through the document jackknife (stats.py), the threshold rules, and the spec keys that choose
them: aliases, max_error, the warnings when a metric does not fit the scale."""

from __future__ import annotations

import math
from pathlib import Path

import krippendorff
import numpy as np
import pytest
from sklearn import metrics as sk

from pytest_judgeopt.agreement import (
    BUILTIN_METRICS,
    CATEGORICAL,
    METRICS,
    MetricOptions,
    alpha,
    confusion,
    fit_problem,
    higher_is_better,
    threshold_reasons,
    value,
)
from pytest_judgeopt.optimize.gate import score
from pytest_judgeopt.spec import SpecError, load_spec
from pytest_judgeopt.stats import agreement, correlation, paired_difference

# Binary pairs worked by hand. Agreement on 5 of 8; humans 4 ones, judge 5 ones:
# p_o = 5/8, p_e = (4*5 + 4*3) / 64 = 1/2, kappa = (5/8 - 1/2) / (1/2) = 1/4.
# positive 1: TP 3, FP 2, FN 1 -> f1 = 6 / 9; positive 0: TP 2, FP 1, FN 2 -> f1 = 4 / 7.
HUMAN = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=float)
JUDGE = np.array([1, 1, 0, 0, 0, 1, 1, 1], dtype=float)
# Ordinal pairs worked by hand, humans 2 of each label, judge 1x1, 3x2, 2x3; off the diagonal (1,2), (2,3), (3,2).
# quadratic: sum w*o = 3, sum w*e = (1/3)(1*5 + 3*2 + 2*5) = 7 -> 1 - 3/7 = 4/7;
# linear: sum w*o = 3, sum w*e = (1/3)(1*3 + 3*2 + 2*3) = 5 -> 1 - 3/5 = 2/5.
ORD_HUMAN = np.array([1, 2, 3, 1, 2, 3], dtype=float)
ORD_JUDGE = np.array([1, 2, 3, 2, 3, 2], dtype=float)


@pytest.mark.parametrize(("method", "options", "expected"), [
    ("cohen_kappa", MetricOptions(), 1 / 4),
    ("accuracy", MetricOptions(), 5 / 8),
    ("f1", MetricOptions(positive=1), 6 / 9),
    ("f1", MetricOptions(positive=0), 4 / 7),
])
def test_binary_metrics_match_hand_computed_values(method: str, options: MetricOptions, expected: float) -> None:
    assert value(method, JUDGE, HUMAN, options) == pytest.approx(expected)


@pytest.mark.parametrize(("weights", "expected"), [("quadratic", 4 / 7), ("linear", 2 / 5)])
def test_weighted_kappa_matches_hand_computed_values(weights: str, expected: float) -> None:
    assert value("weighted_kappa", ORD_JUDGE, ORD_HUMAN, MetricOptions(weights=weights)) == pytest.approx(expected)


def test_krippendorff_interval_alpha_matches_a_hand_computed_value() -> None:
    # values 1,1,2,2,3,4: D_o = 2/6 (unit 3 disagrees by 1, both orders), D_e = 2 * 41 / 30 -> alpha = 1 - 5/41
    assert alpha(np.array([[1, 2, 3], [1, 2, 4]]), "interval") == pytest.approx(36 / 41)
    options = MetricOptions(alpha_level="interval")
    assert value("krippendorff_alpha", np.array([1.0, 2, 3]), np.array([1.0, 2, 4]), options) == pytest.approx(36 / 41)


def test_errors_match_hand_computed_values() -> None:
    judge, human = np.array([1.0, 2, 3]), np.array([2.0, 2, 5])
    assert value("mae", judge, human) == pytest.approx(1.0)
    assert value("rmse", judge, human) == pytest.approx(math.sqrt(5 / 3))


def test_every_metric_equals_its_library_on_random_labels() -> None:
    rng = np.random.default_rng(3)
    human = rng.integers(1, 6, 60).astype(float)
    judge = np.clip(human + rng.integers(-1, 2, 60), 1, 5).astype(float)
    h, j = human.astype(int), judge.astype(int)
    assert value("cohen_kappa", judge, human) == pytest.approx(sk.cohen_kappa_score(h, j))
    for weights in ("quadratic", "linear"):
        assert value("weighted_kappa", judge, human, MetricOptions(weights=weights)) == \
            pytest.approx(sk.cohen_kappa_score(h, j, weights=weights))
    assert value("accuracy", judge, human) == pytest.approx(sk.accuracy_score(h, j))
    assert value("f1", judge, human, MetricOptions(positive=5)) == pytest.approx(sk.f1_score(h == 5, j == 5))
    for level in ("ordinal", "interval", "nominal"):
        expected = krippendorff.alpha(reliability_data=np.vstack([judge, human]), level_of_measurement=level)
        assert value("krippendorff_alpha", judge, human, MetricOptions(alpha_level=level)) == pytest.approx(expected)


def test_krippendorff_alpha_takes_missing_ratings() -> None:
    nan = np.nan
    ratings = np.array([[1, 2, nan, 3, 1, 2], [1, 2, 2, nan, 2, 2], [nan, 2, 2, 3, 1, nan]])
    expected = krippendorff.alpha(reliability_data=ratings, level_of_measurement="nominal")
    assert alpha(ratings, "nominal") == pytest.approx(expected)
    assert 0 < expected < 1
    agreeing = np.array([[1, 2, nan, 3], [1, 2, 2, nan], [nan, 2, 2, 3]])
    assert alpha(agreeing, "nominal") == pytest.approx(1.0)


def test_label_metrics_round_an_averaged_judge_score_to_the_nearest_label() -> None:
    averaged = np.array([0.9, 0.8, 0.2, 0.1, 0.3, 0.7, 0.6, 0.55])
    assert value("cohen_kappa", averaged, HUMAN) == pytest.approx(1 / 4)


@pytest.mark.parametrize(("method", "judge", "human", "why"), [
    ("cohen_kappa", [1, 1, 1, 1], [1, 1, 1, 1], "one label only"),
    ("weighted_kappa", [2, 2, 2, 2], [2, 2, 2, 2], "one label only"),
    ("f1", [0, 0, 0, 0], [0, 0, 0, 0], "positive class 1"),
    ("krippendorff_alpha", [3, 3, 3], [3, 3, 3], "no variation"),
])
def test_an_undefined_metric_says_why_and_never_passes(method: str, judge: list[float], human: list[float], why: str) -> None:
    found, _, _, reason = correlation(method, judge, human, options=MetricOptions(positive=1))
    assert found is None and reason is not None and why in reason


def test_a_constant_judge_has_a_kappa_of_zero_and_accuracy_at_the_base_rate() -> None:
    """Not undefined: a judge that always says "no" agrees with nobody beyond chance, which kappa says and
    accuracy hides (the reason to prefer kappa on unbalanced labels)."""
    human = [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    judge = [0] * 10
    assert correlation("cohen_kappa", judge, human)[0] == pytest.approx(0.0)
    assert correlation("accuracy", judge, human)[0] == pytest.approx(0.8)


def documents(count: int, size: int) -> list[str]:
    return [f"doc{i // size}" for i in range(count * size)]


@pytest.mark.parametrize("method", [m for m in BUILTIN_METRICS if METRICS[m].kind != "correlation"])
def test_every_label_metric_gets_a_document_jackknife_interval_inside_its_range(method: str) -> None:
    rng = np.random.default_rng(5)
    human = rng.integers(0, 2, 120).astype(float)
    judge = np.where(rng.random(120) < 0.8, human, 1 - human)
    found = agreement(method, judge, human, groups=documents(12, 10), options=MetricOptions(positive=1))
    assert found.value is not None and found.low is not None and found.high is not None
    assert found.low <= found.value <= found.high and found.units == 12
    info = METRICS[method]
    assert info.low is None or found.low >= info.low
    assert info.high is None or found.high <= info.high
    few = agreement(method, judge[:40], human[:40], groups=documents(4, 10), options=MetricOptions(positive=1))
    assert few.low is None and "too few documents: 4" in (few.interval_reason or "")


def test_the_paired_difference_works_for_a_label_metric() -> None:
    rng = np.random.default_rng(6)
    human = rng.integers(0, 2, 120).astype(float)
    good = np.where(rng.random(120) < 0.9, human, 1 - human)
    bad = np.where(rng.random(120) < 0.6, human, 1 - human)
    diff = paired_difference("cohen_kappa", good, bad, human, groups=documents(12, 10))
    assert diff.diff is not None and diff.high is not None and diff.diff < 0 and diff.high < 0


def test_error_metrics_are_lower_is_better_everywhere() -> None:
    assert [m for m in BUILTIN_METRICS if not higher_is_better(m)] == ["mae", "rmse"]
    assert score(0.5, "mae") > score(0.9, "mae") and score(0.5, "rmse") > score(0.9, "rmse")
    assert score(0.9, "cohen_kappa") > score(0.5, "cohen_kappa")
    assert threshold_reasons("mae", "point", 0.9, None, None, None, 0.8) == [
        "mae 0.900 is above max_error 0.80 by 0.100 (lower is better)"]
    assert threshold_reasons("mae", "point", 0.7, None, None, None, 0.8) == []
    upper = threshold_reasons("rmse", "lower_bound", 0.7, 0.5, 0.85, None, 0.8)
    assert upper == ["the interval's upper end 0.850 is above max_error 0.80 by 0.050 (rmse: lower is better)"]
    assert threshold_reasons("cohen_kappa", "point", 0.3, None, None, 0.4, None) == [
        "cohen_kappa 0.300 is below min_rho 0.40 by 0.100"]


def test_the_confusion_matrix_counts_humans_by_rows_and_the_judge_by_columns() -> None:
    found = confusion(JUDGE.tolist(), HUMAN.tolist(), (0, 1))
    assert found == {"labels": [0, 1], "rows": "human", "columns": "judge", "matrix": [[2, 2], [1, 3]]}
    assert confusion([1.0, 5.0], [1.0, 4.0], (1, 5))["matrix"][3] == [0, 0, 0, 0, 1]  # human 4, judge 5


@pytest.mark.parametrize(("method", "scale", "integer", "named"), [
    ("spearman", (0, 1), True, "cohen_kappa"),
    ("pearson", (1, 2), True, "cohen_kappa"),
    ("cohen_kappa", (0.0, 1.0), False, "spearman or pearson"),
    ("accuracy", (1, 5), True, "weighted_kappa"),
    ("f1", (1, 5), True, "weighted_kappa"),
    ("krippendorff_alpha", (0.0, 10.0), False, "alpha_level: interval"),
])
def test_a_metric_that_does_not_fit_the_scale_names_the_better_choice(method: str, scale: tuple[float, float],
                                                                       integer: bool, named: str) -> None:
    found = fit_problem(method, scale, integer)
    assert found is not None and named in found[1]


@pytest.mark.parametrize(("method", "scale"), [("spearman", (1, 5)), ("cohen_kappa", (0, 1)), ("weighted_kappa", (1, 5)),
                                               ("f1", (0, 1)), ("mae", (0.0, 1.0)), ("krippendorff_alpha", (1, 5))])
def test_a_metric_that_fits_its_scale_gets_no_warning(method: str, scale: tuple[float, float]) -> None:
    assert fit_problem(method, scale, isinstance(scale[0], int)) is None


def test_categorical_metrics_are_the_ones_with_a_confusion_matrix() -> None:
    assert set(CATEGORICAL) == {"cohen_kappa", "weighted_kappa", "accuracy", "f1"}


# --------------------------------------------------------------------------
# spec keys


SPEC = """\
name: toy
dataset:
  path: data.jsonl
  inputs: {summary: summary}
  scores: scores
{correlation}
criteria:
  consistent:
    instruction: Is it consistent?
    scale: {scale}
    {threshold}
"""


def spec_at(tmp_path: Path, correlation: str = "", scale: str = "[0, 1]", threshold: str = "min_rho: 0.3") -> Path:
    (tmp_path / "data.jsonl").write_text('{"id": "a", "summary": "x", "scores": {"consistent": 1}}\n')
    path = tmp_path / "toy.judge.yaml"
    path.write_text(SPEC.replace("{correlation}", correlation).replace("{scale}", scale).replace("{threshold}", threshold))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return caught.value.problems


def test_spearman_on_a_binary_scale_is_a_warning_naming_cohen_kappa(tmp_path: Path) -> None:
    spec = load_spec(spec_at(tmp_path))
    assert len(spec.warnings) == 1
    warning = spec.warnings[0]
    assert warning.startswith(f"{tmp_path / 'toy.judge.yaml'}:10: criteria.consistent.scale: spearman on the two-label")
    assert "point-biserial" in warning and "Fix: set `correlation.method: cohen_kappa`" in warning
    assert load_spec(spec_at(tmp_path, "correlation: {method: cohen_kappa}")).warnings == ()


@pytest.mark.parametrize("written", ["correlation: {agreement: cohen_kappa}", "agreement: {method: cohen_kappa}",
                                     "agreement: {agreement: cohen_kappa, gate: lower_bound}"])
def test_agreement_is_an_alias_of_the_section_and_of_its_method(tmp_path: Path, written: str) -> None:
    spec = load_spec(spec_at(tmp_path, written))
    assert spec.correlation.method == "cohen_kappa" and spec.warnings == ()
    assert spec.optimize.gate.metric == "cohen_kappa"  # the optimizer gates on what the items measure


def test_min_agreement_is_min_rho(tmp_path: Path) -> None:
    spec = load_spec(spec_at(tmp_path, "correlation: {method: f1, positive: 0}", threshold="min_agreement: 0.6"))
    assert spec.criteria["consistent"].min_rho == 0.6 and spec.correlation.options.positive == 0


@pytest.mark.parametrize(("correlation", "threshold", "line", "key", "what", "fix"), [
    ("correlation: {method: spearman}", "max_error: 0.5", 11, "criteria.consistent.max_error",
     "max_error is a threshold for mae and rmse (lower is better)", "use `min_rho:` (higher is better)"),
    ("correlation: {method: mae}", "min_rho: 0.5", 11, "criteria.consistent.min_rho",
     "mae is an error (lower is better)", "use `max_error:` with the largest mae allowed"),
    ("correlation: {method: rmse}", "", 8, "criteria.consistent", "missing key 'max_error'", "add `max_error:`"),
    ("correlation: {method: cohen_kappa}", "min_rho: humans", 11, "criteria.consistent.min_rho",
     "the dataset names no annotators", "set `dataset.annotators`"),
    ("correlation: {method: cohen_kappa, gate: alt_test}", "min_rho: 0.3", 6, "correlation.gate",
     "the dataset names no annotators", "set `dataset.annotators` (at least 3 annotators)"),
    ("correlation: {method: f1, positive: 7}", "min_rho: 0.3", 6, "correlation.positive",
     "the positive class 7 is outside the scale [0.0, 1.0]", "give a label on the scale"),
    ("correlation: {method: cohen_kappa}\nagreement: {method: f1}", "min_rho: 0.3", 7, "agreement",
     "are the same section, written twice", "keep one of them"),
    ("correlation: {method: cohen_kapa}", "min_rho: 0.3", 6, "correlation.method",
     "unknown metric 'cohen_kapa'", "did you mean 'cohen_kappa'?"),
    ("correlation: {method: cohen_kappa}", "min_rho: high", 11, "criteria.consistent.min_rho",
     "expected a number or null", "`humans`"),
    ("correlation: {method: cohen_kappa}", "min_rho: {humans: high}", 11, "criteria.consistent.min_rho.humans",
     "expected a number", "write a number here"),
    ("correlation: {method: cohen_kappa, weights: cubic}", "min_rho: 0.3", 6, "correlation.weights",
     "'cubic' is not allowed", "use one of: quadratic, linear"),
])
def test_spec_errors_name_file_line_key_and_fix(tmp_path: Path, correlation: str, threshold: str, line: int, key: str,
                                                what: str, fix: str) -> None:
    path = spec_at(tmp_path, correlation, threshold=threshold)
    found = problems_of(path)
    matching = [p for p in found if p.startswith(f"{path}:{line}: {key}: ") and what in p]
    assert matching, "\n".join(found)
    assert fix in matching[0].split(". Fix: ", 1)[1]


def test_max_error_gates_mae(tmp_path: Path) -> None:
    spec = load_spec(spec_at(tmp_path, "correlation: {method: mae}", scale="[1, 5]", threshold="max_error: 0.75"))
    criterion = spec.criteria["consistent"]
    assert (criterion.min_rho, criterion.max_error, criterion.report_only) == (None, 0.75, False)
    assert spec.optimize.gate.metric == "mae"


# --------------------------------------------------------------------------
# comparisons and the optimizer's gate with the label and error metrics


def test_an_error_metric_rising_is_a_drop_in_a_comparison() -> None:
    from pytest_judgeopt.compare import Rules, decide, oriented
    from pytest_judgeopt.stats import PairedDifference

    worse = PairedDifference(0.5, 0.7, 0.2, 0.1, 0.3, 0.95, 40, None, 12)
    turned = oriented("mae", worse)
    assert (turned.a, turned.b, turned.diff, turned.low, turned.high) == (0.5, 0.7, -0.2, -0.3, -0.1)
    verdict = decide(turned, Rules(max_drop=0.02), metric="mae")
    assert verdict.kind == "fail"
    assert "drops agreement (mae rises: lower is better) by 0.200 (0.500 -> 0.700)" in (verdict.reason or "")
    better = oriented("rmse", PairedDifference(0.7, 0.5, -0.2, -0.3, -0.1, 0.95, 40, None, 12))
    assert decide(better, Rules(max_drop=0.02), metric="rmse").kind == "pass"
    assert oriented("cohen_kappa", worse) is worse
    kappa = decide(PairedDifference(0.8, 0.5, -0.3, -0.4, -0.2, 0.95, 40, None, 12), Rules(max_drop=0.02),
                   metric="cohen_kappa")
    assert "drops cohen_kappa by 0.300" in (kappa.reason or "")


def test_the_optimizers_gate_measures_a_label_metric_with_the_criterions_options() -> None:
    from pytest_judgeopt.judge import Judgment
    from pytest_judgeopt.optimize.gate import measure_judgments

    judged = [Judgment(f"r{i}", f"d{i}", "c", float(h), float(j), None, "", None)
              for i, (h, j) in enumerate(zip(HUMAN.tolist(), JUDGE.tolist(), strict=True))]
    measured = measure_judgments({"c": judged}, "f1", {"c": MetricOptions(positive=0)})
    assert measured.value["c"] == pytest.approx(4 / 7)
    assert measure_judgments({"c": judged}, "cohen_kappa").value["c"] == pytest.approx(1 / 4)
    assert measure_judgments({"c": judged}, "rmse").value["c"] == pytest.approx(math.sqrt(3 / 8))


# --------------------------------------------------------------------------
# the example


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "summeval-annotators"


def test_the_annotators_example_loads_and_its_readme_quotes_what_the_code_measures() -> None:
    import re

    from pytest_judgeopt.annotators import humans_agreement
    from pytest_judgeopt.data import load_dataset

    experts = load_spec(EXAMPLE / "experts.judge.yaml")
    binary = load_spec(EXAMPLE / "binary.judge.yaml")
    assert experts.warnings == () and binary.warnings == ()
    assert experts.correlation.gate == "alt_test" and experts.correlation.epsilon == 0.2
    assert binary.correlation.method == "cohen_kappa"
    records = load_dataset(experts).records
    assert len(records) == 100 and all(len(r.ratings["consistency"]) == 3 for r in records)
    assert all(r.human["consistency"] == pytest.approx(sum(r.ratings["consistency"]) / 3) for r in records)
    assert sum(r.human["consistency"] for r in load_dataset(binary).records) == 54
    found = humans_agreement("spearman", [r.human["consistency"] for r in records],
                             [r.ratings["consistency"] for r in records], groups=[r.group for r in records])
    quoted = re.search(r"leave-one-out spearman (\d\.\d{3})", (EXAMPLE / "data" / "README.md").read_text())
    assert quoted and float(quoted.group(1)) == pytest.approx(found.human, abs=5e-4)


def test_a_point_gate_on_an_error_says_when_the_interval_does_not_exclude_max_error() -> None:
    from pytest_judgeopt.text import evaluation_notes, interval

    r = {"criterion": "c", "report_only": False, "reasons": [], "passed": True, "gate": "point", "value": 0.6,
         "low": 0.4, "high": 0.9, "min_rho": None, "max_error": 0.8, "interval_reason": None}
    assert evaluation_notes(r) == [f"c: passes on the estimate; the interval {interval(0.4, 0.9)} does not exclude "
                                   "max_error 0.80"]
    assert evaluation_notes({**r, "high": 0.7}) == []
