"""Cases: expectation parsing, spec checks, case items against the scripted server, and ``judge.score``."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.cases import ExpectationError, parse_expectation
from pytest_judgeopt.session import Session
from pytest_judgeopt.spec import SpecError
from tests.conftest import make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer, Reply, by_content

RECORDS = make_records()
JUMBLED = "Ends it the. Article begins then, summary of and 4 the."
TWO_CASES = f"""\
cases:
  - name: jumbled-low
    inputs: {{source: "Article 4. Facts 12.", summary: "{JUMBLED}"}}
    expect: {{coherence: [1, 2]}}
  - name: jumbled-high
    inputs: {{source: "Article 4. Facts 12.", summary: "{JUMBLED}"}}
    expect: {{coherence: [4, 5]}}
    note: deliberately wrong, to show a failing case
"""
LOW_COHERENCE = by_content([(r"Ends it the\.", {"coherence": 1, "fluency": 2})], default=4)


def write(pytester: pytest.Pytester, server: FakeLLMServer | None, extra: str = "", **spec_args: Any) -> Path:
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    model = server_model(server) if server is not None else None
    spec = pytester.path / "toy.judge.yaml"
    spec.write_text(spec_text(model, extra="interference: false\n" + extra, **spec_args))
    return spec


# --------------------------------------------------------------------------
# expectations


@pytest.mark.parametrize(("value", "inside", "outside"), [
    ([1, 2], [1, 1.5, 2], [0.99, 2.01, 5]),
    ("<= 2", [1, 2], [2.01, 3]),
    (">= 4", [4, 5], [3.99]),
    ("< 3", [1, 2.99], [3]),
    ("> 3", [3.01, 5], [3]),
    ("== 3", [3], [2, 4]),
    (3, [3], [2.9]),
    ("=4", [4], [3]),
    ([2.5, 2.5], [2.5], [2]),
])
def test_expectations_hold_for_exactly_the_scores_they_name(value: Any, inside: list[float], outside: list[float]) -> None:
    expectation = parse_expectation(value, (1, 5))
    assert all(expectation.holds(s) for s in inside)
    assert not any(expectation.holds(s) for s in outside)


@pytest.mark.parametrize(("value", "said"), [
    ([0, 2], "reaches outside the scale [1, 5]"),
    ([4, 6], "reaches outside the scale [1, 5]"),
    ([3, 2], "runs backwards"),
    ([1], "a range is two numbers"),
    ([1, "2"], "a range is two numbers"),
    ([True, 2], "a range is two numbers"),
    (">= 6", "6 is outside the scale [1, 5]"),
    ("about 3", "cannot read the expectation"),
    ("<= 5", "every score on the scale [1, 5] meets <= 5"),
    ([1, 5], "every score on the scale"),
    (">= 1", "every score on the scale"),
    ("< 1", "no score on the scale [1, 5] meets < 1"),
    ("> 5", "no score on the scale"),
    ({"low": 1}, "not dict"),
    (True, "not bool"),
])
def test_bad_expectations_say_what_is_wrong_and_the_fix(value: Any, said: str) -> None:
    with pytest.raises(ExpectationError) as caught:
        parse_expectation(value, (1, 5))
    assert said in caught.value.what
    assert caught.value.fix


def test_expectation_text_is_the_canonical_form() -> None:
    assert str(parse_expectation([1, 2], (1, 5))) == "[1, 2]"
    assert str(parse_expectation("<=2", (1, 5))) == "<= 2"
    assert str(parse_expectation(4, (1, 5))) == "== 4"
    assert str(parse_expectation(" >  3.5 ", (1, 5))) == "> 3.5"


# --------------------------------------------------------------------------
# case items


def test_a_case_that_holds_passes_and_one_that_does_not_fails_as_items_of_their_own(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = LOW_COHERENCE
    write(pytester, fake_llm, TWO_CASES, min_rho=-1.0)
    result = pytester.runpytest("-v", "-k", "case")
    result.assert_outcomes(passed=1, failed=1, deselected=2)
    result.stdout.fnmatch_lines(["*toy.judge.yaml::case?jumbled-low? PASSED*",
                                 "*toy.judge.yaml::case?jumbled-high? FAILED*"])
    out = result.stdout.str()
    assert "toy::case[jumbled-high] failed (separate prompts, instructions from spec" in out
    assert "FAIL coherence: expected [4, 5], the judge scored 1" in out
    assert 'reply: "coherence: 1"' in out
    assert "note: deliberately wrong" in out
    assert "Traceback" not in out
    # the same text, the same prompt: judged once, both cases in one pass
    assert len(fake_llm.chat_requests()) == 1


def test_case_ids_are_stable_and_selectable(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = LOW_COHERENCE
    write(pytester, fake_llm, TWO_CASES)
    collected = pytester.runpytest("--collect-only", "-q")
    collected.stdout.fnmatch_lines(["toy.judge.yaml::coherence", "toy.judge.yaml::fluency",
                                    "toy.judge.yaml::case[[]jumbled-low[]]", "toy.judge.yaml::case[[]jumbled-high[]]"])
    result = pytester.runpytest("-v", "toy.judge.yaml::case[jumbled-low]")
    result.assert_outcomes(passed=1)
    result = pytester.runpytest("-v", "-k", "jumbled and low")
    result.assert_outcomes(passed=1, deselected=3)


def test_only_the_selected_cases_are_judged(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = LOW_COHERENCE
    extra = """\
