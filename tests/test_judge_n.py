"""judge.n > 1: every reply counts (issue 11, "Parser"). The score is the mean of the replies that parsed, and
each failed reply is counted: in the item's failure rate, results.json, the ::merged check and the optimizer's
val gate. Four refusals and one "5" are the score 5 with four failed replies, never a clean 5."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.judge import Judgment, assess, combine, failed_replies, replies
from pytest_judgeopt.optimize.gate import GateContext, Measured, failures_rise, measure_judgments
from pytest_judgeopt.replies import Choice
from pytest_judgeopt.spec import Spec, load_spec
from tests.conftest import make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer

REFUSAL = "I'm sorry, but I can't help with that."


def toy_spec(folder: Path, **spec_args: Any) -> Spec:
    (folder / "data.jsonl").write_text("")
    (folder / "toy.judge.yaml").write_text(spec_text(None, **spec_args))
    return load_spec(folder / "toy.judge.yaml")


def choices(*texts: str) -> list[Choice]:
    return [Choice(text, "stop") for text in texts]


def test_four_refusals_and_one_five_are_the_score_five_with_four_failed_replies(tmp_path: Path) -> None:
    spec = toy_spec(tmp_path, criteria=("coherence",))
    score = combine(choices(REFUSAL, REFUSAL, "5", REFUSAL, REFUSAL), [spec.criteria["coherence"]], "separate", 0)
    found = score["coherence"]
    assert (found.value, found.parsed.failure, found.failed) == (5.0, None, ("refusal",) * 4)


def test_every_reply_failing_is_a_failure_with_each_reply_counted(tmp_path: Path) -> None:
    spec = toy_spec(tmp_path, criteria=("coherence",))
    score = combine(choices(REFUSAL, "There are 2 factual errors.", ""), [spec.criteria["coherence"]], "separate", 0)
    found = score["coherence"]
    assert (found.value, found.parsed.failure) == (None, "refusal")  # the judgment's kind: its first reply's
    assert found.failed == ("refusal", "unmarked_number", "empty")


def test_the_mean_is_over_the_replies_that_parsed_and_none_failed_counts_nothing(tmp_path: Path) -> None:
    spec = toy_spec(tmp_path, criteria=("coherence",))
    group = [spec.criteria["coherence"]]
    assert combine(choices("coherence: 2", REFUSAL, "coherence: 4"), group, "separate", 0)["coherence"].value == 3.0
    clean = combine(choices("2", "4"), group, "separate", 0)["coherence"]
    assert (clean.value, clean.failed) == (3.0, ())


def test_a_merged_reply_counts_its_failed_replies_per_criterion(tmp_path: Path) -> None:
    spec = toy_spec(tmp_path, criteria=("coherence", "fluency"))
    group = [spec.criteria["coherence"], spec.criteria["fluency"]]
    scores = combine(choices('{"coherence": 4, "fluency": 2}', REFUSAL, '{"coherence": 2}'), group, "merged", 0)
    assert (scores["coherence"].value, scores["coherence"].failed) == (3.0, ("refusal",))
    assert (scores["fluency"].value, scores["fluency"].failed) == (2.0, ("refusal", "missing_criterion"))


def judgments_of_five(scored: int, failed_each: int, failed_whole: int = 0) -> list[Judgment]:
    """``scored`` judgments of 5 replies with ``failed_each`` refusals among them, and ``failed_whole`` that failed."""
    out = [Judgment(f"r{i}", f"g{i % 4}", "coherence", float(1 + i % 5), float(1 + i % 5), None, "", "5",
                    replies=5, failed_replies=("refusal",) * failed_each) for i in range(scored)]
    out += [Judgment(f"f{i}", f"g{i % 4}", "coherence", 3.0, None, "refusal", "the judge refused", REFUSAL,
                     replies=5, failed_replies=("refusal",) * 5) for i in range(failed_whole)]
    return out


def test_a_judgment_without_its_replies_fails_as_a_whole() -> None:
    one = Judgment("r", "g", "c", 3.0, None, "no_score", "no number in the reply", "fine")
    assert (one.replies, one.reply_failures) == (1, ("no_score",))
    ok = Judgment("r", "g", "c", 3.0, 3.0, None, "", "3")
    assert ok.reply_failures == ()
    assert failed_replies([one, ok]) == Counter({"no_score": 1}) and replies([one, ok]) == 2


def test_the_items_failure_rate_counts_failed_replies_and_says_so(tmp_path: Path) -> None:
    spec = toy_spec(tmp_path, criteria=("coherence",))  # max_parse_failure_rate 0.1
    result = assess(spec, spec.criteria["coherence"], judgments_of_five(10, 4), split="test", shape="separate",
                    instruction="Rate it.")
    assert result.failures == Counter({"refusal": 40}) and (result.failed_count, result.replies) == (40, 50)
    assert not result.passed
    assert "40/50 replies of 10 judgments failed (80%), above the allowed 10%" in result.reasons
    shown = result.to_json()
    assert (shown["parse_failures"], shown["replies"], shown["n"]) == ({"refusal": 40}, 50, 10)


def test_one_failed_reply_of_five_per_judgment_stays_within_a_quarter(tmp_path: Path) -> None:
    spec = toy_spec(tmp_path, criteria=("coherence",), extra="judge: {n: 5, max_parse_failure_rate: 0.25}\n")
    result = assess(spec, spec.criteria["coherence"], judgments_of_five(10, 1), split="test", shape="separate",
                    instruction="Rate it.")
    assert result.failed_count == 10 and not any("failed (" in reason for reason in result.reasons)


def test_the_optimizer_gate_counts_failed_replies() -> None:
    before = measure_judgments({"coherence": judgments_of_five(10, 0)}, "spearman")
    after = measure_judgments({"coherence": judgments_of_five(10, 4)}, "spearman")
    assert (before.failed, before.judged) == ({"coherence": 0}, {"coherence": 50})
    assert (after.failed, after.judged) == ({"coherence": 40}, {"coherence": 50})
    assert after.value["coherence"] == before.value["coherence"]  # the parsed scores alone would hide the rise
    ctx = GateContext(gate=None, allowed={"coherence": 0.1}, criteria=["coherence"])  # type: ignore[arg-type]
    assert failures_rise(ctx, before, after, "coherence") == (
        "coherence failed judgments would rise from 0/50 to 40/50 (80%), above the allowed 10%")
    assert failures_rise(ctx, Measured({"coherence": 0.5}), before, "coherence") is None


def four_refusals_then(answer: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
    """A responder giving each prompt 4 refusals and one answer among its n: 5 replies (the server asks the
    responder once per reply of a request, in order; requests run in threads, hence the lock)."""
    asked: Counter[str] = Counter()
    lock = threading.Lock()

    def respond(body: dict[str, Any]) -> str:
        key = json.dumps(body["messages"])
        with lock:
            asked[key] += 1
            turn = asked[key]
        return answer(body) if turn % 5 == 3 else REFUSAL

    return respond


def write_project(folder: Path, server: FakeLLMServer, criteria: tuple[str, ...], extra: str) -> list[dict[str, Any]]:
    records = make_records(criteria=criteria)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "toy.judge.yaml").write_text(spec_text(server_model(server), criteria=criteria, min_rho=-1.0, extra=extra))
    return records


def test_with_n_5_four_refusals_per_sample_fail_the_item_on_its_failure_rate_cached_or_not(
        pytester: pytest.Pytester) -> None:
    with FakeLLMServer(four_refusals_then(lambda body: "5")) as server:
        write_project(pytester.path, server, ("coherence",),
                      "judge: {n: 5, temperature: 0.7, structured: false, logprobs: false}\ninterference: false\n")
        runs = [pytester.runpytest(f"--judge-report=out{i}", "--judge-cache-dir=cache") for i in range(2)]
        calls = len(server.chat_requests())
    for i, result in enumerate(runs):
        out = result.stdout.str()
        result.assert_outcomes(failed=1)
        evaluation = json.loads((pytester.path / f"out{i}" / "results.json").read_text())["evaluations"][0]
        shown = evaluation["results"][0]
        n = shown["n"]
        assert n > 0 and shown["replies"] == 5 * n and shown["parse_failures"] == {"refusal": 4 * n}
        assert f"{4 * n}/{5 * n} replies of {n} judgments failed (80%), above the allowed 10%" in out
        assert f"failed replies: {4 * n}/{5 * n} (refusal {4 * n})" in out
        rows = [json.loads(line) for line in (pytester.path / f"out{i}" / "predictions.jsonl").read_text().splitlines()]
        assert {(r["judge"], r["failure"], r["replies"], tuple(r["failed_replies"])) for r in rows} == {
            (5.0, None, 5, ("refusal",) * 4)}
    assert calls == n  # the second run's answers came from the cache, replies and all: the same counts


def test_the_merged_check_counts_the_merged_prompts_failed_replies(pytester: pytest.Pytester) -> None:
    criteria = ("coherence", "fluency")
    by_summary = {r["summary"]: r for r in make_records(criteria=criteria)}

    def truth(body: dict[str, Any]) -> str:
        prompt = body["messages"][-1]["content"]
        record = next(r for s, r in by_summary.items() if f"<summary>\n{s}\n</summary>" in prompt)
        asked = [c for c in criteria if f"- {c}:" in prompt or f"Criterion: {c}" in prompt]
        if len(asked) == 1:
            return f"{asked[0]}: {record['scores'][asked[0]]:g}"
        return json.dumps({c: record["scores"][c] for c in asked})

    def respond(body: dict[str, Any]) -> str:  # separate prompts always answer; the merged one 1 reply in 5
        return merged(body) if "Criteria:" in body["messages"][-1]["content"] else truth(body)

    merged = four_refusals_then(truth)
    with FakeLLMServer(respond) as server:
        write_project(pytester.path, server, criteria,
                      "judge: {n: 5, temperature: 0.7, structured: false, logprobs: false}\n"
                      "interference: {inconclusive: pass}\n")
        result = pytester.runpytest("--judge-report=out", "--judge-cache=off")
    out = result.stdout.str()
    result.assert_outcomes(passed=2, failed=1)  # the separate items agree; the merged check fails on its replies
    check = json.loads((pytester.path / "out" / "results.json").read_text())["interference"][0]
    for c in check["criteria"]:
        n = c["judged"]
        assert (c["failures_separate"], c["replies_separate"]) == ({}, 5 * n)
        assert (c["failures_merged"], c["replies_merged"]) == ({"refusal": 4 * n}, 5 * n)
        assert c["verdict"] == "fail" and not c["passed"]
        assert any(f"{4 * n}/{5 * n} merged replies failed (80%), above the allowed 10%; separate prompts failed "
                   f"0/{5 * n}" in reason for reason in c["reasons"])
        assert f"{c['criterion']}: failed merged replies {4 * n}/{5 * n} (refusal {4 * n})" in out
