"""Behavioural probes: retest, pad and transform items against the scripted server; their spec checks and statistics."""

from __future__ import annotations

import json
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import human_from_prompt, make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer, by_content, judge_answer, length_rising, noisy, tagged

# 20 documents: the test split holds 10 (40 summaries), enough for a document bootstrap
RECORDS = make_records(n_groups=20)
TEST_GROUPS = 10


def write(pytester: pytest.Pytester, server: FakeLLMServer | None, probes: str, extra: str = "", **spec_args: Any) -> None:
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    model = server_model(server) if server is not None else None
    body = "interference: false\n" + extra + "probes:\n" + textwrap.indent(textwrap.dedent(probes), "  ")
    (pytester.path / "toy.judge.yaml").write_text(spec_text(model, extra=body, **spec_args))


def by_summary_number(body: dict[str, Any]) -> str:
    """A judge that reads only which summary it is ("Summary 3 of ..."): scores vary, length changes nothing."""
    number = int(re.search(r"Summary (\d+)", tagged(body, "summary")).group(1))
    return judge_answer(body, lambda criterion: 1 + number % 5)


def literal(pattern: str) -> str:
    """An fnmatch pattern whose brackets (intervals, ranges) are text, not character classes."""
    return pattern.replace("[", "[[]")


def summaries(server: FakeLLMServer) -> list[str]:
    return [tagged(b, "summary") for b in server.chat_requests()]


# --------------------------------------------------------------------------
# retest