cases:
  - {name: one, inputs: {source: s, summary: first text}, expect: {coherence: ">= 3"}}
  - {name: two, inputs: {source: s, summary: second text}, expect: {coherence: ">= 3"}}
  - {name: three, inputs: {source: s, summary: third text}, expect: {coherence: ">= 3", fluency: ">= 3"}}
"""
    write(pytester, fake_llm, extra)
    pytester.runpytest("-k", "one or three").assert_outcomes(passed=2, deselected=3)
    asked = sorted(json.dumps(b["messages"][-1]["content"]) for b in fake_llm.chat_requests())
    assert len(asked) == 3  # one: coherence; three: coherence and fluency (separate prompts); two: none
    assert not any("second text" in a for a in asked)


def test_a_case_from_a_record_uses_its_texts_and_shows_the_human_score(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    record = RECORDS[5]
    fake_llm.responder = by_content([(record["summary"], 2)], default=5)
    extra = f"""\
cases:
  - {{name: from-record, record: {record['id']}, expect: {{fluency: ">= 4"}}}}
  - name: record-changed
    record: {record['id']}
    inputs: {{summary: "A different summary."}}
    expect: {{fluency: ">= 4"}}
"""
    write(pytester, fake_llm, extra)
    result = pytester.runpytest("-k", "record")
    result.assert_outcomes(passed=1, failed=1, deselected=2)
    out = result.stdout.str()
    human = record["scores"]["fluency"]
    assert f"FAIL fluency: expected >= 4, the judge scored 2 (human score {human:g})" in out
    assert f"record {record['id']}: source {json.dumps(record['source'])}" in out
    prompts = [b["messages"][-1]["content"] for b in fake_llm.chat_requests()]
    assert any(record["source"] in p and "A different summary." in p for p in prompts)


def test_a_failed_judgment_fails_the_case_with_its_reason(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = lambda body: "I cannot rate this."
    write(pytester, fake_llm, "cases:\n  - {name: c, inputs: {source: s, summary: t}, expect: {coherence: '<= 2'}}\n")
    result = pytester.runpytest("-k", "case")
    result.assert_outcomes(failed=1, deselected=2)
    assert "FAIL coherence: expected <= 2, but the judgment failed (refusal" in result.stdout.str()


def test_cases_use_the_lock_files_instructions(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    from pytest_judgeopt.lockfile import lock_path

    fake_llm.responder = by_content([("Be strict", 1)], default=5)
    spec = write(pytester, fake_llm, "cases:\n  - {name: c, inputs: {source: s, summary: t}, expect: {coherence: '<= 2'}}\n")
    pytester.runpytest("-k", "case").assert_outcomes(failed=1, deselected=2)
    write_lock(Session().load(spec), {"coherence": "Be strict: rate coherence from 1 to 5."})
    assert lock_path(spec).is_file()
    result = pytester.runpytest("-v", "-k", "case")
    result.assert_outcomes(passed=1, deselected=2)
    assert any("Be strict" in b["messages"][-1]["content"] for b in fake_llm.chat_requests())


def write_lock(loaded: Any, instructions: dict[str, str]) -> None:
    """A lock file holding the given instructions, made for this spec and data (as if edited by hand)."""
    import yaml

    from pytest_judgeopt.lockfile import VERSION, lock_path, spec_hash

    content = {"version": VERSION, "spec_hash": spec_hash(loaded.spec), "data_hash": loaded.dataset.digest,
               "criteria": {name: {"instruction": text} for name, text in instructions.items()}}
    lock_path(loaded.spec.path).write_text(yaml.safe_dump(content))


def test_merged_inference_judges_a_case_with_the_merged_prompt(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = LOW_COHERENCE
    write(pytester, fake_llm, "inference: merged\n" + TWO_CASES)
    result = pytester.runpytest("-k", "case")
    result.assert_outcomes(passed=1, failed=1, deselected=2)
    (body,) = fake_llm.chat_requests()
    assert "- coherence:" in body["messages"][-1]["content"] and "- fluency:" in body["messages"][-1]["content"]
    assert "(merged prompts" in result.stdout.str()


def test_case_items_carry_junit_properties(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = LOW_COHERENCE
    write(pytester, fake_llm, TWO_CASES)
    pytester.runpytest("-k", "case", "--junitxml=out.xml")
    tree = ET.parse(pytester.path / "out.xml")
    props = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
             for case in tree.iter("testcase")}
    low, high = props["case[jumbled-low]"], props["case[jumbled-high]"]
    assert low["case_coherence_expect"] == "[1, 2]" and low["case_coherence_score"] == "1.0"
    assert low["case_coherence_passed"] == "True" and high["case_coherence_passed"] == "False"
    assert high["case_passed"] == "False" and high["case_shape"] == "separate"


# --------------------------------------------------------------------------
# spec checks


def collection_errors(pytester: pytest.Pytester, extra: str, **spec_args: Any) -> str:
    write(pytester, None, extra, **spec_args)
    result = pytester.runpytest("--collect-only")
    assert result.ret != 0
    return result.stdout.str()


@pytest.mark.parametrize(("extra", "said"), [
    ("cases:\n  - {name: c, inputs: {source: s, sumary: t}, expect: {coherence: [1, 2]}}\n",
     "toy.judge.yaml:10: cases[0].inputs: unknown input 'sumary' (the spec's inputs are source, summary). "
     "Fix: did you mean 'summary'?"),
    ("cases:\n  - {name: c, inputs: {source: s}, expect: {coherence: [1, 2]}}\n",
     "toy.judge.yaml:10: cases[0].inputs: no text for the input 'summary'. Fix: add `summary:`"),
    ("cases:\n  - name: c\n    inputs: {source: s, summary: t}\n    expect: {coherence: [0, 2]}\n",
     "toy.judge.yaml:12: cases[0].expect.coherence: the range [0, 2] reaches outside the scale [1, 5]. "
     "Fix: keep both ends within [1, 5]"),
    ("cases:\n  - {name: c, inputs: {source: s, summary: t}, expect: {coherense: [1, 2]}}\n",
     "cases[0].expect.coherense: no criterion 'coherense' in the spec. Fix: did you mean 'coherence'?"),
    ("cases:\n  - {name: c, record: d9-s9, expect: {coherence: [1, 2]}}\n",
     "cases[0].record: no record with id 'd9-s9' in data.jsonl. Fix: did you mean"),
    ("cases:\n  - {name: c, expect: {coherence: [1, 2]}}\n",
     "cases[0]: a case needs the texts to judge. Fix: add `inputs:`"),
    ("cases:\n  - {inputs: {source: s, summary: t}, expect: {coherence: [1, 2]}}\n",
     "cases[0]: missing key 'name'. Fix: add `name:` with a short name"),
    ("cases:\n  - {name: 'a b', inputs: {source: s, summary: t}, expect: {coherence: [1, 2]}}\n",
     "cases[0].name: \"a b\" is not a valid name. Fix: use letters, digits"),
    ("cases:\n  - {name: c, inputs: {source: s, summary: t}, expect: {coherence: [1, 2]}, expected: 1}\n",
     "cases[0].expected: unknown key 'expected'. Fix: did you mean 'expect'?"),
    ("cases:\n  - {name: c, inputs: {source: s, summary: t}, expect: {}}\n", "cases[0].expect: is empty"),
    ("cases:\n  - {name: c, inputs: {source: s, summary: t}, expect: {coherence: [1, 2]}}\n"
     "  - {name: c, inputs: {source: s, summary: u}, expect: {coherence: [1, 2]}}\n",
     "toy.judge.yaml:11: cases[1].name: the case name 'c' is used twice (first on line 10)"),
])
def test_case_mistakes_are_collection_errors_with_file_line_key_and_fix(
        pytester: pytest.Pytester, extra: str, said: str) -> None:
    out = collection_errors(pytester, extra)
    assert said in out, out
    assert "Traceback" not in out


def test_cases_from_a_yaml_file(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = LOW_COHERENCE
    (pytester.path / "cases.yaml").write_text(TWO_CASES.split("\n", 1)[1].replace("\n  ", "\n")[2:])
    write(pytester, fake_llm, "cases: cases.yaml\n")
    result = pytester.runpytest("-v", "-k", "case")
    result.assert_outcomes(passed=1, failed=1, deselected=2)
    (pytester.path / "cases.yaml").write_text("- name: c\n  inputs: {source: s, summary: t}\n  expect: {coherence: [1, 9]}\n")
    out = pytester.runpytest("--collect-only").stdout.str()
    assert "cases.yaml:3: cases[0].expect.coherence: the range [1, 9] reaches outside the scale [1, 5]" in out


def test_cases_from_a_jsonl_file(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = LOW_COHERENCE
    rows = [{"name": "low", "inputs": {"source": "s", "summary": JUMBLED}, "expect": {"coherence": "<= 2"}},
            {"name": "high", "inputs": {"source": "s", "summary": JUMBLED}, "expect": {"coherence": ">= 4"}}]
    (pytester.path / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write(pytester, fake_llm, "cases: cases.jsonl\n")
    pytester.runpytest("-k", "case").assert_outcomes(passed=1, failed=1, deselected=2)
    rows[1]["inputs"]["sumary"] = rows[1]["inputs"].pop("summary")
    (pytester.path / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = pytester.runpytest("--collect-only").stdout.str()
    assert "cases.jsonl:2: cases[1].inputs: unknown input 'sumary'" in out


@pytest.mark.parametrize(("extra", "said"), [
    ("cases: cases.txt\n", "toy.judge.yaml:9: cases: cannot read cases from 'cases.txt'. Fix: name a .yaml or .jsonl file"),
    ("cases: missing.yaml\n", "toy.judge.yaml:9: cases: cannot read"),
    ("cases: 3\n", "toy.judge.yaml:9: cases: expected a list or text, got a number"),
])
def test_a_bad_case_file_reference_is_a_collection_error(pytester: pytest.Pytester, extra: str, said: str) -> None:
    (pytester.path / "cases.txt").write_text("")
    assert said in collection_errors(pytester, extra)


def test_the_spec_schema_knows_cases(tmp_path: Path) -> None:
    import jsonschema

    from pytest_judgeopt.spec_schema import schema

    spec: dict[str, Any] = {"dataset": {"path": "d.jsonl", "inputs": {"s": "s"}, "scores": "scores"},
                            "criteria": {"c": {"instruction": "x", "scale": [1, 5], "min_rho": 0.5}},
                            "cases": [{"name": "a", "inputs": {"s": "t"}, "expect": {"c": [1, 2]}}]}
    jsonschema.Draft202012Validator(schema()).validate(spec)
    spec["cases"].append({"name": "b", "inputs": {"s": "t"}})
    with pytest.raises(jsonschema.ValidationError, match="'expect' is a required property"):
        jsonschema.Draft202012Validator(schema()).validate(spec)


# --------------------------------------------------------------------------
# judge.score


def test_judge_score_in_a_users_own_test(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = LOW_COHERENCE
    write(pytester, fake_llm)
    pytester.makepyfile(test_mine=f"""
        def test_jumbled_summary_scores_low(judge):
            s = judge.score("toy.judge.yaml", "coherence", source="Article 4.", summary={JUMBLED!r})
            assert s.score == 1 and s.failure is None and s.reply == "coherence: 1" and s.weighted is None

        def test_every_criterion(judge):
            both = judge.score("toy.judge.yaml", source="Article 4.", summary={JUMBLED!r})
            assert {{k: v.score for k, v in both.items()}} == {{"coherence": 1, "fluency": 2}}

        def test_many(judge):
            many = judge.score_many("toy.judge.yaml", "coherence",
                                    [dict(source="a", summary={JUMBLED!r}), dict(source="a", summary="Fine.")])
            assert [s.score for s in many] == [1, 4]

        def test_another_instruction(judge):
            s = judge.score("toy.judge.yaml", "fluency", instruction="Rate fluency; be kind.", source="a", summary="b")
            assert s.score == 4

        def test_wrong_input_name(judge):
            import pytest
            with pytest.raises(ValueError, match="unknown input 'sumary'.*did you mean 'summary'"):
                judge.score("toy.judge.yaml", "coherence", source="a", sumary="b")
            with pytest.raises(ValueError, match="no text for the input 'summary'"):
                judge.score("toy.judge.yaml", "coherence", source="a")
    """)
    result = pytester.runpytest("test_mine.py", "-v")
    result.assert_outcomes(passed=5)
    prompts = [b["messages"][-1]["content"] for b in fake_llm.chat_requests()]
    assert any("Rate fluency; be kind." in p for p in prompts)


def test_judge_score_goes_through_the_cache(tmp_path: Path, fake_llm: FakeLLMServer, make_project: Any) -> None:
    from pytest_judgeopt.cache import Cache
    from pytest_judgeopt.llm import LLM

    fake_llm.responder = LOW_COHERENCE
    spec = make_project(server_model(fake_llm))
    for expected_calls in (1, 0):
        fake_llm.reset()
        session = Session(LLM(cache=Cache(tmp_path / "cache")))
        try:
            assert session.score(spec, "coherence", source="a", summary=JUMBLED).score == 1
        finally:
            session.close()
        assert len(fake_llm.chat_requests()) == expected_calls


def test_judge_score_gives_the_weighted_score_with_logprobs(tmp_path: Path, fake_llm: FakeLLMServer,
                                                            make_project: Any) -> None:
    import math

    fake_llm.responder = lambda body: Reply("coherence: 4", logprobs=[
        [("coherence", 0.0)], [(":", 0.0)], [(" ", 0.0)], [("4", math.log(0.5)), ("5", math.log(0.5))]])
    spec = make_project(server_model(fake_llm), extra="judge: {logprobs: true}\n")
    session = Session()
    try:
        s = session.score(spec, "coherence", source="a", summary="b")
    finally:
        session.close()
    assert s.weighted == pytest.approx(4.5), s
    assert s.score == s.weighted and s.parsed == 4


def test_score_errors_name_the_problem(tmp_path: Path, make_project: Any) -> None:
    spec = make_project(None)
    session = Session()
    with pytest.raises(SpecError, match="no criterion 'coherense'"):
        session.score(spec, "coherense", source="a", summary="b")
    with pytest.raises(ValueError, match="name the criterion too"):
        session.score(spec, instruction="x", source="a", summary="b")
    with pytest.raises(TypeError, match="a list of inputs"):
        session.score_many(spec, "coherence", {"source": "a", "summary": "b"})
    assert session.score_many(spec, "coherence", []) == []


# --------------------------------------------------------------------------
# the optimizer: cases as a second gate, and never in a role prompt unless the spec says so


STRICT = "Rate the coherence from 1 to 5. Be strict."
CASE_TEXT = "JUMBLED the of words."


def strict_world(records: list[dict[str, Any]]) -> Any:
    """Every role, scripted: with "Be strict" the judge gives the human score (val rho rises from -1 to 1) but also
    rates the case's jumbled text 5 instead of 1; the optimizer always proposes adding "Be strict"."""
    import re

    by_summary = {r["summary"]: r for r in records}

    def respond(body: dict[str, Any]) -> str:
        messages = body["messages"]
        text = messages[-1]["content"]
        if messages[0]["role"] == "system":  # a judge prompt
            strict = "Be strict" in text
            summary = re.search(r"<summary>\n(.*?)\n</summary>", text, re.S).group(1)
            if summary == CASE_TEXT:
                return "coherence: 5" if strict else "coherence: 1"
            human = by_summary[summary]["scores"]["coherence"]
            return f"coherence: {human if strict else 6 - human:g}"
        if text.startswith("You rewrite the instruction"):
            return f"<instruction>{STRICT}</instruction>"
        return "The judge should look closer at the order of the sentences."

    return respond


