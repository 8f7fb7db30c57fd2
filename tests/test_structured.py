"""Structured judge replies: the schema per scale type, and what reaches the provider and comes back (scripted server)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pytest_judgeopt.cache import Cache
from pytest_judgeopt.llm import LLM
from pytest_judgeopt.session import Session
from pytest_judgeopt.spec import Criterion
from pytest_judgeopt.structured import (
    judgment_schema,
    longest_reply,
    response_format,
    violation,
)
from tests.conftest import make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer, Reply, response_format_problem

RESULTS_SCHEMA = Path(__file__).resolve().parents[1] / "pytest_judgeopt" / "schemas" / "results.schema.json"


def criterion(name: str, scale: tuple[float, float], integer: bool = True) -> Criterion:
    return Criterion(name, f"Rate the {name}.", scale, 0.3, 0.1, 1, integer=integer)


def test_an_integer_scale_is_an_enum_of_its_values() -> None:
    schema = judgment_schema([criterion("coherence", (1.0, 5.0))])
    assert schema == {"type": "object", "properties": {"coherence": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
                      "required": ["coherence"], "additionalProperties": False}


def test_a_continuous_scale_is_a_number_with_its_bounds() -> None:
    schema = judgment_schema([criterion("consistency", (0.0, 1.0), integer=False)])
    assert schema["properties"] == {"consistency": {"type": "number", "minimum": 0.0, "maximum": 1.0}}


def test_the_merged_schema_holds_every_criterion_in_order_and_is_strict() -> None:
    group = [criterion("coherence", (1.0, 5.0)), criterion("relevance", (0.0, 10.0)),
             criterion("consistency", (0.0, 1.0), integer=False)]
    request = response_format(group)
    assert request["type"] == "json_schema" and request["json_schema"]["strict"] is True
    schema = request["json_schema"]["schema"]
    assert list(schema["properties"]) == schema["required"] == ["coherence", "relevance", "consistency"]
    assert schema["properties"]["relevance"]["enum"] == list(range(11))
    assert response_format_problem(request) is None  # what OpenAI's strict mode accepts
    assert longest_reply(schema) == '{"coherence": 1, "relevance": 10, "consistency": 99999999}'


@pytest.mark.parametrize(("reply", "broken"), [
    ('{"coherence": 4}', None),
    ("Rating: 4", None),  # ignored the schema: parsed as text, not a violation
    ('{"coherence": 4.5}', "coherence: 4.5 is not of type 'integer'; coherence: 4.5 is not one of [1, 2, 3, 4, 5]"),
    ('{"coherence": "4"}', "coherence: '4' is not of type 'integer'; coherence: '4' is not one of [1, 2, 3, 4, 5]"),
    ('{"coherence": 4, "reason": "fine"}', "Additional properties are not allowed ('reason' was unexpected)"),
    ('{"score": 4}', "'coherence' is a required property; Additional properties are not allowed ('score' was unexpected)"),
])
def test_violation_names_what_breaks_the_schema(reply: str, broken: str | None) -> None:
    found = violation(reply, judgment_schema([criterion("coherence", (1.0, 5.0))]))
    if broken is None:
        assert found is None
    else:
        assert found == f"the reply breaks the requested JSON schema: {broken}"


# -- against the scripted server ------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Any]:
    def make(server: FakeLLMServer, judge: str, model: str = "openai/fake-judge") -> Path:
        records = make_records()
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        spec = tmp_path / "toy.judge.yaml"
        spec.write_text(spec_text({**server_model(server), "name": model}, extra=f"judge: {judge}\n"))
        return spec

    yield make


def session_for(tmp_path: Path, concurrency: int = 8) -> Session:
    return Session(LLM(cache=Cache(tmp_path / "cache"), backoff=0.01, retries=1, concurrency=concurrency))


def human_json(body: dict[str, Any]) -> str:
    """The human scores of the sample in the prompt, as the JSON object the schema asks for."""
    records = {r["summary"]: r for r in make_records()}
    prompt = body["messages"][-1]["content"]
    record = records[re.search(r"<summary>\n(.*?)\n</summary>", prompt, re.DOTALL).group(1)]
    names = body["response_format"]["json_schema"]["schema"]["required"] if body.get("response_format") else ["coherence", "fluency"]
    return json.dumps({name: int(record["scores"][name]) for name in names})


def test_structured_true_asks_every_judge_call_for_the_schema_and_scores_equal_the_served_ones(
        fake_llm: FakeLLMServer, project: Any, tmp_path: Path) -> None:
    fake_llm.responder = human_json
    spec = project(fake_llm, "{structured: true}")
    session = session_for(tmp_path)
    try:
        separate = session.evaluate(spec)
        check = session.interference(spec)
    finally:
        session.close()
    bodies = fake_llm.chat_requests()
    n = separate["coherence"].n
    assert n >= 8 and len(bodies) == 3 * n  # per test sample: 2 separate calls and 1 merged call
    for body in bodies:
        request = body["response_format"]
        assert request["type"] == "json_schema" and request["json_schema"]["strict"] is True
        asked = request["json_schema"]["schema"]["required"]
        assert asked in (["coherence"], ["fluency"], ["coherence", "fluency"])
        assert "Answer with one JSON object" in body["messages"][-1]["content"]
    for shape in (separate, check.merged):
        for result in shape.values():
            assert result.failed_count == 0 and result.n == n
            assert all(j.score == j.human for j in result.judgments)  # served = parsed
            assert result.scoring == {"weighted": 0, "parsed": n}


def test_the_schema_is_part_of_the_cache_key(fake_llm: FakeLLMServer, project: Any, tmp_path: Path) -> None:
    """The merged prompt is the same with and without structured output: only the schema tells the answers apart."""
    fake_llm.responder = human_json
    for setting, calls in (("true", 8), ("false", 8), ("true", 0)):
        spec = project(fake_llm, f"{{structured: {setting}}}\ninference: merged")
        session = session_for(tmp_path)
        try:
            session.evaluate(spec)
            assert session.llm.total().calls == calls, setting
        finally:
            session.close()


def test_auto_asks_for_the_schema_where_litellm_says_the_model_supports_it(
        fake_llm: FakeLLMServer, project: Any, tmp_path: Path) -> None:
    fake_llm.responder = human_json
    for model, structured in (("openai/gpt-4o-mini", True), ("openai/fake-judge", False)):
        fake_llm.reset()
        spec = project(fake_llm, "{structured: auto}\ninference: merged", model=model)
        session = session_for(tmp_path / model.replace("/", "-"))
        try:
            session.evaluate(spec)
        finally:
            session.close()
        assert all(("response_format" in body) == structured for body in fake_llm.chat_requests()), model


def test_a_reply_breaking_the_schema_is_a_failure_of_its_own_a_reply_ignoring_it_is_parsed(
        fake_llm: FakeLLMServer, project: Any, tmp_path: Path) -> None:
    # the reply depends on the sample in the prompt, not on the order concurrent calls arrive in
    replies = ['{"coherence": 7}', "coherence: 4", '{"coherence": 4.5}']
    position = {r["summary"]: i for i, r in enumerate(make_records())}

    def responder(body: dict[str, Any]) -> str:
        summary = re.search(r"<summary>\n(.*?)\n</summary>", body["messages"][-1]["content"], re.DOTALL)
        assert summary is not None
        return replies[position[summary.group(1)] % len(replies)]

    fake_llm.responder = responder
    spec = project(fake_llm, "{structured: true}")
    session = session_for(tmp_path)
    try:
        result = session.evaluate(spec, "coherence")
    finally:
        session.close()
    kinds = [(j.reply, j.failure, j.score) for j in result.judgments]
    assert ('{"coherence": 7}', "schema_violation", None) in kinds
    assert ('{"coherence": 4.5}', "schema_violation", None) in kinds
    assert ("coherence: 4", None, 4.0) in kinds
    broken = [j for j in result.judgments if j.reply != "coherence: 4"]
    assert result.failures == {"schema_violation": len(broken)} and all(j.failure == "schema_violation" for j in broken)
    assert all(j.detail.startswith("the reply breaks the requested JSON schema: coherence: ") for j in broken)


def tokens(*positions: Any) -> list[list[tuple[str, float]]]:
    """Per token: a text (certain) or a list of (text, probability), the chosen first."""
    out = []
    for position in positions:
        if isinstance(position, str):
            out.append([(position, 0.0)])
        else:
            out.append([(text, math.log(p)) for text, p in position])
    return out


def weighted_replies(body: dict[str, Any]) -> Reply:
    """The same replies for every sample, with served logprobs: separate coherence puts 0.2 on "9" (outside the
    scale), separate fluency is a two-token 2.5, merged fluency puts 0.3 on "x" (text)."""
    separate = {
        "coherence": Reply('{"coherence": 4}', tokens('{"', "coherence", '":', " ", [("4", .5), ("5", .3), ("9", .2)], "}")),
        "fluency": Reply("fluency: 2.5", tokens("fl", "uency", ":", [(" 2", .6), (" 3", .4)], ".", [("5", .5), ("0", .5)])),
    }
    merged = Reply('{"coherence": 3, "fluency": 1}',
                   tokens('{"', "coherence", '":', " ", [("3", .8), ("2", .2)], ",", ' "', "fluency", '":', " ",
                          [("1", .7), ("x", .3)], "}"))
    prompt = body["messages"][-1]["content"]
    if "Criteria:" in prompt:
        return merged
    return separate["coherence" if "Criterion: coherence" in prompt else "fluency"]


def test_weighted_scores_from_served_logprobs_in_both_shapes(fake_llm: FakeLLMServer, project: Any, tmp_path: Path) -> None:
    """Separate and merged replies are weighted by the same rule, each merged value at its own tokens, a
    two-token value over both of its tokens, with the probability outside the scale reported."""
    fake_llm.responder = weighted_replies
    spec = project(fake_llm, "{logprobs: true, structured: false}")
    session = session_for(tmp_path)
    try:
        results = session.evaluate(spec)
        check = session.interference(spec)
    finally:
        session.close()
    assert all(body["logprobs"] is True and body["top_logprobs"] == 5 for body in fake_llm.chat_requests())
    coherence, fluency = results["coherence"], results["fluency"]
    assert [j.score for j in coherence.judgments] == [pytest.approx((.5 * 4 + .3 * 5) / .8)] * coherence.n
    assert coherence.mass_outside_scale == pytest.approx(0.2)
    # " 2" then ".5" or ".0"; " 3" counts as 3: .6*.5*2.5 + .6*.5*2.0 + .4*3
    assert [j.score for j in fluency.judgments] == [pytest.approx(.3 * 2.5 + .3 * 2.0 + .4 * 3)] * fluency.n
    assert fluency.mass_outside_scale == pytest.approx(0.0, abs=1e-9)
    assert [j.score for j in check.merged["coherence"].judgments] == [pytest.approx(.8 * 3 + .2 * 2)] * check.merged["coherence"].n
    assert [j.score for j in check.merged["fluency"].judgments] == [pytest.approx(1.0)] * check.merged["fluency"].n
    assert check.merged["fluency"].mass_outside_scale == pytest.approx(0.3)
    for result in (coherence, fluency, *check.merged.values()):
        assert result.scoring == {"weighted": result.n, "parsed": 0}
        assert result.to_json()["scoring"] == {"weighted": result.n, "parsed": 0}
    assert session.notes == []


def test_results_json_says_each_shapes_scoring_and_mass_outside_the_scale_in_the_merged_check(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    """The ::merged check's entries (interference, and the merged comparison) carry per criterion how each shape
    was scored and how much probability fell outside the scale, as a criterion's own result does."""
    fake_llm.responder = weighted_replies
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_records()))
    (pytester.path / "toy.judge.yaml").write_text(spec_text(server_model(fake_llm),
                                                            extra="judge: {logprobs: true, structured: false}\n"))
    pytester.runpytest("--judge-report=out", "-k", "merged")
    results = json.loads((pytester.path / "out" / "results.json").read_text())
    jsonschema.Draft202012Validator(json.loads(RESULTS_SCHEMA.read_text())).validate(results)
    (check,) = results["interference"]
    by_name = {c["criterion"]: c for c in check["criteria"]}
    n = by_name["coherence"]["judged"]
    assert n > 0
    for c in by_name.values():
        assert c["scoring_separate"] == c["scoring_merged"] == {"weighted": n, "parsed": 0}
    assert by_name["coherence"]["mass_outside_scale_separate"] == pytest.approx(0.2)
    assert by_name["coherence"]["mass_outside_scale_merged"] == pytest.approx(0.0, abs=1e-9)
    assert by_name["fluency"]["mass_outside_scale_separate"] == pytest.approx(0.0, abs=1e-9)
    assert by_name["fluency"]["mass_outside_scale_merged"] == pytest.approx(0.3)
    (merged,) = [c for c in results["comparisons"] if c["kind"] == "merged"]
    fluency = next(c for c in merged["criteria"] if c["criterion"] == "fluency")
    assert fluency["scoring_b"] == {"weighted": n, "parsed": 0}
    assert fluency["mass_outside_scale_b"] == pytest.approx(0.3)
    assert fluency["mass_outside_scale_a"] == pytest.approx(0.0, abs=1e-9)


