"""Label metrics and several annotators through the plugin, against the scripted server: a binary spec gated on
cohen_kappa, an error metric gated by max_error, and an annotator spec with the alternative annotator test and
``min_rho: humans`` (issue 14's done-when lines)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import server_model
from tests.fake_llm import FakeLLMServer, judge_answer, tagged


def binary_records(documents: int = 10, per: int = 4) -> list[dict[str, Any]]:
    """Each document has both labels; 40% of the summaries are consistent."""
    return [{"id": f"d{g}-s{i}", "group": f"d{g}", "source": f"Article {g}.", "summary": f"Summary {i} of article {g}.",
             "scores": {"consistency": 1 if (g + i) % 5 < 2 else 0}} for g in range(documents) for i in range(per)]


def binary_spec(server: FakeLLMServer, method: str = "cohen_kappa", threshold: str = "min_rho: 0.6") -> str:
    return (f"name: binary\nmodel: {json.dumps(server_model(server))}\n"
            "dataset:\n  path: data.jsonl\n  group: group\n  inputs: {source: source, summary: summary}\n  scores: scores\n"
            "split: {train: 0.2, val: 0.2, test: 0.6, seed: 1}\n"
            f"correlation: {{method: {method}}}\n"
            "criteria:\n  consistency:\n    instruction: Answer 1 if every fact in the summary is in the article, else 0.\n"
            f"    scale: [0, 1]\n    {threshold}\n")


def by_summary(records: list[dict[str, Any]], score: Any) -> Any:
    """A judge that answers ``score(record)`` for the record whose summary the prompt shows."""
    known = {r["summary"]: r for r in records}
    return lambda body: judge_answer(body, lambda c: score(known[tagged(body, "summary")]))


def write(pytester: pytest.Pytester, spec: str, records: list[dict[str, Any]], name: str = "binary.judge.yaml") -> None:
    Path(pytester.path, "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    Path(pytester.path, name).write_text(spec)


def test_a_binary_spec_on_cohen_kappa_passes_an_agreeing_judge_and_names_the_metric(pytester: pytest.Pytester,
                                                                                      fake_llm: FakeLLMServer) -> None:
    records = binary_records()
    fake_llm.responder = by_summary(records, lambda r: r["scores"]["consistency"])
    write(pytester, binary_spec(fake_llm), records)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "SpecWarning" not in out  # kappa fits a two-label scale
    row = next(line for line in out.splitlines() if line.strip().startswith("consistency") and "pass" in line)
    assert "cohen_kappa" in row and "1.000" in row
    found = re.search(r"consistency: confusion, rows human, columns judge \(0, 1\): 0: \[(\d+), (\d+)\]; 1: \[(\d+), (\d+)\]",
                      out)
    assert found, out
    agree_0, off_01, off_10, agree_1 = (int(n) for n in found.groups())
    assert off_01 == off_10 == 0 and agree_0 > 0 and agree_1 > 0


def test_a_binary_spec_on_cohen_kappa_fails_a_reversed_judge(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    records = binary_records()
    fake_llm.responder = by_summary(records, lambda r: 1 - r["scores"]["consistency"])
    write(pytester, binary_spec(fake_llm), records)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert re.search(r"cohen_kappa -0\.9\d\d is below min_rho 0\.60 by 1\.5\d\d", out), out
    row = next(line for line in out.splitlines() if line.strip().startswith("consistency") and "FAIL" in line)
    assert "cohen_kappa" in row
    confusion = next(line for line in out.splitlines() if "confusion, rows human, columns judge (0, 1)" in line)
    assert re.search(r"0: \[0, [1-9]\d*\]; 1: \[[1-9]\d*, 0\]", confusion), confusion  # every label swapped


def test_the_confusion_matrix_and_the_metric_are_in_results_json(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    records = binary_records()
    fake_llm.responder = by_summary(records, lambda r: r["scores"]["consistency"])
    write(pytester, binary_spec(fake_llm, "f1", "min_agreement: 0.9"), records)
    pytester.runpytest("-p", "no:randomly", "--judge-report=out").assert_outcomes(passed=1)
    from importlib import resources

    import jsonschema

    report = json.loads(Path(pytester.path, "out", "results.json").read_text())
    schema = json.loads(resources.files("pytest_judgeopt").joinpath("schemas", "results.schema.json").read_text())
    jsonschema.validate(report, schema)
    result = report["evaluations"][0]["results"][0]
    assert result["method"] == "f1" and result["value"] == 1.0 and result["higher_is_better"] is True
    matrix = result["confusion"]["matrix"]
    assert result["confusion"]["labels"] == [0, 1] and matrix[0][1] == matrix[1][0] == 0
    assert matrix[0][0] + matrix[1][1] == result["pairs"]
    page = Path(pytester.path, "out", "index.html").read_text()
    assert "Confusion matrix" in page and "judge 1" in page


def test_an_error_metric_gates_with_max_error_and_says_lower_is_better(pytester: pytest.Pytester,
                                                                        fake_llm: FakeLLMServer) -> None:
    records = [{**r, "scores": {"consistency": 1 + (i * 3) % 5}} for i, r in enumerate(binary_records())]
    fake_llm.responder = by_summary(records, lambda r: min(5, r["scores"]["consistency"] + 1))  # one point high where it can
    spec = binary_spec(fake_llm, "mae", "max_error: 0.5").replace("scale: [0, 1]", "scale: [1, 5]")
    write(pytester, spec, records)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "is above max_error 0.50 by" in out and "(lower is better)" in out
    assert "<= 0.50" in out  # the threshold column


# --------------------------------------------------------------------------------------------
# several annotators


def annotator_records(items: int = 60, seed: int = 4) -> list[dict[str, Any]]:
    """Three experts who mostly agree: each is the item's true score, one point off a quarter of the time."""
    rng = random.Random(seed)
    out = []
    for i in range(items):
        truth = 1 + i % 5
        ratings = [min(5, max(1, truth + rng.choice([-1, 0, 0, 0, 0, 0, 1]))) for _ in range(3)]
        if i % 17 == 0:
            ratings[2] = None  # an expert who did not rate this one
        out.append({"id": f"s{i}", "group": f"d{i}", "source": f"Article {i}.", "summary": f"Summary of article {i}.",
                    "experts": {"consistency": ratings}})
    return out