def optimize_project(pytester: pytest.Pytester, server: FakeLLMServer, optimize: str) -> Path:
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    extra = (f"interference: false\noptimize: {{steps: 1, batch_size: 2{optimize}}}\n"
             f"cases:\n  - {{name: jumbled, inputs: {{source: s, summary: {CASE_TEXT!r}}}, expect: {{coherence: [1, 2]}}}}\n")
    spec = pytester.path / "toy.judge.yaml"
    spec.write_text(spec_text(server_model(server), criteria=("coherence",), min_rho=0.5, extra=extra))
    return spec


def lock_instruction(pytester: pytest.Pytester) -> str:
    import yaml

    return yaml.safe_load((pytester.path / "toy.judge.lock.yaml").read_text())["criteria"]["coherence"]["instruction"]


def test_without_the_case_gate_a_rewrite_that_breaks_a_case_is_kept(pytester: pytest.Pytester,
                                                                    fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = strict_world(RECORDS)
    optimize_project(pytester, fake_llm, "")
    result = pytester.runpytest("--judge-optimize", "-v")
    result.assert_outcomes(passed=2, failed=1)  # optimize and coherence pass; the case now fails
    result.stdout.fnmatch_lines(["*::case?jumbled? FAILED*"])
    assert lock_instruction(pytester) == STRICT
    role_prompts = [b["messages"][-1]["content"] for b in fake_llm.chat_requests() if b["messages"][0]["role"] != "system"]
    assert role_prompts and not any(CASE_TEXT in p for p in role_prompts)  # cases never enter a role prompt


def test_the_case_gate_rejects_a_rewrite_that_breaks_a_passing_case(pytester: pytest.Pytester,
                                                                   fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = strict_world(RECORDS)
    optimize_project(pytester, fake_llm, ", gate: {cases: true}")
    result = pytester.runpytest("--judge-optimize", "-v")
    result.assert_outcomes(passed=2, failed=1)  # optimize and the case pass; coherence keeps failing
    result.stdout.fnmatch_lines(["*::case?jumbled? PASSED*",
                                 "*coherence: unchanged (rejected by the case gate: case[[]jumbled[]] breaks "
                                 "(expected [[]1, 2[]], the judge scored 5))*"])
    assert lock_instruction(pytester) == "Rate the coherence from 1 to 5."
    role_prompts = [b["messages"][-1]["content"] for b in fake_llm.chat_requests() if b["messages"][0]["role"] != "system"]
    assert not any(CASE_TEXT in p for p in role_prompts)


def test_cases_reach_the_optimizer_prompt_only_when_the_spec_says_so(pytester: pytest.Pytester,
                                                                      fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = strict_world(RECORDS)
    optimize_project(pytester, fake_llm, ", cases_in_prompt: true")
    pytester.runpytest("--judge-optimize")
    role_prompts = [b["messages"][-1]["content"] for b in fake_llm.chat_requests() if b["messages"][0]["role"] != "system"]
    optimizer = [p for p in role_prompts if p.startswith("You rewrite the instruction")]
    assert optimizer and all(CASE_TEXT in p and "[case[jumbled]: coherence [1, 2]]" in p for p in optimizer)
    assert not any(CASE_TEXT in p for p in role_prompts if p not in optimizer)


@pytest.mark.parametrize("setting", ["gate: {cases: true}", "cases_in_prompt: true"])
def test_a_case_setting_without_cases_is_a_collection_error(pytester: pytest.Pytester, setting: str) -> None:
    write(pytester, None, f"optimize: {{{setting}}}\n")
    out = pytester.runpytest("--collect-only").stdout.str()
    assert "the spec has no cases for this to use. Fix: add `cases:` to the spec, or remove this setting" in out


def test_the_summeval_example_carries_cases_and_a_probe() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "summeval" / "summeval.judge.yaml"
    loaded = Session().load(example)
    assert [c.name for c in loaded.cases] == ["expert-best", "expert-worst", "sentence-salad"]
    assert all(c.record is not None for c in loaded.cases)
    assert not {c.record for c in loaded.cases} & {r.id for r in loaded.splits.test}  # cases never from the test split
    (probe,) = loaded.probes
    assert (probe.kind, probe.criteria, probe.sample) == ("pad", ("relevance",), 2)
