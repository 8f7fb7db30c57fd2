"""Several annotators (annotators.py): the aggregate, the humans' leave-one-out agreement beside the judge's,
and the alternative annotator test on worlds whose answer is known by construction."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from pytest_judgeopt.agreement import MetricOptions
from pytest_judgeopt.annotators import aggregate, alt_test, humans_agreement, read_ratings, reasons
from pytest_judgeopt.data import load_dataset
from pytest_judgeopt.spec import SpecError, load_spec


def test_the_aggregate_ignores_missing_ratings_and_majority_breaks_ties_toward_the_median() -> None:
    assert aggregate([1, 2, None, 4], "mean") == pytest.approx(7 / 3)
    assert aggregate([1, 2, None, 4], "median") == 2
    assert aggregate([1, 1, 5], "majority") == 1
    assert aggregate([1, 5, 4, 4, 1], "majority") == 4  # 1 and 4 tie twice each; the median is 4
    assert aggregate([2, 4], "majority") == 2  # equally near the median 3: the lower one
    with pytest.raises(ValueError, match="no annotator rated"):
        aggregate([None, None])


def test_ratings_are_read_with_nulls_and_checked_against_the_scale() -> None:
    assert read_ratings({"c": [1, None, 3]}, "c", (1, 5)) == ((1.0, None, 3.0), None)
    assert read_ratings({"c": [None, None]}, "c", (1, 5)) == (None, None)
    assert read_ratings({"x": [1]}, "c", (1, 5)) == (None, None)
    assert read_ratings({"c": [1, 7]}, "c", (1, 5))[1] == "annotator 2's score 7 is outside the scale [1, 5]"
    assert read_ratings({"c": [1, "high"]}, "c", (1, 5))[1] == "annotator 2's score 'high' is not a number"
    assert read_ratings({"c": 3}, "c", (1, 5))[1] == "'c' holds int, not a list of the annotators' scores"


def test_the_humans_leave_one_out_agreement_matches_a_hand_computed_value() -> None:
    # mae against the mean of the others: annotator 1 is off by 1.5, 0, 1.5 (mae 1), annotator 2 by 0, 0, 0,
    # annotator 3 by 1.5, 0, 1.5; the judge against the same references by 1/3, 0, 1/3 -> 2/3 and 2/9
    ratings = [[1, 2, 3], [2, 2, 2], [3, 4, 5]]
    found = humans_agreement("mae", [2, 2, 4], ratings)
    assert found.human == pytest.approx(2 / 3) and found.judge == pytest.approx(2 / 9)
    assert [a.human for a in found.annotators] == pytest.approx([1.0, 0.0, 1.0])
    assert [a.judge for a in found.annotators] == pytest.approx([1 / 3, 0.0, 1 / 3])
    assert found.human_low is None and "too few samples: 3" in (found.interval_reason or "")


def panel(items: int = 60, seed: int = 0, noise: float = 0.8) -> tuple[np.ndarray, list[list[float | None]]]:
    """True scores 1-5 and three annotators, each the truth plus rounded noise."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, items).astype(float)
    ratings = np.clip(np.rint(truth[:, None] + rng.normal(0, noise, (items, 3))), 1, 5)
    return truth, ratings.tolist()


def test_the_humans_agreement_gets_a_document_interval_and_the_same_references_as_the_judge() -> None:
    truth, ratings = panel()
    groups = [f"d{i // 3}" for i in range(60)]
    found = humans_agreement("spearman", truth.tolist(), ratings, groups=groups)
    assert found.human is not None and found.human_low is not None and found.human_high is not None
    assert found.human_low <= found.human <= found.human_high and found.units == 20
    assert found.judge is not None and found.judge > found.human  # the truth predicts the others better than one of them
    assert found.judge_low is not None and found.judge_low <= found.judge


def test_a_judge_equal_to_one_annotator_does_not_beat_that_annotator() -> None:
    """Against annotator 1, a judge that copies annotator 1 aligns with the others exactly as well, item by item:
    its advantage is 0 by construction, so without a margin it cannot win against them."""
    _, ratings = panel(seed=1)
    copy = [row[0] for row in ratings]
    test, per = alt_test(copy, ratings, epsilon=0.0)
    first = per[0]
    assert first.judge_rate == first.human_rate == 1.0  # a tie on every item counts for both
    assert first.won is False and first.p_value == 1.0
    assert test.winning_rate is not None and test.winning_rate < 1.0
    _, per = alt_test(copy, ratings, epsilon=0.1)
    assert per[0].won is True  # within epsilon of the annotator is what the test asks, and an equal is within it


def test_a_judge_that_copies_the_consensus_wins() -> None:
    _, ratings = panel(seed=2)
    means = [float(np.mean(row)) for row in ratings]
    test, per = alt_test(means, ratings, epsilon=0.1)
    assert test.passed and test.winning_rate == 1.0 and all(a.won for a in per)
    assert test.advantage == pytest.approx(1.0)  # the mean of all is closer to the others than any one of them


def test_a_random_judge_loses() -> None:
    _, ratings = panel(seed=3, noise=0.5)
    rng = random.Random(0)
    guesses = [float(rng.randint(1, 5)) for _ in ratings]
    test, per = alt_test(guesses, ratings, epsilon=0.1)
    assert not test.passed and test.winning_rate == 0.0
    assert test.reason is not None and "wins against 0 of 3 annotators" in test.reason
    assert all(a.p_adjusted is not None and a.p_adjusted > 0.05 for a in per)
    assert reasons(None, None, "alt_test") == ["gate: alt_test needs the annotators' scores (dataset.annotators)"]