def annotator_spec(server: FakeLLMServer, gate: str = "alt_test", threshold: str = "") -> str:
    return (f"name: experts\nmodel: {json.dumps(server_model(server))}\n"
            "dataset:\n  path: data.jsonl\n  group: group\n  inputs: {source: source, summary: summary}\n"
            "  annotators: experts\n"
            "split: {train: 0.0, val: 0.0, test: 1.0, seed: 1}\n"
            f"correlation: {{method: spearman, gate: {gate}, epsilon: 0.2}}\n"
            "criteria:\n  consistency:\n    instruction: Rate the consistency from 1 to 5.\n"
            f"    scale: [1, 5]\n{threshold}")


def consensus(record: dict[str, Any]) -> int:
    given = [v for v in record["experts"]["consistency"] if v is not None]
    return round(sum(given) / len(given))


def test_an_alt_test_spec_passes_a_judge_that_follows_the_experts_consensus(pytester: pytest.Pytester,
                                                                          fake_llm: FakeLLMServer) -> None:
    records = annotator_records()
    fake_llm.responder = by_summary(records, consensus)
    write(pytester, annotator_spec(fake_llm), records, "experts.judge.yaml")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "consistency: humans' leave-one-out spearman" in out and "(3 annotators, 60 items" in out
    assert "the judge against the same references" in out
    assert "winning rate 1.00 (pass, needs 0.5)" in out
    assert out.count("judge wins") == 3


def test_an_alt_test_spec_fails_a_random_judge_and_says_against_whom(pytester: pytest.Pytester,
                                                                     fake_llm: FakeLLMServer) -> None:
    records = annotator_records()
    rng = random.Random(11)
    answers = {r["summary"]: rng.randint(1, 5) for r in records}
    fake_llm.responder = lambda body: judge_answer(body, lambda c: answers[tagged(body, "summary")])
    write(pytester, annotator_spec(fake_llm), records, "experts.judge.yaml")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "the alternative annotator test fails: the judge wins against 0 of 3 annotators (winning rate 0.00" in out
    assert "consistency: humans' leave-one-out spearman" in out
    assert out.count("judge does not win") >= 3


def test_min_rho_humans_holds_the_judge_to_the_experts_agreement(pytester: pytest.Pytester,
                                                                 fake_llm: FakeLLMServer) -> None:
    records = annotator_records()
    rng = random.Random(2)
    noisy = {r["summary"]: min(5, max(1, consensus(r) + rng.choice([-2, -1, 0, 1, 2]))) for r in records}
    fake_llm.responder = lambda body: judge_answer(body, lambda c: noisy[tagged(body, "summary")])
    write(pytester, annotator_spec(fake_llm, "point", "    min_rho: {humans: -0.05}\n"), records, "experts.judge.yaml")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "the judge's leave-one-out spearman" in out and "(min_rho: humans; both against the same leave-one-out" in out
    fake_llm.responder = by_summary(records, consensus)
    result = pytester.runpytest("-p", "no:randomly", "--judge-cache=off")
    result.assert_outcomes(passed=1)


def test_fewer_than_three_annotators_fail_the_alt_test_with_the_reason(pytester: pytest.Pytester,
                                                                       fake_llm: FakeLLMServer) -> None:
    records = annotator_records()
    for r in records:
        r["experts"]["consistency"] = r["experts"]["consistency"][:2]
    fake_llm.responder = by_summary(records, consensus)
    write(pytester, annotator_spec(fake_llm), records, "experts.judge.yaml")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=1)
    assert "needs at least 3 annotators, and 2 rated these items" in result.stdout.str()
