"""The no-interference check: merged prompt against separate prompts, per criterion, on the scripted server."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer

RECORDS = make_records(n_groups=12)  # the test split (seed 1) holds 6 documents: d1 d2 d7 d8 d10 d11, 24 samples
TEST_GROUPS = ("d1", "d2", "d7", "d8", "d10", "d11")
N = 24
Perturb = Callable[[dict[str, Any], float], float]


def flipped(*groups: str) -> Perturb:
    """Upside down (6 - score) on the samples of these documents."""
    return lambda record, score: 6 - score if record["group"] in groups else score


def world(perturb: dict[tuple[str, str], Perturb] | None = None,
          omit: dict[str, tuple[str, ...]] | None = None) -> Callable[[dict[str, Any]], str]:
    """A judge that knows the human scores and answers each prompt shape in its own way.

    perturb[(shape, criterion)] changes the score that shape gives; omit[criterion] lists the
    documents whose merged replies leave that criterion out of the JSON object.
    """
    by_summary = {r["summary"]: r for r in RECORDS}
    perturb, omit = perturb or {}, omit or {}

    def respond(body: dict[str, Any]) -> str:
        prompt = body["messages"][-1]["content"]
        record = by_summary[re.search(r"<summary>\n(.*?)\n</summary>", prompt, re.S).group(1)]
        shape = "merged" if "\nCriteria:\n" in prompt else "separate"
        asked = [c for c in record["scores"] if re.search(rf"(^- |Criterion: ){c}\b", prompt, re.M)]
        scores = {c: perturb.get((shape, c), lambda r, s: s)(record, record["scores"][c]) for c in asked}
        if shape == "separate":
            return f"{asked[0]}: {scores[asked[0]]:g}"
        return json.dumps({c: s for c, s in scores.items() if record["group"] not in omit.get(c, ())})

    return respond


def write(pytester: pytest.Pytester, server: FakeLLMServer, **spec_args: Any) -> None:
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    spec_args.setdefault("min_rho", 0.2)
    # The check's logic on a small world of 6 test documents (3 with --judge-sample=3): intervals from 3
    # documents on. The default correlation.min_groups (8) is tested in test_stats.py and test_plugin.py.
    spec_args["extra"] = "correlation: {min_groups: 3}\n" + spec_args.get("extra", "")
    (pytester.path / "toy.judge.yaml").write_text(spec_text(server_model(server), **spec_args))


def shapes(server: FakeLLMServer) -> dict[str, int]:
    prompts = [b["messages"][-1]["content"] for b in server.chat_requests()]
    merged = sum("\nCriteria:\n" in p for p in prompts)
    return {"merged": merged, "separate": len(prompts) - merged}


def row(out: str, criterion: str) -> str:
    """The criterion's line of the merged-vs-separate table in the terminal summary."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "merged vs separate prompts" in line)
    return next(line for line in lines[start:] if line.strip().startswith(criterion + " "))


def test_merging_that_hurts_one_criterion_fails_and_names_it(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = world({("merged", "fluency"): flipped(*TEST_GROUPS)})
    write(pytester, fake_llm)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*toy.judge.yaml::coherence PASSED*", "*toy.judge.yaml::fluency PASSED*",
                                 "*toy.judge.yaml::merged FAILED*"])
    out = result.stdout.str()
    assert "toy::merged failed: merging the instructions into one prompt costs agreement on fluency" in out
    assert re.search(r"fluency +1\.000 +-1\.000 +-2\.000 +\[-2\.000, -2\.000\] +24 +0 +0/0 +FAIL", out)
    assert re.search(r"coherence +1\.000 +1\.000 +\+0\.000 .* pass", out)
    assert "fluency: merging drops rho by 2.000 (1.000 -> -1.000), beyond max_drop 0.02; the 95% interval" in out
    assert "excludes zero" in out
    assert f"merging would use {N} calls instead of {2 * N} (-50%)" in out
    assert "Traceback" not in out
    assert shapes(fake_llm) == {"separate": 2 * N, "merged": N}  # the check reuses the items' separate judgments


def test_harmless_merge_passes(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = world()
    write(pytester, fake_llm)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*toy.judge.yaml::merged PASSED*",
                                 f"toy merged vs separate prompts (test split, {N} samples, spearman pooled, 95% paired "
                                 "jackknife, max_drop 0.02, openai/fake-judge): 2/2 criteria hold",
                                 "*coherence*1.000*1.000*+0.000*pass", "*fluency*1.000*1.000*+0.000*pass",
                                 f"*merging would use {N} calls instead of {2 * N} (-50%), * prompt tokens instead of *"])