def test_benjamini_yekutieli_adjusts_the_p_values_by_hand() -> None:
    truth, ratings = panel(seed=4, noise=1.2)
    _, per = alt_test(truth.tolist(), ratings, epsilon=0.0)
    ps = sorted((a.p_value, a.p_adjusted) for a in per if a.p_value is not None)
    assert len(ps) == 3
    m, c = 3, 1 + 1 / 2 + 1 / 3  # BY: the BH step-up with the factor c(m) = sum 1/i
    for k, (_, adjusted) in enumerate(ps, 1):
        by_hand = min(1.0, min(m * c / j * ps[j - 1][0] for j in range(k, m + 1)))
        assert adjusted == pytest.approx(by_hand)


def test_missing_ratings_leave_an_annotator_out_of_the_items_they_did_not_rate() -> None:
    truth, ratings = panel(items=80, seed=5)
    patched: list[list[float | None]] = [list(row) for row in ratings]
    for i in range(0, 80, 4):
        patched[i][2] = None
    found = humans_agreement("spearman", truth.tolist(), patched)
    assert [a.items for a in found.annotators] == [80, 80, 60]
    test, per = alt_test(truth.tolist(), patched, epsilon=0.1)
    assert [a.units for a in per] == [80, 80, 60] and test.passed


def test_fewer_than_three_annotators_fail_with_the_reason() -> None:
    truth, ratings = panel()
    two = [row[:2] for row in ratings]
    test, _ = alt_test(truth.tolist(), two)
    assert not test.passed and test.winning_rate is None
    assert "needs at least 3 annotators, and 2 rated these items" in (test.reason or "")
    one = [row[:1] for row in ratings]
    assert humans_agreement("spearman", truth.tolist(), one).reason == "fewer than 2 annotators: there is no one to agree with"


def test_too_few_items_fail_with_the_reason() -> None:
    truth, ratings = panel(items=20)
    test, per = alt_test(truth.tolist(), ratings, min_items=30)
    assert not test.passed
    assert "20 items rated by annotator 1 and another, fewer than the 30 the test needs" in (test.reason or "")
    assert all(a.won is False for a in per)


def test_with_documents_the_test_counts_documents() -> None:
    truth, ratings = panel(items=90, seed=6)
    groups = [f"d{i // 3}" for i in range(90)]
    test, per = alt_test(truth.tolist(), ratings, groups=groups, min_items=30)
    assert [a.units for a in per] == [30, 30, 30] and test.passed
    short, _ = alt_test(truth.tolist(), ratings, groups=[f"d{i // 6}" for i in range(90)], min_items=30)
    assert not short.passed and "15 documents rated by annotator 1" in (short.reason or "")


def test_binary_labels_use_accuracy_alignment() -> None:
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 2, 60)
    ratings = np.where(rng.random((60, 3)) < 0.85, truth[:, None], 1 - truth[:, None]).astype(float).tolist()
    majority = [float(round(sum(row) / 3)) for row in ratings]
    test, _ = alt_test(majority, ratings, method="cohen_kappa", epsilon=0.1)
    assert test.scoring == "accuracy" and test.passed
    found = humans_agreement("cohen_kappa", majority, ratings, aggregate_by="majority", options=MetricOptions(positive=1))
    assert found.human is not None and 0 < found.human < 1 and found.judge is not None and found.judge > found.human
    flipped = [1.0 - v for v in majority]
    lost, _ = alt_test(flipped, ratings, method="cohen_kappa", epsilon=0.1)
    assert not lost.passed and lost.winning_rate == 0.0


def test_min_rho_humans_reasons_compare_the_judge_with_the_humans_on_the_same_references() -> None:
    truth, ratings = panel(seed=8)
    found = humans_agreement("spearman", truth.tolist(), ratings)
    assert found.human is not None and found.judge is not None
    assert reasons(found, -0.05, "point") == []  # the truth beats one annotator
    rng = random.Random(1)
    noisy = humans_agreement("spearman", [float(rng.randint(1, 5)) for _ in ratings], ratings)
    why = reasons(noisy, -0.05, "point")
    assert len(why) == 1 and why[0].startswith("the judge's leave-one-out spearman")
    assert f"the humans' {noisy.human:.3f} -0.05 = {noisy.human - 0.05:.3f}" in why[0]


def test_the_dataset_reads_annotators_at_a_dotted_path_and_aggregates_them(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "text": "x", "meta": {"ratings": {"c": [1 + i % 5, 1 + (i + 1) % 5, None if i % 3 else 2]}}}
            for i in range(6)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec_file = tmp_path / "a.judge.yaml"
    spec_file.write_text("dataset:\n  path: data.jsonl\n  inputs: {text: text}\n  annotators: meta.ratings\n"
                         "  aggregate: majority\ncriteria:\n  c: {instruction: Rate it, scale: [1, 5], min_rho: 0.3}\n")
    records = load_dataset(load_spec(spec_file)).records
    assert records[0].ratings["c"] == (1.0, 2.0, 2.0) and records[0].human["c"] == 2.0
    assert records[1].ratings["c"] == (2.0, 3.0, None) and records[1].human["c"] == 2.0  # a tie: nearest the median 2.5, lower
    rows[4]["meta"]["ratings"]["c"][0] = 9
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SpecError) as caught:
        load_dataset(load_spec(spec_file))
    assert caught.value.problems == [f"{tmp_path / 'data.jsonl'}:5: meta.ratings.c: annotator 1's score 9 is outside the "
                                     "scale [1, 5]. Fix: write a list of scores on the criterion's scale, null where an "
                                     "annotator did not rate"]
