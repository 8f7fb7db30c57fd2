"""Paired comparisons (compare.py): earlier runs (--judge-baseline), model switches (--judge-compare-model,
judge.compare), and the verdict rules they share, against the scripted server."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import human_from_prompt, make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer, noisy

RECORDS = make_records(n_groups=20)  # the test split (seed 1, half the documents) holds 10 documents, 40 samples


def write(pytester: pytest.Pytester, server: FakeLLMServer, records: list[dict[str, Any]] = RECORDS,
          **spec_args: Any) -> None:
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec_args.setdefault("min_rho", -1.0)  # the criterion items are not what these tests are about
    spec_args.setdefault("extra", "interference: false\n")
    (pytester.path / "toy.judge.yaml").write_text(spec_text(server_model(server), **spec_args))


def baseline_run(pytester: pytest.Pytester, server: FakeLLMServer, responder: Any, folder: str = "base",
                 records: list[dict[str, Any]] = RECORDS) -> None:
    server.responder = responder
    write(pytester, server, records)
    pytester.runpytest(f"--judge-report={folder}").assert_outcomes(passed=2)
    assert (pytester.path / folder / "predictions.jsonl").is_file()


def row(out: str, criterion: str) -> str:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "against the baseline" in line or "model comparison" in line)
    return next(line for line in lines[start:] if line.strip().startswith(criterion + " "))


def test_a_run_against_its_own_report_passes(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    baseline_run(pytester, fake_llm, human_from_prompt(RECORDS))
    fake_llm.reset()
    result = pytester.runpytest("-v", "--judge-baseline=base", "--junitxml=out.xml")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*toy.judge.yaml::baseline PASSED*"])
    out = result.stdout.str()
    assert re.search(r"coherence +1\.000 +1\.000 +\+0\.000 +\[\+0\.000, \+0\.000\] +40 .* pass", out)
    assert "differs: nothing (same instructions, model, shape, scoring and data)" in out
    assert fake_llm.chat_requests() == []  # this run's judgments came from the cache, the baseline's from its report
    case = next(c for c in ET.parse(pytester.path / "out.xml").iter("testcase") if c.get("name") == "baseline")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["baseline_coherence_verdict"] == "pass" and props["baseline_coherence_n"] == "40"
    assert props["baseline_max_drop"] == "0.02" and props["baseline_unpaired_a"] == "0"


def test_a_noisy_judge_fails_against_a_good_baseline_with_the_drop_and_its_interval(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    baseline_run(pytester, fake_llm, human_from_prompt(RECORDS))
    fake_llm.responder = noisy(seed=3)
    result = pytester.runpytest("--judge-baseline=base", "--judge-cache=off", "--judge-report=now")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "toy::baseline failed: this run is worse than the baseline on coherence, fluency" in out
    match = re.search(r"coherence: this run drops rho by (\d\.\d+) \(1\.000 -> (-?\d\.\d+)\), beyond max_drop 0\.02; "
                      r"the 95% interval of the difference \[([-+]\d\.\d+), ([-+]\d\.\d+)\] excludes zero", out)
    assert match, out
    drop, after, low, high = map(float, match.groups())
    assert drop == pytest.approx(1 - after, abs=1e-3) and low <= -drop <= high < 0
    report = json.loads((pytester.path / "now" / "results.json").read_text())
    (compared,) = [c for c in report["comparisons"] if c["kind"] == "baseline"]
    assert compared["passed"] is False and compared["a"]["label"] == "baseline" and compared["b"]["label"] == "this run"
    assert [c["verdict"] for c in compared["criteria"]] == ["fail", "fail"]
    html = (pytester.path / "now" / "index.html").read_text()
    assert "this run against the baseline" in html and '<svg class="paired"' in html


def test_a_better_run_passes(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    baseline_run(pytester, fake_llm, noisy(seed=3))
    fake_llm.responder = human_from_prompt(RECORDS)
    result = pytester.runpytest("--judge-baseline=base", "--judge-cache=off")
    result.assert_outcomes(passed=3)
    line = row(result.stdout.str(), "coherence")
    assert re.search(r" 1\.000 +\+\d\.\d+ ", line) and line.endswith("pass")


def test_what_differs_is_said(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    baseline_run(pytester, fake_llm, human_from_prompt(RECORDS))
    spec = pytester.path / "toy.judge.yaml"
    spec.write_text(spec.read_text().replace("Rate the fluency from 1 to 5.", "Rate how fluent it reads, 1 to 5."))
    result = pytester.runpytest("--judge-baseline=base", "-rA")
    result.assert_outcomes(passed=3)
    assert "differs: instructions (fluency)" in result.stdout.str()


def test_a_baseline_of_another_dataset_fails_saying_so(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    other = [{**r, "id": "other-" + r["id"]} for r in RECORDS]
    baseline_run(pytester, fake_llm, human_from_prompt(other), records=other)
    fake_llm.responder = human_from_prompt(RECORDS)
    write(pytester, fake_llm)
    result = pytester.runpytest("--judge-baseline=base")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "no sample of this run's test split was judged in the baseline (40 baseline samples, 40 here): it comes " \
           "from another dataset or split (data hash" in out
    assert "could not be paired: 40 baseline samples (other-d" in out


def test_a_missing_or_malformed_baseline_folder_is_a_clear_error(pytester: pytest.Pytester,
                                                                 fake_llm: FakeLLMServer) -> None:
    write(pytester, fake_llm)
    result = pytester.runpytest("--judge-baseline=nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--judge-baseline: nowhere: no such folder. Fix: pass --judge-baseline a folder "
                                 "written by an earlier run's --judge-report*"])

    baseline_run(pytester, fake_llm, human_from_prompt(RECORDS))
    results = pytester.path / "base" / "results.json"
    good = results.read_text()
    results.write_text(good[:200])
    result = pytester.runpytest("--judge-baseline=base")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--judge-baseline: base/results.json:*: not JSON (*). Fix: *"])

    results.write_text(good)
    predictions = pytester.path / "base" / "predictions.jsonl"
    lines = predictions.read_text().splitlines()
    predictions.write_text("\n".join([*lines[:2], "{broken", *lines[2:]]) + "\n")
    result = pytester.runpytest("--judge-baseline=base")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--judge-baseline: base/predictions.jsonl:3: not JSON (*). Fix: *"])

    predictions.unlink()
    result = pytester.runpytest("--judge-baseline=base")
    result.stderr.fnmatch_lines(["*--judge-baseline: base/predictions.jsonl: not found. Fix: *"])


def two_models(records: list[dict[str, Any]]) -> Any:
    """A good judge (the human scores) under the configured model, a noisy one under openai/cheap."""
    good, bad = human_from_prompt(records), noisy(seed=5)
    return lambda body: bad(body) if body["model"].endswith("cheap") else good(body)


def test_switching_to_a_worse_model_fails_the_compare_item(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = two_models(RECORDS)
    write(pytester, fake_llm)
    result = pytester.runpytest("--judge-compare-model=openai/cheap", "--junitxml=out.xml")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "toy::compare failed: openai/cheap is worse than the configured judge on coherence, fluency" in out
    assert "switching to openai/cheap drops rho by" in out
    assert "differs: model (openai/fake-judge -> openai/cheap)" in out
    assert re.search(r"cost: configured 80 calls, [\d,]+ prompt tokens, [\d,]+ completion tokens, cost unknown; "
                     r"openai/cheap 80 calls", out), out
    models = [b["model"] for b in fake_llm.chat_requests()]
    assert models.count("cheap") == 80 and models.count("fake-judge") == 80  # each model judged the test split once
    case = next(c for c in ET.parse(pytester.path / "out.xml").iter("testcase") if c.get("name") == "compare")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["compare_fluency_verdict"] == "fail" and props["compare_calls_b"] == "80"


def test_switching_to_an_equal_model_passes(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    write(pytester, fake_llm)
    pytester.makeini("[pytest]\njudge_compare_model = openai/twin\n")
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*toy.judge.yaml::compare PASSED*"])


def test_judge_compare_from_python(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = two_models(RECORDS)
    write(pytester, fake_llm)
    pytester.makepyfile(test_mine="""
        def test_switch(judge):
            result = judge.compare("toy.judge.yaml", model="openai/cheap")
            assert not result.passed and result.kind == "compare"
            assert result.a.model == "openai/fake-judge" and result.b.model == "openai/cheap"
            coherence = result.criteria["coherence"]
            assert coherence.a > 0.999 and coherence.diff < 0 and coherence.n == 40 and coherence.verdict == "fail"
            assert result.usage_a.calls == 80 and result.usage_b.calls == 80
            same = judge.compare("toy.judge.yaml", shape="separate",
                                 instructions={"coherence": "Rate the coherence from 1 to 5."})
            assert same.passed and same.differs == []
            assert judge.compare("toy.judge.yaml", model="openai/cheap") is result
    """)
    pytester.runpytest("test_mine.py").assert_outcomes(passed=1)


# --------------------------------------------------------------------------
# the comparison, without a server


def judgments(scores: dict[str, float | None], human: dict[str, float], criterion: str = "c") -> list[Any]:
    from pytest_judgeopt.judge import Judgment

    return [Judgment(rid, rid.split("-")[0], criterion, human[rid], s, None if s is not None else "no_score", "", None)
            for rid, s in scores.items()]


def tiny_spec(tmp_path: Path, extra: str = "") -> Any:
    from pytest_judgeopt.spec import load_spec

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_records(criteria=("c",))))
    (tmp_path / "t.judge.yaml").write_text(spec_text(None, criteria=("c",), extra=extra))
    return load_spec(tmp_path / "t.judge.yaml")


def side(label: str, found: list[Any]) -> Any:
    from pytest_judgeopt.compare import Configuration, Side

    return Side(Configuration(label, {"c": "x"}, "separate", "m", "parsed"), {"c": found})


def test_constant_judge_documents_are_skipped_for_both_and_counted(tmp_path: Path) -> None:
    from pytest_judgeopt.compare import Rules, compare

    spec = tiny_spec(tmp_path, "correlation: {level: group}\n")
    ids = [f"d{g}-s{i}" for g in range(12) for i in range(4)]
    human = {rid: float(1 + (int(rid[1:].split("-")[0]) + int(rid[-1])) % 4) for rid in ids}
    a = {rid: human[rid] for rid in ids}
    # judge b is perfect where it varies, and answers a constant 3 in half the documents
    b = {rid: (3.0 if int(rid[1:].split("-")[0]) % 2 else human[rid]) for rid in ids}
    result = compare(spec, side("a", judgments(a, human)), side("b", judgments(b, human)), kind="merged", split="test",
                     rules=Rules(), records=len(ids))
    c = result.criteria["c"]
    assert c.documents == 12 and c.documents_skipped == 6 and c.n == 24  # the same 6 documents left out of both
    assert c.a == c.b == pytest.approx(1.0)  # measured on the same documents, neither side is rewarded
    assert c.verdict == "fail" and not result.passed
    assert any("6 of 12 documents skipped for both sides (judge b constant in 6), above the allowed 10%" in r
               for r in c.reasons)


def test_no_baseline_with_failed_replies_fails(tmp_path: Path) -> None:
    from pytest_judgeopt.compare import Rules, compare

    spec = tiny_spec(tmp_path)
    ids = [f"d{g}-s{i}" for g in range(10) for i in range(4)]
    human = {rid: float(1 + int(rid[-1])) for rid in ids}
    a = {rid: 2.0 for rid in ids}  # constant: side a's own rho is undefined
    b = {rid: (None if k % 2 else human[rid]) for k, rid in enumerate(ids)}
    result = compare(spec, side("a", judgments(a, human)), side("b", judgments(b, human)), kind="merged", split="test",
                     rules=Rules(b_noun="merged", a_noun="separate prompts"), records=len(ids))
    c = result.criteria["c"]
    assert c.verdict == "fail" and "20/40 merged judgments failed (50%), above the allowed 10%" in c.reasons[0]
    b = {rid: human[rid] for rid in ids}
    result = compare(spec, side("a", judgments(a, human)), side("b", judgments(b, human)), kind="merged", split="test",
                     rules=Rules(), records=len(ids))
    assert result.criteria["c"].verdict == "no baseline" and result.passed


def test_unpaired_samples_are_named(tmp_path: Path) -> None:
    from pytest_judgeopt.compare import Rules, compare

    spec = tiny_spec(tmp_path)
    ids = [f"d{g}-s{i}" for g in range(10) for i in range(4)]
    human = {rid: float(1 + (int(rid[1]) + int(rid[-1])) % 5) for rid in ids}
    a = judgments({rid: human[rid] for rid in ids[:-2]}, human)
    b = judgments({rid: human[rid] for rid in ids[2:]}, human)
    result = compare(spec, side("a", a), side("b", b), kind="baseline", split="test", rules=Rules(), records=40)
    assert result.unpaired == {"a": ["d0-s0", "d0-s1"], "b": ["d9-s2", "d9-s3"]}
    assert result.criteria["c"].n == 36 and result.criteria["c"].verdict == "pass"


def test_required_sample_size_is_for_80_percent_power_in_judged_samples() -> None:
    from scipy.stats import norm

    from pytest_judgeopt.compare import required_sample_size

    # a drop of 0.1 beyond max_drop 0.02, interval half-width 0.2 on 50 pairs of 100 judged samples
    needed = required_sample_size(-0.1, -0.3, 0.1, 0.02, pairs=50, judged=100, confidence=0.95)
    z = norm.ppf(0.975) + norm.ppf(0.8)
    assert needed == pytest.approx(100 * (z * 0.2 / norm.ppf(0.975) / 0.1) ** 2, abs=1)
    # a small drop whose interval reaches below -max_drop: settled when the lower end clears -0.02
    small = required_sample_size(-0.01, -0.05, 0.03, 0.02, pairs=100, judged=100, confidence=0.95)
    assert small == pytest.approx(100 * (z * 0.04 / norm.ppf(0.975) / 0.01) ** 2, abs=1)
    assert required_sample_size(-0.02, -0.05, 0.01, 0.02, pairs=10, judged=10, confidence=0.95) is None
