from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pytest_judgeopt.agreement import CORRELATIONS
from pytest_judgeopt.stats import (
    LEVELS,
    Agreement,
    PairedDifference,
    agreement,
    correlation,
    mae,
    paired_difference,
)

# Five pairs with a tie on each side, worked by hand:
# judge ranks [1, 2.5, 2.5, 4, 5], human ranks [1, 3, 2, 4.5, 4.5] -> rho = 9 / 9.5.
# Kendall: 8 concordant, 0 discordant, one tie per side -> tau_b = 8 / sqrt(9 * 9).
# Pearson: sum of products 6.6, sums of squares 9.2 and 6.8.
JUDGE = [1.0, 2.0, 2.0, 3.0, 5.0]
HUMAN = [1.0, 3.0, 2.0, 4.0, 4.0]
BY_HAND = {
    "spearman": 18 / 19,
    "kendall": 8 / 9,
    "pearson": 6.6 / math.sqrt(9.2 * 6.8),
}

# Group a agrees perfectly, group b partly disagrees, c has a constant judge, d one pair.
TOY_JUDGE = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 2.0, 2.0, 2.0, 4.0]
TOY_HUMAN = [1.0, 2.0, 3.0, 3.0, 1.0, 2.0, 1.0, 2.0, 3.0, 5.0]
TOY_GROUPS = ["a", "a", "a", "b", "b", "b", "c", "c", "c", "d"]
TOY_MEAN = {
    "spearman": (1.0 + -0.5) / 2,
    "pearson": (1.0 + -0.5) / 2,
    "kendall": (1.0 + -1 / 3) / 2,
}