def test_retest_passes_a_deterministic_judge(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    write(pytester, fake_llm, "- {kind: retest, k: 2, min: 0.8, criteria: coherence}\n")
    result = pytester.runpytest("-v", "-k", "probe")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*toy.judge.yaml::probe?retest? PASSED*"])
    bodies = fake_llm.chat_requests()
    assert len(bodies) == 3 * 40  # the first judgment and two more, of the 40 test summaries, one criterion
    assert sorted({b.get("seed") for b in bodies}, key=str) == [1, 2, None]


def test_retest_fails_a_noisy_judge_with_its_agreement_and_examples(pytester: pytest.Pytester,
                                                                    fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = noisy(seed=3)
    write(pytester, fake_llm, "- {kind: retest, k: 1, min: 0.8, criteria: [coherence]}\n")
    result = pytester.runpytest("-k", "probe")
    result.assert_outcomes(failed=1, deselected=2)
    out = result.stdout.str()
    assert "toy::probe[retest] failed (retest, test split, 40 samples, separate prompts" in out
    found = re.search(r"coherence: the judge's spearman with itself is (-?[\d.]+), below min 0.8", out)
    assert found and float(found.group(1)) < 0.5, out
    assert re.search(r"coherence: spearman with itself -?[\d.]+ \[-?[\d.]+, -?[\d.]+\]; mean change [+-][\d.]+ "
                     r"\[[+-][\d.]+, [+-][\d.]+\] \(95% CI, n=40, 10 documents", out), out
    assert re.search(r"d\d+-s\d: \d -> \d, replies \"coherence: \d\" -> \"coherence: \d\"", out)


def test_retest_on_the_judge_sample(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    write(pytester, fake_llm, "- {kind: retest, k: 1, min: 0.8, criteria: coherence}\n")
    result = pytester.runpytest("-k", "probe", "--judge-sample", "4")
    result.assert_outcomes(passed=1, deselected=2)
    assert len(fake_llm.chat_requests()) == 2 * 4 * 4  # 4 documents of 4 summaries, judged twice


# --------------------------------------------------------------------------
# pad


def test_pad_fails_a_judge_whose_scores_rise_with_length(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = length_rising(chars_per_point=40)
    write(pytester, fake_llm, "- {kind: pad, criteria: fluency, max_rise: 0.25}\n")
    result = pytester.runpytest("-k", "probe")
    result.assert_outcomes(failed=1, deselected=2)
    out = result.stdout.str()
    assert re.search(r"fluency: with filler appended to summary, the mean score rises by \+[\d.]+ \[\+[\d.]+, \+[\d.]+\], "
                     r"beyond max_rise 0.25: the judge rewards length", out), out
    padded = [s for s in summaries(fake_llm) if "It is worth noting" in s]
    assert len(padded) == 40 and all(s.startswith("Summary ") for s in padded)


def test_pad_passes_a_judge_that_ignores_length(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = by_summary_number
    write(pytester, fake_llm, "- {kind: pad, max_rise: 0.25, filler: 'And that is all there is to say about it.'}\n")
    result = pytester.runpytest("-v", "-k", "probe", "--junitxml=out.xml")
    result.assert_outcomes(passed=1, deselected=2)
    assert sum("And that is all there is to say about it." in s for s in summaries(fake_llm)) == 2 * 40
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "out.xml").iter("property")}
    assert props["probe_kind"] == "pad" and props["probe_passed"] == "True"
    assert props["probe_coherence_change"] == "0.0" and props["probe_fluency_n"] == "40"
    assert props["probe_fluency_change_low"] == "0.0" and props["probe_fluency_change_high"] == "0.0"


def test_pad_with_the_bound_gate_needs_the_interval_within_max_rise(pytester: pytest.Pytester,
                                                                    fake_llm: FakeLLMServer) -> None:
    """One document's summaries of 20 rise by 1 when padded: a mean rise of 0.05, within 0.1, but its interval is not."""
    rising = {r["summary"] for r in RECORDS if r["group"] == "d0"}

    def respond(body: dict[str, Any]) -> str:
        text = tagged(body, "summary")
        bonus = 1 if text.split(" It is worth")[0] in rising and "worth noting" in text else 0
        return judge_answer(body, lambda c: 2 + bonus)

    fake_llm.responder = respond
    write(pytester, fake_llm, "- {name: point, kind: pad, criteria: coherence, max_rise: 0.1}\n"
                              "- {name: bound, kind: pad, criteria: coherence, max_rise: 0.1, gate: bound}\n",
          extra="split: {train: 0.0, val: 0.0, test: 1.0, seed: 1}\n")
    # the spec's own split line comes first; YAML would refuse two, so drop it
    spec = pytester.path / "toy.judge.yaml"
    spec.write_text(spec.read_text().replace("split: {train: 0.25, val: 0.25, test: 0.5, seed: 1}\n", "", 1))
    result = pytester.runpytest("-v", "-k", "probe")
    result.assert_outcomes(passed=1, failed=1, deselected=2)
    result.stdout.fnmatch_lines(["*probe?point? PASSED*", "*probe?bound? FAILED*"])
    assert re.search(r"the mean rise \+0\.050 is within max_rise 0\.1, but its interval \[-0\.\d+, \+0\.\d+\] "
                     r"reaches beyond it \(gate: bound\)", result.stdout.str()), result.stdout.str()


# --------------------------------------------------------------------------
# transform


CONFTEST = """
def pytest_judgeopt_transforms():
    def reverse_words(inputs):
        return {"summary": " ".join(reversed(inputs["summary"].split()))}

    def leave_all_out(inputs):
        return None

    def bad(inputs):
        return {"sumary": "x"}

    return {"reverse_words": reverse_words, "leave_all_out": leave_all_out, "bad": bad}
"""
# reversed words start with a digit ("3. article of 0 Summary"): this judge finds that incoherent
REVERSED_IS_INCOHERENT = by_content([(r"<summary>\n\d", {"coherence": 1})], default=4)


def test_a_transform_from_a_conftest_hook_that_lowers_coherence_passes(pytester: pytest.Pytester,
                                                                      fake_llm: FakeLLMServer) -> None:
    pytester.makeconftest(CONFTEST)
    fake_llm.responder = REVERSED_IS_INCOHERENT
    write(pytester, fake_llm, "- {kind: transform, transform: reverse_words, expect: {coherence: lower}}\n"
                              "- {name: wrong-way, kind: transform, transform: reverse_words, expect: {coherence: higher}}\n"
                              "- {name: fluency-moves, kind: transform, transform: reverse_words, expect: {fluency: lower}}\n")
    result = pytester.runpytest("-v", "-k", "probe")
    result.assert_outcomes(passed=1, failed=2, deselected=2)
    result.stdout.fnmatch_lines(["*probe?reverse_words? PASSED*", "*probe?wrong-way? FAILED*", "*probe?fluency-moves? FAILED*"])
    out = result.stdout.str()
    assert ("coherence: expected coherence to get higher under 'reverse_words', but the mean change is -3.000 "
            "[-3.000, -3.000]") in out
    assert "fluency: expected fluency to get lower under 'reverse_words', but the mean change is +0.000" in out
    # the three probes share their prompts: the answer cache and the in-flight sharing ask each once
    assert len(fake_llm.chat_requests()) == 2 * 40 + 2 * 40


def test_a_transform_that_leaves_every_record_out_fails(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    pytester.makeconftest(CONFTEST)
    fake_llm.responder = REVERSED_IS_INCOHERENT
    write(pytester, fake_llm, "- {kind: transform, transform: leave_all_out, expect: {coherence: lower}}\n"
                              "- {kind: transform, transform: bad, expect: {coherence: lower}}\n")
    result = pytester.runpytest("-k", "probe")
    result.assert_outcomes(failed=2, deselected=2)
    out = result.stdout.str()
    assert "40 records left out (the transform returned None or changed nothing)" in out
    assert "coherence: the change is undefined: no pairs" in out
    assert "the transform 'bad' returned unknown input(s) sumary for record d" in out
    assert "Traceback" not in out


# --------------------------------------------------------------------------
# spec checks


@pytest.mark.parametrize(("probes", "said"), [
    ("- {kind: pad, criteria: coherense, max_rise: 0.2}\n",
     "toy.judge.yaml:10: probes[0].criteria: no criterion 'coherense'. Fix: did you mean 'coherence'?"),
    ("- {kind: transform, transform: reverse_words, expect: {coherense: lower}}\n",
     "probes[0].expect.coherense: no criterion 'coherense'. Fix: did you mean 'coherence'?"),
    ("- {kind: transform, transform: revers_words, expect: {coherence: lower}}\n",
     "probes[0].transform: no transform 'revers_words' (the hooks give: reverse_words). Fix: did you mean 'reverse_words'?"),
    ("- {kind: transform, transform: reverse_words, expect: {coherence: down}}\n",
     "probes[0].expect.coherence: 'down' is not allowed. Fix: use one of: lower, higher"),
    ("- {kind: retest, k: 2}\n", "probes[0]: missing key 'min'. Fix: add `min:` with the least agreement"),
    ("- {kind: pad}\n", "probes[0]: missing key 'max_rise'. Fix: add `max_rise:`"),
    ("- {kind: retest, min: 0.8, max_rise: 0.2}\n",
     "probes[0].max_rise: `max_rise` is not a setting of a retest probe. Fix: remove it; a retest probe takes"),
    ("- {kind: pad, max_rise: 0.2, input: sumary}\n", "probes[0].input: no input 'sumary'. Fix: did you mean 'summary'?"),
    ("- {kind: retest, min: 0.8, metric: spearmann}\n", "probes[0].metric: no metric 'spearmann'. Fix: did you mean 'spearman'?"),
    ("- {kind: retest, min: 0.8}\n- {kind: retest, min: 0.9}\n",
     "toy.judge.yaml:11: probes[1].kind: two probes are named 'retest' (the first on line 10). Fix: give each probe its own `name:`"),
    ("- {kind: shuffle}\n", "probes[0].kind: 'shuffle' is not allowed. Fix: use one of: retest, pad, transform"),
    ("- {kind: retest, min: 2}\n", "probes[0].min: 2 is outside [-1, 1]"),
])
def test_probe_mistakes_are_collection_errors(pytester: pytest.Pytester, probes: str, said: str) -> None:
    pytester.makeconftest(CONFTEST.replace(', "leave_all_out": leave_all_out, "bad": bad', ""))
    write(pytester, None, probes)
    result = pytester.runpytest("--collect-only")
    out = result.stdout.str()
    assert result.ret != 0 and said in out, out
    assert "Traceback" not in out


def test_probe_ids_are_stable(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    write(pytester, None, "- {kind: retest, min: 0.8}\n- {kind: pad, max_rise: 0.1}\n"
                          "- {kind: transform, transform: reverse_words, expect: {coherence: lower}}\n"
                          "- {name: again, kind: retest, min: 0.5}\n")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["toy.judge.yaml::probe[[]retest[]]", "toy.judge.yaml::probe[[]pad[]]",
                                 "toy.judge.yaml::probe[[]reverse_words[]]", "toy.judge.yaml::probe[[]again[]]"])


# --------------------------------------------------------------------------
# the statistic


def test_mean_change_leaves_out_whole_documents() -> None:
    import numpy as np
    from scipy import stats

    from pytest_judgeopt.stats import mean_change

    before = [1.0] * 32
    after = [1.0 + (k // 4) % 2 for k in range(32)]  # 8 documents of 4 pairs: every other one rises by 1
    groups = [f"d{k // 4}" for k in range(32)]
    pooled = mean_change(before, after)
    by_doc = mean_change(before, after, groups=groups)
    assert pooled.value == by_doc.value == 0.5 and by_doc.groups == 8 and pooled.groups == 0
    # equal documents: the jackknife of the pooled mean is the t-interval over the documents' own changes
    per_doc = [0.0, 1.0] * 4
    low, high = stats.t.interval(0.95, 7, loc=np.mean(per_doc), scale=stats.sem(per_doc))
    assert (by_doc.low, by_doc.high) == pytest.approx((low, high))
    assert pooled.high - pooled.low < by_doc.high - by_doc.low  # pairs of one document are not independent


def test_mean_change_is_undefined_without_pairs_and_has_no_interval_below_min_groups() -> None:
    from pytest_judgeopt.stats import mean_change

    empty = mean_change([], [])
    assert empty.value is None and "no pairs" in (empty.reason or "")
    one = mean_change([1, 2, 3], [2, 3, 4], groups=["a", "a", "a"])
    assert one.value == 1.0 and one.low is None
    assert one.reason == "too few documents: 1 (an interval needs at least 8; correlation.min_groups)"
    with pytest.raises(ValueError, match="before has 2 scores but after has 1"):
        mean_change([1, 2], [1])


# --------------------------------------------------------------------------
# reports: terminal summary, results.json, the HTML page


def test_cases_and_probes_in_the_summary_results_json_and_the_page(pytester: pytest.Pytester,
                                                                  fake_llm: FakeLLMServer) -> None:
    import jsonschema

    fake_llm.responder = by_summary_number
    extra = """\
cases:
  - {name: first, inputs: {source: s, summary: "Summary 0"}, expect: {coherence: [1, 2]}}
  - {name: second, inputs: {source: s, summary: "Summary 1"}, expect: {coherence: ">= 4"}, note: "a wrong <script> guess"}
"""
    write(pytester, fake_llm, "- {kind: pad, criteria: coherence, max_rise: 0.25}\n"
                              "- {kind: retest, k: 1, min: 0.9, criteria: fluency}\n", extra=extra)
    result = pytester.runpytest("-k", "case or probe", "--judge-report", "report")
    result.assert_outcomes(passed=3, failed=1, deselected=2)
    result.stdout.fnmatch_lines([literal(line) for line in [
        "*judge cases*",
        "toy cases (separate prompts, openai/fake-judge): 1/2 pass",
        "*case*criterion*expect*score*human*verdict*",
        "*first*coherence*[1, 2]*1*-*pass*",
        "*second*coherence*>= 4*2*-*FAIL*",
        "*judge probes*",
        "toy probes (test split, separate prompts, openai/fake-judge): 2/2 hold",
        "*pad*coherence*mean change*-*+0.000 [+0.000, +0.000]*40*0/80*rise <= 0.25*pass*",
        "*retest*fluency*spearman with itself*1.000 [1.000, 1.000]*+0.000 [+0.000, +0.000]*40*0/80*>= 0.9*pass*",
        "*probe judgments: * model calls made, * from cache; intervals 95%, each leaving out one whole document (jackknife)*"]])
    folder = pytester.path / "report"
    results = json.loads((folder / "results.json").read_text())
    schema = json.loads((Path(__file__).resolve().parents[1] / "pytest_judgeopt" / "schemas" / "results.schema.json")
                        .read_text())
    jsonschema.Draft202012Validator(schema).validate(results)
    assert [c["case"] for c in results["cases"]] == ["first", "second"]
    assert results["cases"][1]["checks"][0]["reply"] == "coherence: 2"
    assert results["cases"][1]["checks"][0]["score"] == 2 and results["cases"][1]["passed"] is False
    assert results["cases"][0]["path"] == "toy.judge.yaml" and results["cases"][0]["file"] == "toy.judge.yaml"
    pad = next(p for p in results["probes"] if p["kind"] == "pad")
    assert pad["criteria"][0]["change"] == 0.0 and pad["criteria"][0]["n"] == 40 and pad["settings"]["max_rise"] == 0.25
    page = (folder / "index.html").read_text()
    assert "cases: 1/2 pass" in page and "probes: 2/2 hold" in page
    assert '<section class="cases">' in page and '<section class="probes">' in page
    assert "a wrong &lt;script&gt; guess" in page and "<script>" not in page
    assert "+0.000 [+0.000, +0.000]" in page


def test_quiet_keeps_one_line_per_spec_for_cases_and_probes(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = by_summary_number
    extra = "cases:\n  - {name: first, inputs: {source: s, summary: Summary 0}, expect: {coherence: [1, 2]}}\n"
    write(pytester, fake_llm, "- {kind: pad, criteria: coherence, max_rise: 0.25}\n", extra=extra)
    result = pytester.runpytest("-q", "-k", "case or probe")
    result.assert_outcomes(passed=2, deselected=2)
    result.stdout.fnmatch_lines(["toy cases (separate prompts, openai/fake-judge): 1/1 pass",
                                 "toy probes (test split, separate prompts, openai/fake-judge): 1/1 hold"])
    assert "mean change" not in result.stdout.str()


def summary_section(result: pytest.RunResult, title: str) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.fullmatch(rf"=+ {title} =+", line))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("====")), len(lines))
    return lines[start + 1:end]


def test_under_xdist_the_controller_reports_the_workers_cases_and_probes(pytester: pytest.Pytester,
                                                                         fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = by_summary_number
    extra = "cases:\n  - {name: first, inputs: {source: s, summary: Summary 0}, expect: {coherence: [1, 2]}}\n"
    write(pytester, fake_llm, "- {kind: pad, criteria: coherence, max_rise: 0.25}\n", extra=extra)
    options = ("-p", "no:cacheprovider", "-k", "case or probe", "--judge-report", "report")
    parallel = pytester.runpytest_subprocess("-n", "2", *options)
    parallel.assert_outcomes(passed=2)
    from_workers = json.loads((pytester.path / "report" / "results.json").read_text())
    serial = pytester.runpytest_subprocess(*options)
    serial.assert_outcomes(passed=2, deselected=2)
    alone = json.loads((pytester.path / "report" / "results.json").read_text())
    for title in ("judge cases", "judge probes"):
        keep = [line for line in summary_section(serial, title) if "model calls made" not in line]
        assert [line for line in summary_section(parallel, title) if "model calls made" not in line] == keep
    assert from_workers["cases"] == alone["cases"]
    assert [{**p, "calls": 0, "cache_hits": 0} for p in from_workers["probes"]] == \
           [{**p, "calls": 0, "cache_hits": 0} for p in alone["probes"]]