def test_difference_within_noise_is_inconclusive_and_fails_unless_the_spec_lets_it_pass(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    # issue 11 item 8: a drop below max_drop passes only when the interval shows it (its lower end within max_drop)
    def one_off(record: dict[str, Any], score: float) -> float:
        return score - 1 if record["id"] == "d1-s0" else score

    fake_llm.responder = world({("merged", "fluency"): one_off})
    write(pytester, fake_llm)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    line = row(out, "fluency")
    assert " -0.0" in line and "INCONCLUSIVE (about" in line  # a drop below max_drop, an interval beyond it
    assert "is not shown to keep agreement on fluency" in out
    assert "a drop beyond max_drop is not ruled out; about" in out and "(80% power)" in out

    write(pytester, fake_llm, extra="interference: {inconclusive: pass}\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)
    assert "inconclusive (about" in row(result.stdout.str(), "fluency")


def test_large_drop_on_few_samples_is_inconclusive(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    # separate prompts get one document upside down, the merged prompt two others: a large drop, on three documents
    fake_llm.responder = world({("separate", "fluency"): flipped("d1"), ("merged", "fluency"): flipped("d7", "d10")})
    write(pytester, fake_llm)
    result = pytester.runpytest("--judge-sample=3")
    result.assert_outcomes(passed=2, failed=1)  # issue 11 item 8: inconclusive fails by default
    out = result.stdout.str()
    line = row(out, "fluency")
    diff, low, high = map(float, re.search(r"([-+]\d\.\d+) +\[([-+]\d\.\d+), ([-+]\d\.\d+)\]", line).groups())
    assert diff < -0.02 and low < 0 <= high
    needed = int(re.search(r"INCONCLUSIVE \(about (\d+) judged samples would settle it\)", line).group(1))
    assert needed > 12
    assert f"but the 95% interval of the difference [{low:+.3f}, {high:+.3f}] contains zero" in out

    write(pytester, fake_llm, extra="interference: {inconclusive: pass}\n")
    result = pytester.runpytest("--judge-sample=3")
    result.assert_outcomes(passed=3)
    assert f"inconclusive (about {needed} judged samples would settle it)" in row(result.stdout.str(), "fluency")


def test_merged_replies_missing_a_criterion_are_counted(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = world(omit={"fluency": ("d1",)})  # 4 of 24 merged replies leave fluency out
    write(pytester, fake_llm)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "costs agreement on fluency" in out
    assert "fluency: 4/24 merged judgments failed (17%), above the allowed 10%; separate prompts failed 0/24" in out
    assert "fluency: failed merged judgments 4/24 (missing_criterion 4)" in out
    assert re.search(r"fluency +1\.000 +1\.000 +\+0\.000 .* 20 +0 +0/4 +FAIL", out)  # rho on the 20 pairs both scored
    assert re.search(r"coherence .* 24 +0 +0/0 +pass", out)

    write(pytester, fake_llm, extra="judge: {max_parse_failure_rate: 0.2}\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*fluency*20*0*0/4*pass", "*fluency: failed merged judgments 4/24 (missing_criterion 4)"])


def test_no_merged_item_when_off_or_single_criterion(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    write(pytester, fake_llm)
    pytester.runpytest("--collect-only", "-q").stdout.fnmatch_lines(["toy.judge.yaml::merged"])
    write(pytester, fake_llm, extra="interference: false\n")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["toy.judge.yaml::fluency"])
    assert "::merged" not in result.stdout.str()
    write(pytester, fake_llm, criteria=("coherence",))
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["toy.judge.yaml::coherence"])
    assert "::merged" not in result.stdout.str()


def test_merged_item_points_at_the_interference_key(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = world({("merged", "fluency"): flipped(*TEST_GROUPS)})
    write(pytester, fake_llm, extra="interference: {max_drop: 0.1, confidence: 0.9}\n")
    line = next(i for i, text in enumerate((pytester.path / "toy.judge.yaml").read_text().splitlines(), 1)
                if text.startswith("interference"))
    items, _ = pytester.inline_genitems()
    assert [item.name for item in items] == ["coherence", "fluency", "merged"]
    assert items[-1].location[1:] == (line - 1, "judge toy.judge.yaml::merged")
    result = pytester.runpytest("-rf", "--junitxml=out.xml", "--judge-report=out")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*90% paired jackknife, max_drop 0.1*", "FAILED toy.judge.yaml::merged*"])
    case = next(c for c in ET.parse(pytester.path / "out.xml").iter("testcase") if c.get("name") == "merged")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["interference_fluency_verdict"] == "fail" and props["interference_coherence_verdict"] == "pass"
    assert float(props["interference_fluency_diff"]) == pytest.approx(-2.0)
    assert float(props["interference_fluency_low"]) <= float(props["interference_fluency_high"]) < 0
    assert props["interference_calls_merged"] == str(N) and props["interference_calls_separate"] == str(2 * N)
    report = json.loads((pytester.path / "out" / "results.json").read_text())
    [check] = report["interference"]
    assert check["spec"] == "toy" and check["passed"] is False and check["max_drop"] == 0.1
    assert check["usage"]["merged"]["calls"] == N and check["usage"]["separate"]["calls"] == 2 * N
    assert [c["verdict"] for c in check["criteria"]] == ["pass", "fail"]


def test_judge_fixture_runs_the_check(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = world({("merged", "fluency"): flipped(*TEST_GROUPS)})
    write(pytester, fake_llm)
    pytester.makepyfile(test_mine=f"""
        def test_check(judge):
            result = judge.interference("toy.judge.yaml")
            assert not result.passed
            assert set(result.criteria) == {{"coherence", "fluency"}}
            fluency = result.criteria["fluency"]
            assert fluency.verdict == "fail" and abs(fluency.diff + 2) < 1e-9 and fluency.n == {N}
            assert result.criteria["coherence"].verdict == "pass"
            assert result.usage_merged.answered == {N} and result.usage_separate.answered == {2 * N}
            assert result.merged["fluency"].shape == "merged" and result.separate["fluency"].rho > 0.999
            assert judge.interference("toy.judge.yaml") is result  # measured once per session
            assert len(judge.interferences) == 1
    """)
    pytester.runpytest("test_mine.py").assert_outcomes(passed=1)
    assert shapes(fake_llm) == {"separate": 2 * N, "merged": N}


def test_cached_rerun_makes_no_model_calls(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = world({("merged", "fluency"): flipped(*TEST_GROUPS)})
    write(pytester, fake_llm)
    first = pytester.runpytest()
    first.assert_outcomes(passed=2, failed=1)
    fake_llm.reset()
    again = pytester.runpytest()
    again.assert_outcomes(passed=2, failed=1)
    assert fake_llm.chat_requests() == []
    savings = [line for line in first.stdout.lines if "merging would use" in line]
    assert savings and savings == [line for line in again.stdout.lines if "merging would use" in line]
    again.stdout.fnmatch_lines([f"*model calls: 0 made, {3 * N} from cache*"])


def test_merged_inference_judges_the_items_with_one_prompt(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = world({("merged", "fluency"): flipped(*TEST_GROUPS)})
    write(pytester, fake_llm, extra="inference: merged\ninterference: false\n")
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1, failed=1)
    prompts = [b["messages"][-1]["content"] for b in fake_llm.chat_requests()]
    assert len(prompts) == N  # one call per sample for both criteria
    assert all("- coherence: " in p and "- fluency: " in p and "one JSON object" in p for p in prompts)
    result.stdout.fnmatch_lines(["*toy::fluency failed on the test split (merged prompts):*",
                                 f"toy (test split, {N} samples, merged prompts, openai/fake-judge): 1/2 criteria pass"])

    fake_llm.reset()
    write(pytester, fake_llm, extra="inference: merged\n")
    pytester.runpytest().assert_outcomes(passed=1, failed=2)
    assert shapes(fake_llm) == {"separate": 2 * N, "merged": 0}  # the check reuses the items' merged judgments


# --------------------------------------------------------------------------
# the verdict, without a server


def difference(diff: float | None, low: float | None = None, high: float | None = None, n: int = 40,
               reason: str | None = None) -> Any:
    from pytest_judgeopt.stats import PairedDifference

    a = 0.6
    return PairedDifference(a, None if diff is None else a + diff, diff, low, high, 0.95, n, reason)


@pytest.mark.parametrize(("measured", "kind"), [
    (difference(-0.01, -0.015, 0.03), "pass"),          # the interval shows the drop is within max_drop
    (difference(-0.02, -0.02, -0.001), "pass"),         # its lower end exactly at -max_drop is allowed
    (difference(0.2, 0.1, 0.3), "pass"),                # merging helps
    (difference(-0.01, -0.05, 0.03), "inconclusive"),   # within max_drop on the estimate, not on the interval
    (difference(-0.01), "inconclusive"),                # no interval: nothing shows the drop is small
    (difference(-0.3, -0.5, -0.1), "fail"),             # beyond max_drop, interval excludes zero
    (difference(-0.3, -0.6, 0.1), "inconclusive"),      # beyond max_drop, but maybe noise
    (difference(-0.3, -0.6, 0.0), "inconclusive"),      # zero on the edge is still inside
    (difference(-0.3), "inconclusive"),                 # beyond max_drop, no interval to tell
    (difference(None, reason="judge_b: judge scores are constant (all 3)"), "undefined"),
])
def test_decide(measured: Any, kind: str) -> None:
    from pytest_judgeopt.compare import decide
    from pytest_judgeopt.interference import rules_of
    from pytest_judgeopt.spec import Interference

    verdict = decide(measured, rules_of(Interference()))
    assert verdict.kind == kind
    assert (verdict.reason is None) == (kind == "pass")


def test_decide_explains_itself() -> None:
    from pytest_judgeopt.compare import Rules, decide

    rules = Rules(max_drop=0.02, change="merging")
    inconclusive = decide(difference(-0.3, -0.6, 0.1, n=40), rules, judged=40)
    # se = 0.35 / 1.96; 80% power needs (1.96 + 0.84) * se <= 0.3: 40 * (2.802 * 0.1786 / 0.3)^2 = 111.2
    assert inconclusive.required_n == 112
    assert f"about {inconclusive.required_n} judged samples would settle it (80% power)" in inconclusive.reason
    # counted in judged samples: with a quarter of the judgments failed, 40 pairs came from 53 judged samples
    assert decide(difference(-0.3, -0.6, 0.1, n=40), rules, judged=53).required_n == 148
    undefined = decide(difference(None, reason="judge_b: judge scores are constant (all 3)"), rules)
    assert "judge_b: judge scores are constant (all 3)" in undefined.reason
    assert decide(difference(None, reason="judge_a: only 2 pairs"), rules, baseline_defined=False).kind == "no baseline"


def test_the_table_shows_the_documents_skipped_for_both_shapes(tmp_path: Path) -> None:
    """At level group a document where either shape is constant is left out of both: the table says how many, in a
    column of its own (as the comparison table does), besides the reason line."""
    from pytest_judgeopt.compare import Configuration, Side, compare
    from pytest_judgeopt.interference import InterferenceResult, rules_of
    from pytest_judgeopt.judge import Judgment
    from pytest_judgeopt.replies import Usage
    from pytest_judgeopt.spec import Interference, load_spec
    from pytest_judgeopt.text import interference_table, render

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_records(criteria=("c", "d"))))
    (tmp_path / "t.judge.yaml").write_text(spec_text(None, criteria=("c", "d"), extra="correlation: {level: group}\n"))
    spec = load_spec(tmp_path / "t.judge.yaml")
    ids = [(f"d{g}", f"d{g}-s{i}") for g in range(12) for i in range(4)]
    human = {rid: float(1 + (g + i) % 4) for g in range(12) for i in range(4) for rid in [f"d{g}-s{i}"]}

    def judged(constant_in_odd: bool) -> dict[str, list[Judgment]]:
        return {c: [Judgment(rid, group, c, human[rid],
                             3.0 if constant_in_odd and c == "c" and int(group[1:]) % 2 else human[rid], None, "", None)
                    for group, rid in ids] for c in ("c", "d")}

    sides = [Side(Configuration(label, {"c": "x", "d": "y"}, label, "m", "parsed"), judged(label == "merged"), Usage())
             for label in ("separate", "merged")]
    settings = Interference()
    comparison = compare(spec, *sides, kind="merged", split="test", rules=rules_of(settings), records=len(ids))
    check = InterferenceResult(comparison, settings, "m", {}, {}).to_json()
    assert [(c["criterion"], c["documents"], c["documents_skipped"]) for c in check["criteria"]] == [
        ("c", 12, 6), ("d", 12, 0)]
    lines = render([interference_table(check)])
    header = next(line for line in lines if line.strip().startswith("criterion"))
    assert header.split() == ["criterion", "separate", "merged", "diff", "interval", "n", "skipped", "docs",
                              "failed", "s/m", "verdict"]
    c_row = next(line for line in lines if line.strip().startswith("c "))
    d_row = next(line for line in lines if line.strip().startswith("d "))
    assert re.search(r" 24 +6 +0/0 +FAIL$", c_row), c_row
    assert re.search(r" 48 +0 +0/0 +pass$", d_row), d_row
