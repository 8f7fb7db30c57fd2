"""The val gate's rules on measured values, without a model: the fast checks of each rule (issue 11).

The end-to-end behaviour (what the gate judges, and what a run keeps) is in test_optimize.py; here the
decision functions meet the edge cases one at a time: ties, undefined values, tolerance, failed
judgments, the combination kept, and the list of checks another check extends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from pytest_judgeopt.judge import Judgment
from pytest_judgeopt.optimize import gate
from pytest_judgeopt.optimize.gate import (
    REJECTED,
    GateContext,
    Measured,
    choose,
    combination,
    confirm,
    gate_level,
    measure_judgments,
    shared_documents,
)
from pytest_judgeopt.spec import Gate

C = ["coherence", "fluency"]


def ctx(rule: str, *, metric: str = "spearman", tolerance: float = 0.0, allowed: float = 0.1) -> GateContext:
    return GateContext(Gate(metric=metric, rule=rule, tolerance=tolerance), dict.fromkeys(C, allowed), C)


def m(values: Mapping[str, float | None], failed: Mapping[str, int] | None = None, judged: int = 20) -> Measured:
    return Measured(dict(values), {c: (failed or {}).get(c, 0) for c in values}, dict.fromkeys(values, judged))


@pytest.mark.parametrize("rule", ["per_criterion", "no_regression"])
def test_a_tie_is_no_gain_under_both_rules(rule: str) -> None:
    before = m({"coherence": 0.5, "fluency": 0.5})
    decision = choose(ctx(rule), before, before, ["coherence"])
    assert decision.keep == [] and "does not improve (0.500 -> 0.500)" in decision.reasons["coherence"]
    assert choose(ctx(rule), before, m({"coherence": 0.51, "fluency": 0.5}), ["coherence"]).keep == ["coherence"]


@pytest.mark.parametrize("rule", ["per_criterion", "no_regression"])
def test_undefined_before_and_after_is_no_evidence_and_defined_beats_undefined(rule: str) -> None:
    undefined = m({"coherence": None, "fluency": 0.5})
    decision = choose(ctx(rule), undefined, undefined, ["coherence"])
    assert decision.keep == [] and "undefined before and after: no evidence" in decision.reasons["coherence"]
    assert choose(ctx(rule), undefined, m({"coherence": -0.2, "fluency": 0.5}), ["coherence"]).keep == ["coherence"]
    dropped = choose(ctx(rule), m({"coherence": 0.2, "fluency": 0.5}), m({"coherence": None, "fluency": 0.5}),
                     ["coherence"])
    assert dropped.keep == [] and "from 0.200 to undefined" in dropped.reasons["coherence"]


def test_an_unproposed_criterion_undefined_both_times_does_not_block() -> None:
    before = m({"coherence": 0.3, "fluency": None})
    after = m({"coherence": 0.6, "fluency": None})
    assert choose(ctx("no_regression"), before, after, ["coherence"]).keep == ["coherence"]


def test_tolerance_bounds_a_drop_and_mae_is_lower_is_better() -> None:
    before = m({"coherence": 0.5, "fluency": 0.8})
    after = m({"coherence": 0.7, "fluency": 0.76})
    assert choose(ctx("no_regression"), before, after, ["coherence"]).keep == []
    assert choose(ctx("no_regression", tolerance=0.05), before, after, ["coherence"]).keep == ["coherence"]
    before, after = m({"coherence": 1.2, "fluency": 0.8}), m({"coherence": 0.9, "fluency": 1.0})  # mae
    reasons = choose(ctx("no_regression", metric="mae"), before, after, ["coherence"]).reasons
    assert reasons["coherence"] == f"{REJECTED}: fluency val mae would worsen from 0.800 to 1.000 (tolerance 0)"


def test_failed_judgments_rising_beyond_the_allowed_rate_veto_every_rule() -> None:
    before = m({"coherence": 0.4, "fluency": 0.5})
    easy_only = m({"coherence": 1.0, "fluency": 0.5}, failed={"coherence": 12})
    for rule in ("per_criterion", "no_regression", "mean"):
        decision = choose(ctx(rule), before, easy_only, ["coherence"])
        assert decision.keep == [], rule
        assert "coherence failed judgments would rise from 0/20 to 12/20 (60%), above the allowed 10%" in \
            decision.reasons["coherence"]
    within = m({"coherence": 0.6, "fluency": 0.5}, failed={"coherence": 2})  # 10%: allowed
    assert choose(ctx("per_criterion"), before, within, ["coherence"]).keep == ["coherence"]
    already = m({"coherence": 0.4, "fluency": 0.5}, failed={"coherence": 8})  # above the rate, but not rising
    assert choose(ctx("per_criterion"), already, m({"coherence": 0.6, "fluency": 0.5}, failed={"coherence": 8}),
                  ["coherence"]).keep == ["coherence"]


def test_mean_is_the_papers_rule_one_criterion_may_pay_for_another_and_a_tie_passes() -> None:
    before = m({"coherence": 0.2, "fluency": 0.8})
    assert choose(ctx("mean"), before, m({"coherence": 0.9, "fluency": 0.3}), C).keep == C
    assert choose(ctx("mean"), before, before, C).keep == C
    assert choose(ctx("mean"), before, m({"coherence": 0.3, "fluency": 0.6}), C).keep == []


def test_per_criterion_keeps_each_gain_and_confirm_rejects_what_harms_another_criterion() -> None:
    """Coherence gains on its own; in the merged prompt fluency falls. choose (per criterion) keeps coherence;
    confirm, on the same values, sees fluency's fall and keeps nothing."""
    before = m({"coherence": 0.3, "fluency": 0.59})
    after = m({"coherence": 0.6, "fluency": 0.156})
    chosen = choose(ctx("per_criterion"), before, after, ["coherence"])
    assert chosen.keep == ["coherence"]
    kept = combination(before, after, chosen.keep, ["coherence"], joint=True)
    assert kept is after  # all of the candidate is kept: its values are the combination's
    final = confirm(ctx("per_criterion"), before, kept, chosen, judged_again=False)
    assert final.keep == []
    assert final.reasons["coherence"] == f"{REJECTED}: fluency val spearman would fall from 0.590 to 0.156 (tolerance 0)"