def noisy(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    human = rng.integers(1, 6, n).astype(float)
    judge = np.clip(np.round(human + rng.normal(0, noise, n)), 1, 5)
    return judge, human


def documents(count: int, size: int) -> list[str]:
    return [f"doc{i // size}" for i in range(count * size)]


@pytest.mark.parametrize("method", CORRELATIONS)
def test_matches_hand_computed_values(method: str) -> None:
    value, used, skipped, reason = correlation(method, JUDGE, HUMAN)
    assert value == pytest.approx(BY_HAND[method])
    assert (used, skipped, reason) == (0, 0, None)


@pytest.mark.parametrize(
    ("method", "scipy_fn"),
    [("spearman", stats.spearmanr), ("kendall", stats.kendalltau), ("pearson", stats.pearsonr)],
)
def test_matches_scipy(method: str, scipy_fn) -> None:
    judge, human = noisy(200, 1.0, seed=3)
    value, *_ = correlation(method, judge, human)
    assert value == pytest.approx(scipy_fn(judge, human).statistic)


@pytest.mark.parametrize("method", CORRELATIONS)
def test_group_level_is_mean_over_varying_groups(method: str) -> None:
    value, used, skipped, reason = correlation(
        method, TOY_JUDGE, TOY_HUMAN, groups=TOY_GROUPS, level="group"
    )
    assert value == pytest.approx(TOY_MEAN[method])
    assert (used, skipped, reason) == (2, 2, None)


def test_group_level_agreement_reports_groups_and_pairs() -> None:
    result = agreement("spearman", TOY_JUDGE, TOY_HUMAN, groups=TOY_GROUPS, level="group")
    assert result.value == pytest.approx(0.25)
    assert (result.groups, result.groups_skipped, result.n) == (2, 2, 6)


def test_pooled_ignores_groups_for_the_point_estimate() -> None:
    pooled, *_ = correlation("spearman", TOY_JUDGE, TOY_HUMAN)
    with_groups, used, skipped, _ = correlation("spearman", TOY_JUDGE, TOY_HUMAN, groups=TOY_GROUPS)
    assert with_groups == pooled
    assert (used, skipped) == (0, 0)


@pytest.mark.parametrize("method", CORRELATIONS)
@pytest.mark.parametrize("level", LEVELS)
def test_interval_contains_point_estimate(method: str, level: str) -> None:
    judge, human = noisy(240, 1.0, seed=1)
    result = agreement(method, judge, human, groups=documents(30, 8), level=level)
    assert isinstance(result, Agreement)
    assert result.reason is None
    assert result.low is not None and result.high is not None
    assert result.low <= result.value <= result.high
    assert result.confidence == 0.95


def test_interval_contains_point_estimate_without_groups() -> None:
    judge, human = noisy(100, 1.0, seed=2)
    result = agreement("spearman", judge, human)
    assert result.low <= result.value <= result.high
    assert (result.n, result.groups, result.groups_skipped) == (100, 0, 0)


def test_interval_narrows_as_n_grows() -> None:
    widths = []
    for n in (40, 1600):
        judge, human = noisy(n, 1.0, seed=5)
        result = agreement("spearman", judge, human)
        widths.append(result.high - result.low)
    assert widths[1] < widths[0] / 2


def test_higher_confidence_gives_wider_interval() -> None:
    judge, human = noisy(150, 1.0, seed=6)
    narrow = agreement("pearson", judge, human, confidence=0.8)
    wide = agreement("pearson", judge, human, confidence=0.99)
    assert wide.low < narrow.low and narrow.high < wide.high


@pytest.mark.parametrize("level", LEVELS)
def test_jackknife_is_deterministic_and_seeded_only_in_blocks(level: str) -> None:
    judge, human = noisy(160, 1.0, seed=7)
    groups = documents(20, 8)
    first = agreement("kendall", judge, human, groups=groups, level=level, seed=11)
    assert first == agreement("kendall", judge, human, groups=groups, level=level, seed=12)  # one unit per document
    judge, human = noisy(900, 1.0, seed=7)  # 900 samples as units: left out in 200 seeded blocks
    first = agreement("pearson", judge, human, seed=11)
    assert first == agreement("pearson", judge, human, seed=11)
    assert (first.low, first.high) != (agreement("pearson", judge, human, seed=12).low,
                                       agreement("pearson", judge, human, seed=12).high)
    assert first.units == 900


def test_unequal_group_sizes() -> None:
    judge, human = noisy(55, 1.0, seed=8)
    groups = [f"doc{size}" for size in range(1, 11) for _ in range(size)]
    result = agreement("spearman", judge, human, groups=groups)
    assert result.low <= result.value <= result.high
    assert result.units == 10


def hand_jackknife(judge: np.ndarray, human: np.ndarray, groups: list[str], confidence: float = 0.95) -> tuple[float, float]:
    """The delete-one-document jackknife on Fisher's z with a t(k-1) quantile, written out."""
    labels = sorted(set(groups))
    keep = [np.array([g != label for g in groups]) for label in labels]
    z = np.arctanh([stats.spearmanr(judge[m], human[m]).statistic for m in keep])
    k = len(labels)
    se = math.sqrt((k - 1) / k * ((z - z.mean()) ** 2).sum())
    t = stats.t.ppf(0.5 + confidence / 2, k - 1)
    center = math.atanh(stats.spearmanr(judge, human).statistic)
    return math.tanh(center - t * se), math.tanh(center + t * se)


def test_pooled_interval_is_the_document_jackknife_on_fisher_z() -> None:
    judge, human = noisy(96, 1.0, seed=21)
    groups = documents(12, 8)
    result = agreement("spearman", judge, human, groups=groups, confidence=0.9)
    assert (result.low, result.high) == pytest.approx(hand_jackknife(judge, human, groups, 0.9))


def test_group_level_interval_is_the_t_interval_over_documents() -> None:
    judge, human = noisy(96, 1.0, seed=22)
    groups = documents(12, 8)
    per_document = [stats.spearmanr(judge[i:i + 8], human[i:i + 8]).statistic for i in range(0, 96, 8)]
    low, high = stats.t.interval(0.95, 11, loc=np.mean(per_document), scale=stats.sem(per_document))
    result = agreement("spearman", judge, human, groups=groups, level="group")
    assert (result.low, result.high) == pytest.approx((low, high))
    assert result.units == 12


@pytest.mark.parametrize("level", LEVELS)
def test_below_min_groups_there_is_no_interval(level: str) -> None:
    judge, human = noisy(56, 0.5, seed=23)
    result = agreement("spearman", judge, human, groups=documents(7, 8), level=level)
    assert result.value is not None and result.reason is None
    assert (result.low, result.high, result.units) == (None, None, 7)
    assert result.interval_reason == "too few documents: 7 (an interval needs at least 8; correlation.min_groups)"
    assert agreement("spearman", judge, human, groups=documents(7, 8), level=level, min_groups=7).low is not None


def test_without_groups_samples_stand_in_for_documents() -> None:
    result = agreement("spearman", JUDGE, HUMAN)
    assert result.value == pytest.approx(BY_HAND["spearman"])
    assert (result.low, result.high, result.units) == (None, None, 5)
    assert result.interval_reason == "too few samples: 5 (an interval needs at least 8; correlation.min_groups)"


def test_min_groups_counts_only_documents_with_their_own_correlation_at_group_level() -> None:
    judge, human = noisy(80, 0.5, seed=24)
    judge[:16] = 3.0  # two of the ten documents have a constant judge
    result = agreement("spearman", judge, human, groups=documents(10, 8), level="group")
    assert (result.groups, result.groups_skipped, result.units) == (8, 2, 8)
    assert result.low is not None


def test_documents_with_two_pairs_are_skipped_at_group_level() -> None:
    # Two scored pairs always correlate +-1: such a document is skipped, not counted with full weight.
    judge = [1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 3.0]
    human = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 3.0]
    value, used, skipped, _ = correlation("spearman", judge, human, groups=["a", "a", "b", "b", "c", "c", "c"],
                                          level="group")
    assert (value, used, skipped) == (1.0, 1, 2)