def test_a_provider_without_logprobs_is_named_once_and_the_parsed_scores_are_counted(
        fake_llm: FakeLLMServer, project: Any, tmp_path: Path) -> None:
    fake_llm.responder = lambda body: "4"
    fake_llm.serve_logprobs = False
    spec = project(fake_llm, "{logprobs: true}")
    session = session_for(tmp_path)
    try:
        results = session.evaluate(spec)
        session.interference(spec)
    finally:
        session.close()
    n = results["coherence"].n
    assert [j.score for r in results.values() for j in r.judgments] == [4.0] * 2 * n
    assert all(r.scoring == {"weighted": 0, "parsed": n} for r in results.values())
    (note,) = session.notes  # once, though both shapes came without them
    assert note.startswith(f"openai/fake-judge returned no token logprobs for {2 * n} of {2 * n} judge replies that "
                           "asked for them")
    assert "use the parsed score" in note


def test_a_sample_calls_stay_together_when_the_merged_check_follows(fake_llm: FakeLLMServer, project: Any,
                                                                    tmp_path: Path) -> None:
    """With the ::merged check ahead, the separate pass makes each sample's merged call right after its separate
    ones (a local model then evaluates the sample's prefix once), and the judgments are the same as apart."""
    fake_llm.responder = human_json
    spec = project(fake_llm, "{structured: true}")
    # one call at a time, so the calls reach the server in the order they were started
    apart, together = session_for(tmp_path / "apart", 1), session_for(tmp_path / "together", 1)
    together.merged_ahead.add(spec.resolve())
    try:
        fake_llm.reset()
        first = (apart.evaluate(spec), apart.interference(spec))
        fake_llm.reset()
        second = (together.evaluate(spec), together.interference(spec))
        order = [body["response_format"]["json_schema"]["schema"]["required"] for body in fake_llm.chat_requests()]
        summaries = [re.search(r"<summary>\n(.*?)\n</summary>", b["messages"][-1]["content"], re.DOTALL).group(1)
                     for b in fake_llm.chat_requests()]
    finally:
        apart.close()
        together.close()
    n = first[0]["coherence"].n
    assert order == [["coherence"], ["fluency"], ["coherence", "fluency"]] * n
    assert all(len(set(summaries[i:i + 3])) == 1 for i in range(0, len(summaries), 3))
    assert together.llm.total().calls == 3 * n
    for a, b in zip(first[0].values(), second[0].values(), strict=True):
        assert [(j.record_id, j.score) for j in a.judgments] == [(j.record_id, j.score) for j in b.judgments]
    assert first[1].to_json() == second[1].to_json()


def test_pytest_run_makes_each_samples_merged_call_next_to_its_separate_ones_only_when_merged_is_selected(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    records = make_records()
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (pytester.path / "toy.judge.yaml").write_text(spec_text(server_model(fake_llm), min_rho=0.2,
                                                            extra="judge: {structured: true}\ninterference: {inconclusive: pass}\n"))
    fake_llm.responder = human_json
    result = pytester.runpytest("-p", "no:randomly", "--judge-concurrency", "1", "--judge-cache", "off")
    result.assert_outcomes(passed=3)
    asked = [body["response_format"]["json_schema"]["schema"]["required"] for body in fake_llm.chat_requests()]
    assert asked == [["coherence"], ["fluency"], ["coherence", "fluency"]] * (len(asked) // 3)

    fake_llm.reset()
    result = pytester.runpytest("-p", "no:randomly", "--judge-cache", "off", "-k", "not merged")
    result.assert_outcomes(passed=2)
    assert all(len(body["response_format"]["json_schema"]["schema"]["required"]) == 1 for body in fake_llm.chat_requests())