def test_the_combination_of_a_partial_acceptance() -> None:
    before = m({"coherence": 0.3, "fluency": 0.6})
    after = m({"coherence": 0.7, "fluency": 0.4}, failed={"fluency": 1})
    chosen = choose(ctx("per_criterion"), before, after, C)
    assert chosen.keep == ["coherence"] and set(chosen.reasons) == {"fluency"}
    assert combination(before, after, chosen.keep, C, joint=True) is None  # a merged prompt: judge it
    separate = combination(before, after, chosen.keep, C, joint=False)  # separate prompts: known
    assert separate is not None and separate.value == {"coherence": 0.7, "fluency": 0.6}
    assert separate.failed == {"coherence": 0, "fluency": 0}
    judged_again = m({"coherence": 0.7, "fluency": 0.2})
    final = confirm(ctx("per_criterion"), before, judged_again, chosen, judged_again=True)
    assert final.keep == []
    assert final.reasons["coherence"].startswith(f"{REJECTED}: kept without fluency's rewrite, fluency val spearman")
    assert final.reasons["fluency"] == chosen.reasons["fluency"]
    fine = m({"coherence": 0.7, "fluency": 0.6})
    assert confirm(ctx("per_criterion"), before, fine, chosen, judged_again=True).keep == ["coherence"]
    lost = m({"coherence": 0.3, "fluency": 0.6})  # judged alone, coherence's gain is gone
    assert confirm(ctx("per_criterion"), before, lost, chosen, judged_again=True).keep == []


def test_gate_metric_none_keeps_every_proposal() -> None:
    before = m({"coherence": None, "fluency": None})
    assert choose(ctx("per_criterion", metric="none"), before, before, C).keep == C


def test_measure_counts_failed_judgments_beside_the_agreement_of_those_that_parsed() -> None:
    def j(i: int, score: float | None, human: float) -> Judgment:
        return Judgment(f"r{i}", "g", "coherence", human, score, None if score is not None else "refusal", "", None)

    humans = [1, 2, 3, 4, 5, 1, 5]
    js = [j(i, h if h in (1, 5) else None, h) for i, h in enumerate(humans)]
    measured = measure_judgments({"coherence": js}, "spearman")
    assert measured.value["coherence"] == pytest.approx(1.0)
    assert (measured.failed, measured.judged) == ({"coherence": 3}, {"coherence": 7})
    assert measured.rate("coherence") == pytest.approx(3 / 7)
    assert measure_judgments({"coherence": js[:2]}, "spearman").value["coherence"] is None  # under 3 pairs


def test_a_new_check_is_one_function_in_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension point another check (spec cases) uses: asked about every criterion, its reason vetoes."""
    def no_fluency_change(context: GateContext, before: Measured, after: Measured, c: str) -> str | None:
        return "fluency must stay put" if c == "fluency" and after.value[c] != before.value[c] else None

    monkeypatch.setattr(gate, "CHECKS", [*gate.CHECKS, no_fluency_change])
    before, after = m({"coherence": 0.3, "fluency": 0.5}), m({"coherence": 0.6, "fluency": 0.52})
    decision = choose(ctx("no_regression"), before, after, ["coherence"])
    assert decision.keep == [] and decision.reasons["coherence"] == f"{REJECTED}: fluency must stay put"


# ---------------------------------------------------------------------------------------------
# the level: the gate measures as the items do (correlation.level), on the documents both have a value in


def doc_judgments(scores: Mapping[str, list[float | None]], humans: Mapping[str, list[float]]) -> list[Judgment]:
    """One criterion's judgments, document by document (``scores[doc][i]`` against ``humans[doc][i]``)."""
    return [Judgment(f"{doc}-s{i}", doc, "coherence", h, s, None if s is not None else "refusal", "", None)
            for doc in scores for i, (s, h) in enumerate(zip(scores[doc], humans[doc], strict=True))]