def test_estimate_resting_on_one_document_has_no_interval() -> None:
    # Only document 0 has varying scores: left out, the rest is constant.
    judge = [1.0, 2.0, 3.0] + [2.0] * 24
    human = [1.0, 3.0, 2.0] + [2.0] * 24
    result = agreement("spearman", judge, human, groups=documents(9, 3))
    assert result.value is not None and result.low is None
    assert result.interval_reason.startswith("the estimate is undefined without 1 document of 9")


def test_cluster_interval_is_wider_than_pair_interval_when_documents_differ() -> None:
    # Each document shifts both judge and human scores together, so pairs within a
    # document are not independent and resampling pairs would overstate precision.
    rng = np.random.default_rng(9)
    shift = np.repeat(rng.normal(0, 2, 20), 10)
    human = shift + rng.normal(0, 1, 200)
    judge = shift + rng.normal(0, 1, 200)
    pairs = agreement("pearson", judge, human)
    clusters = agreement("pearson", judge, human, groups=documents(20, 10))
    assert clusters.high - clusters.low > pairs.high - pairs.low


@pytest.mark.parametrize("method", CORRELATIONS)
def test_paired_difference_of_identical_judges_is_exactly_zero(method: str) -> None:
    judge, human = noisy(120, 1.0, seed=10)
    result = paired_difference(method, judge, judge, human, groups=documents(15, 8))
    assert isinstance(result, PairedDifference)
    assert result.a == result.b
    assert (result.diff, result.low, result.high) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("level", LEVELS)
def test_paired_difference_excludes_zero_when_b_is_much_better(level: str) -> None:
    rng = np.random.default_rng(11)
    human = rng.integers(1, 6, 240).astype(float)
    judge_a = rng.integers(1, 6, 240).astype(float)
    judge_b = np.clip(human + rng.integers(-1, 2, 240), 1, 5)
    result = paired_difference(
        "spearman", judge_a, judge_b, human, groups=documents(30, 8), level=level
    )
    assert result.diff == pytest.approx(result.b - result.a)
    assert result.reason is None and result.n == 240
    assert 0 < result.low <= result.diff <= result.high


def test_paired_difference_below_min_groups_has_no_interval() -> None:
    judge, human = noisy(40, 1.0, seed=25)
    result = paired_difference("spearman", judge, human, human, groups=documents(5, 8))
    assert result.diff is not None and (result.low, result.high, result.units) == (None, None, 5)
    assert result.interval_reason.startswith("too few documents: 5")


def test_paired_difference_leaves_the_same_documents_out() -> None:
    # b is a + tiny noise: separate replicates would give a wide interval, shared ones a narrow one.
    judge_a, human = noisy(200, 1.5, seed=12)
    judge_b = judge_a.copy()
    judge_b[:5] = human[:5]
    paired = paired_difference("pearson", judge_a, judge_b, human)
    single = agreement("pearson", judge_a, human)
    assert paired.high - paired.low < (single.high - single.low) / 3


def test_paired_difference_undefined_names_the_judge() -> None:
    result = paired_difference("spearman", [3.0, 3.0, 3.0], [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    assert result.a is None and result.b == pytest.approx(0.5)
    assert (result.diff, result.low, result.high) == (None, None, None)
    assert result.reason == "judge_a: judge scores are constant (all 3)"


@pytest.mark.parametrize(
    ("judge", "human", "reason"),
    [
        ([1.0, 2.0], [2.0, 1.0], "only 2 pairs (need at least 3)"),
        ([1.0], [2.0], "only 1 pair (need at least 3)"),
        ([3.0, 3.0, 3.0], [1.0, 2.0, 3.0], "judge scores are constant (all 3)"),
        ([1.0, 2.0, 3.0], [4.5, 4.5, 4.5], "human scores are constant (all 4.5)"),
        (
            [2.0, 2.0, 2.0],
            [1.0, 1.0, 1.0],
            "judge scores are constant (all 2); human scores are constant (all 1)",
        ),
    ],
)
@pytest.mark.parametrize("method", CORRELATIONS)
def test_undefined_pooled(method: str, judge, human, reason: str) -> None:
    assert correlation(method, judge, human) == (None, 0, 0, reason)
    result = agreement(method, judge, human)
    assert (result.value, result.low, result.high, result.reason) == (None, None, None, reason)


@pytest.mark.parametrize("method", CORRELATIONS)
def test_undefined_when_all_groups_constant(method: str) -> None:
    judge = [1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 5.0]
    human = [2.0, 2.0, 2.0, 1.0, 2.0, 3.0, 4.0]
    groups = ["a", "a", "a", "b", "b", "b", "c"]
    value, used, skipped, reason = correlation(method, judge, human, groups=groups, level="group")
    assert (value, used, skipped) == (None, 0, 3)
    assert reason.startswith("no group has varying scores")
    result = agreement(method, judge, human, groups=groups, level="group")
    assert (result.value, result.low, result.high) == (None, None, None)
    assert (result.groups, result.groups_skipped, result.n) == (0, 3, 0)
    assert result.reason == reason


@pytest.mark.parametrize(
    "call",
    [
        lambda: correlation("spearman", [1.0, 2.0, 3.0], [1.0, 2.0]),
        lambda: agreement("kendall", [1.0, 2.0], [1.0, 2.0, 3.0]),
        lambda: paired_difference("pearson", [1.0, 2.0, 3.0], [1.0, 2.0], [1.0, 2.0, 3.0]),
        lambda: correlation("spearman", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], groups=["a", "b"]),
        lambda: mae([1.0], [1.0, 2.0]),
    ],
)
def test_unequal_lengths_raise(call) -> None:
    with pytest.raises(ValueError, match="has"):
        call()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "cosine"}, "unknown method"),
        ({"level": "document"}, "unknown level"),
        ({"level": "group"}, "needs groups"),
        ({"judge": [1.0, float("nan"), 3.0]}, "non-finite"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, match: str) -> None:
    arguments = {"method": "spearman", "judge": [1.0, 2.0, 3.0], "human": [1.0, 3.0, 2.0]}
    arguments.update(kwargs)
    method, judge, human = arguments.pop("method"), arguments.pop("judge"), arguments.pop("human")
    with pytest.raises(ValueError, match=match):
        correlation(method, judge, human, **arguments)


def test_mae() -> None:
    assert mae(JUDGE, HUMAN) == pytest.approx((0 + 1 + 0 + 1 + 1) / 5)
    with pytest.raises(ValueError):
        mae([], [])


scores = st.lists(st.integers(1, 5).map(float), min_size=0, max_size=30)
real_scores = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=0, max_size=30
)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    method=st.sampled_from(CORRELATIONS),
    level=st.sampled_from(LEVELS),
    values=st.one_of(scores, real_scores),
)
def test_correlation_is_bounded_or_none(data, method: str, level: str, values) -> None:
    same_length = {"min_size": len(values), "max_size": len(values)}
    human = data.draw(st.lists(st.integers(1, 5).map(float), **same_length))
    groups = data.draw(st.lists(st.sampled_from("abc"), **same_length))
    value, used, skipped, reason = correlation(method, values, human, groups=groups, level=level)
    if value is None:
        assert reason
    else:
        assert not math.isnan(value)
        assert -1.0 <= value <= 1.0
        assert reason is None
    assert used >= 0 and skipped >= 0