HUMANS = {"d0": [1.0, 4.0, 2.0], "d1": [3.0, 1.0, 4.0], "d5": [1.0, 4.0, 2.0], "d6": [3.0, 1.0, 4.0],
          "d14": [4.0, 2.0, 5.0]}
# right in every document's order, each document in a band of its own: per document 1.0, pooled 0.454
IN_BANDS = {"d0": [1.0, 3.0, 2.0], "d1": [4.0, 3.0, 5.0], "d5": [3.0, 5.0, 4.0], "d6": [2.0, 1.0, 3.0],
            "d14": [2.0, 1.0, 3.0]}
# the human scores with each document's two lowest swapped: per document 0.5, pooled 0.495
SWAPPED = {"d0": [2.0, 4.0, 1.0], "d1": [1.0, 3.0, 4.0], "d5": [2.0, 4.0, 1.0], "d6": [1.0, 3.0, 4.0],
           "d14": [2.0, 4.0, 5.0]}


def test_the_gate_measures_at_the_items_level_and_pooled_and_per_document_can_decide_differently() -> None:
    """Issue 11, found 13: the gate used pooled rho even where the items average per-document values. Here the
    rewrite gains pooled (0.454 -> 0.495) and loses per document (1.000 -> 0.500)."""
    before, after = doc_judgments(IN_BANDS, HUMANS), doc_judgments(SWAPPED, HUMANS)
    pooled = [measure_judgments({"coherence": js}, "spearman") for js in (before, after)]
    grouped = [measure_judgments({"coherence": js}, "spearman", level="group") for js in (before, after)]
    assert [x.value["coherence"] for x in pooled] == [pytest.approx(0.454, abs=1e-3), pytest.approx(0.495, abs=1e-3)]
    assert [x.value["coherence"] for x in grouped] == [pytest.approx(1.0), pytest.approx(0.5)]
    assert grouped[0].documents["coherence"] == pytest.approx(dict.fromkeys(HUMANS, 1.0))
    one = ["coherence"]
    context = GateContext(Gate(metric="spearman", rule="per_criterion"), {"coherence": 0.1}, one)
    assert choose(context, *pooled, one).keep == one
    rejected = choose(context, *grouped, one)
    assert rejected.keep == [] and "would fall from 1.000 to 0.500" in rejected.reasons["coherence"]


def test_documents_are_skipped_for_before_and_after_together() -> None:
    """A rewrite that turns the judge constant in the documents where it was wrong would, on its own documents,
    score 1.0 against 0.2 and be kept; on the documents both have a value in it gains nothing."""
    wrong = {"d0": [3.0, 1.0, 2.0], "d1": [2.0, 3.0, 1.0]}  # reversed: the humans say d0 1, 4, 2 and d1 3, 1, 4
    before = doc_judgments({**IN_BANDS, **wrong}, HUMANS)
    after = doc_judgments({**IN_BANDS, "d0": [3.0] * 3, "d1": [3.0] * 3}, HUMANS)
    b, a = (measure_judgments({"coherence": js}, "spearman", level="group") for js in (before, after))
    assert b.value["coherence"] == pytest.approx((3 * 1.0 - 2 * 1.0) / 5)
    assert a.value["coherence"] == pytest.approx(1.0) and set(a.documents["coherence"]) == {"d5", "d6", "d14"}
    shared_b, shared_a = shared_documents(b, a)
    assert shared_b.value["coherence"] == shared_a.value["coherence"] == pytest.approx(1.0)
    context = GateContext(Gate(metric="spearman", rule="per_criterion"), {"coherence": 0.1}, ["coherence"])
    decision = choose(context, b, a, ["coherence"])
    assert decision.keep == [] and "does not improve (1.000 -> 1.000)" in decision.reasons["coherence"]
    # no document in common: no evidence either way
    none_b, none_a = shared_documents(Measured({"coherence": 1.0}, documents={"coherence": {"d0": 1.0}}),
                                      Measured({"coherence": 1.0}, documents={"coherence": {"d1": 1.0}}))
    assert none_b.value["coherence"] is None and none_a.value["coherence"] is None


def test_the_level_is_the_items_where_there_are_documents(tmp_path: Path) -> None:
    from pytest_judgeopt.spec import load_spec
    from tests.conftest import make_records, spec_text

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_records()))
    (tmp_path / "g.judge.yaml").write_text(spec_text(None, extra="correlation: {level: group}\n"))
    (tmp_path / "p.judge.yaml").write_text(spec_text(None))
    assert gate_level(load_spec(tmp_path / "g.judge.yaml")) == "group"
    assert gate_level(load_spec(tmp_path / "p.judge.yaml")) == "pooled"
