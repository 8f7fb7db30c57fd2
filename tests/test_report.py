"""What a run leaves behind: the terminal summary, results.json (against its schema), predictions.jsonl and
the JUnit properties, from real pytest runs against the scripted server.

One project exercises everything a report holds: an optimization whose gate accepts one criterion's
rewrite and rejects the other's, the criterion items testing the new lock, and the ``::merged``
check. The same project under pytest-xdist must report what the serial run reports.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pytest_judgeopt.replies import Usage
from pytest_judgeopt.report import merge, render, summary_sections
from tests.conftest import CRITERIA
from tests.fake_llm import FakeLLMServer
from tests.terminal import DRAW, in_terminal, screen_lines
from tests.world import MODES, everything, report_run, report_world, write_project

SCHEMA = Path(__file__).resolve().parents[1] / "pytest_judgeopt" / "schemas" / "results.schema.json"
KEY = "sk-test-not-a-real-key"


def without_timing(text: str) -> str:
    data = json.loads(text)
    data.pop("timing")
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_results_json_matches_its_schema_exactly_is_stable_and_holds_no_secret(pytester: pytest.Pytester,
                                                                              fake_llm: FakeLLMServer) -> None:
    first = report_run(pytester, fake_llm, "one")
    first.assert_outcomes(passed=4)  # optimize, both criteria on the new lock, merged
    text = (pytester.path / "one" / "results.json").read_text()
    results = json.loads(text)
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(results)
    assert text == json.dumps(results, indent=2, sort_keys=True) + "\n"  # canonical: sorted keys, fixed layout

    assert results["version"] == 2
    # every comparison with its two configurations: the merged check, the optimization's initial vs final on test
    assert sorted(c["kind"] for c in results["comparisons"]) == ["merged", "optimize"]
    merged = next(c for c in results["comparisons"] if c["kind"] == "merged")
    assert (merged["a"]["shape"], merged["b"]["shape"]) == ("separate", "merged") and merged["differs"] == [
        "shape (separate -> merged)"]
    optimized = next(c for c in results["comparisons"] if c["kind"] == "optimize")
    assert (optimized["a"]["label"], optimized["b"]["label"]) == ("initial", "final")
    assert optimized["differs"] == ["instructions (coherence)"]
    (ev,) = results["evaluations"]
    assert ev["path"] == "toy.judge.yaml" and [r["criterion"] for r in ev["results"]] == list(CRITERIA)
    assert {r["instruction_source"] for r in ev["results"]} == {"lock"}
    (check,) = results["interference"]
    assert [c["criterion"] for c in check["criteria"]] == list(CRITERIA)
    (opt,) = results["optimizations"]
    assert opt["lock_path"] == "toy.judge.lock.yaml" and opt["steps_run"] == 2
    assert opt["criteria"]["coherence"]["accepted_steps"] == [1] and opt["criteria"]["fluency"]["accepted_steps"] == []
    assert [h["accepted"] for h in opt["history"]] == [["coherence"], []]
    assert results["timing"]["optimizations"][0]["seconds"] > 0 and results["timing"]["run_seconds"] > 0

    rows = [json.loads(line) for line in (pytester.path / "one" / "predictions.jsonl").read_text().splitlines()]
    n = ev["records"]
    assert len([r for r in rows if r["source"] == "evaluation"]) == len(CRITERIA) * n
    assert len([r for r in rows if r["source"] == "interference"]) == len(CRITERIA) * n
    assert {tuple(sorted(r)) for r in rows} == {("criterion", "failed_replies", "failure", "group", "human", "index", "judge",
                                                 "outside", "path", "record_id", "replies", "reply", "scoring", "shape",
                                                 "source", "spec", "split")}
    assert all(r["split"] == "test" and r["reply"] for r in rows)
    test_ids = set(ev["split_ids"]["test"])
    assert {r["record_id"] for r in rows} <= test_ids

    for name in ("results.json", "predictions.jsonl", "index.html"):
        content = (pytester.path / "one" / name).read_text()
        assert KEY not in content and fake_llm.base_url not in content and "127.0.0.1" not in content

    # the same run again, from scratch (its own cache and checkpoints, the lock removed): the same bytes but timing
    (pytester.path / "toy.judge.lock.yaml").unlink()
    report_run(pytester, fake_llm, "two").assert_outcomes(passed=4)
    other = (pytester.path / "two" / "results.json").read_text()
    assert other != text  # the wall times differ...
    assert without_timing(other) == without_timing(text)  # ...and nothing else
    for name in ("predictions.jsonl",):
        assert (pytester.path / "two" / name).read_bytes() == (pytester.path / "one" / name).read_bytes()


def test_a_mode_study_report_matches_the_schema_too(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = report_world()
    write_project(pytester.path, fake_llm, optimize="steps: 1\nbatch_size: 2\nstudy_runs: 1")
    pytester.runpytest("--judge-optimize=study", "-k", "study", "--judge-report=out").assert_outcomes(passed=1)
    results = json.loads((pytester.path / "out" / "results.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(results)
    (study,) = results["studies"]
    assert [(r["mode"], r["criterion"]) for r in study["rows"]] == [(m, c) for m in MODES for c in CRITERIA]
    assert all(row["specificity"] == 8.0 for row in study["rows"])  # a study runs the diagnostics
    assert results["optimizations"] == []  # the study's runs are summed up in its rows; it writes no lock
    assert "mode study" in (pytester.path / "out" / "index.html").read_text()


def section(result: pytest.RunResult, title: str) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.fullmatch(rf"=+ {title} =+", line))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("====")), len(lines))
    return lines[start + 1:end]


def test_terminal_summary_answers_can_i_trust_this_judge(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    result = report_run(pytester, fake_llm, "out")
    assert "\x1b[" not in result.stdout.str()  # not a terminal: plain text
    optimization = section(result, "judge optimization")
    assert optimization[0].startswith("toy: mode SSS, 2 steps, seed 0") and "wrote toy.judge.lock.yaml" in optimization[0]
    text = "\n".join(optimization)
    assert re.search(r"criterion\s+val before\s+val after\s+test before\s+test after\s+difference\s+accepted steps", text)
    assert re.search(r"coherence\s+-?\d\.\d{3}\s+1\.000\s+\S+ \[\S+, \S+\]\s+1\.000 \[\S+, \S+\]\s+\S+ \[\S+, \S+\]\s+1$", text, re.M)
    assert re.search(r"fluency\s+1\.000\s+1\.000 .* none$", text, re.M)
    assert "+Count the facts" in text
    assert "fluency: unchanged (rejected by the val gate: fluency val spearman would fall from 1.000 to 0.725" in text
    assert re.search(r"calls: \d+ \(\d+ made, \d+ from cache or shared; .*\); tokens [\d,]+ in, [\d,]+ out; "
                     r"cost unknown; wall time \d+\.\d s", text)

    agreement = section(result, "judge agreement")
    assert agreement[0] == "toy (test split, 18 samples, separate prompts, openai/fake-judge): 2/2 criteria pass"
    assert re.match(r"\s+criterion\s+metric\s+value\s+interval\s+min\s+n\s+judged\s+failed\s+docs\s+verdict$", agreement[1])
    rows = [line for line in agreement if re.match(r"\s+(coherence|fluency)\s+spearman", line)]
    assert len(rows) == 2 and all(re.search(r"1\.000\s+\[1\.000, 1\.000\]\s+0\.50\s+18\s+18\s+0\s+6\s+pass$", r)
                                  for r in rows)
    assert "instructions from lock: coherence, fluency" in "\n".join(agreement)
    assert any(line.startswith("toy merged vs separate prompts") and line.endswith("2/2 criteria hold") for line in agreement)
    assert agreement[-1].startswith("model calls: ")
    assert section(result, "judge report") == ["wrote out/results.json, out/predictions.jsonl, out/index.html"]

    quiet = pytester.runpytest("-q", "--judge-report=out", "--judge-cache-dir=out-cache")
    quiet.assert_outcomes(passed=3)
    assert section(quiet, "judge agreement") == [
        "toy: 2/2 criteria pass (test split, 18 samples, separate prompts, openai/fake-judge); "
        "merged prompt: 2/2 criteria hold"]
    assert "judging toy" not in quiet.stdout.str()


def test_summary_colours_only_on_a_terminal_without_no_color() -> None:
    ev = {"spec": "toy", "path": "/x/toy.judge.yaml", "split": "test", "shape": "separate", "model": "m", "records": 3,
          "results": [{"criterion": "coherence", "method": "spearman", "value": 0.1, "low": -0.2, "high": 0.4,
                       "min_rho": 0.3, "n": 3, "pairs": 2, "parse_failures": {"refusal": 1}, "passed": False,
                       "undefined_reason": None, "instruction": "i", "instruction_source": "spec", "documents": None}]}
    found = merge([{"evaluations": [ev], "usage": {"judge": Usage(calls=3).state()}}])
    sections = dict(summary_sections(found))
    plain = render(sections["judge agreement"])
    assert plain[0] == "toy (test split, 3 samples, separate prompts, m): 0/1 criteria pass"
    assert re.fullmatch(r"\s+coherence\s+spearman\s+0\.100\s+\[-0\.200, 0\.400\]\s+0\.30\s+2\s+3\s+1\s+-\s+FAIL", plain[3])
    assert not any("\x1b" in line for line in plain)
    coloured = render(sections["judge agreement"], color=True, width=100)
    assert any("\x1b[" in line and "FAIL" in line for line in coloured)
    assert re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(coloured)).split() == "\n".join(plain).split()


def test_merging_is_deterministic_and_reports_work_two_workers_both_did_once() -> None:
    def ev(spec: str, value: float) -> dict[str, Any]:
        return {"spec": spec, "path": f"/p/{spec}.judge.yaml", "split": "test", "shape": "separate",
                "results": [{"criterion": "c", "instruction": "i", "value": value}]}

    a, b = ev("b", 0.5), ev("a", 0.2)
    one = merge([{"evaluations": [a, b], "notes": ["y", "x"]}, {"evaluations": [dict(a)], "notes": ["x"]}])
    two = merge([{"evaluations": [b]}, {"evaluations": [a], "notes": ["x", "y"]}])
    assert one["evaluations"] == two["evaluations"] == [b, a]
    assert one["notes"] == two["notes"] == ["x", "y"]


def properties(tree: ET.ElementTree, name: str) -> dict[str, str]:
    case = next(c for c in tree.iter("testcase") if c.get("name") == name)
    return {p.get("name"): p.get("value") for p in case.iter("property")}


def test_every_item_carries_its_numbers_as_junit_properties(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    report_run(pytester, fake_llm, "out", "--junitxml=junit.xml").assert_outcomes(passed=4)
    tree = ET.parse(pytester.path / "junit.xml")
    coherence = properties(tree, "coherence")
    assert set(coherence) == {"judge_metric", "judge_level", "judge_rho", "judge_ci_low", "judge_ci_high", "judge_n",
                              "judge_pairs", "judge_documents", "judge_min_rho", "judge_parse_failures", "judge_shape"}
    assert float(coherence["judge_rho"]) == pytest.approx(1.0) and coherence["judge_n"] == "18"
    assert coherence["judge_min_rho"] == "0.5" and coherence["judge_parse_failures"] == "0"

    merged = properties(tree, "merged")
    per_criterion = ("separate", "merged", "diff", "low", "high", "n", "parse_failures", "verdict")
    assert set(merged) == ({f"interference_{c}_{k}" for c in CRITERIA for k in per_criterion}
                           | {f"interference_{k}_{s}" for k in ("calls", "prompt_tokens") for s in ("separate", "merged")}
                           | {"interference_max_drop"})
    assert merged["interference_fluency_verdict"] == "pass" and merged["interference_fluency_n"] == "18"
    assert merged["interference_max_drop"] == "0.02"

    optimize = properties(tree, "optimize")
    per_criterion = ("val_before", "val_after", "test_before", "test_before_low", "test_before_high", "test_after",
                     "test_after_low", "test_after_high", "test_n", "test_diff", "test_diff_low", "test_diff_high",
                     "accepted_steps")
    assert set(optimize) == ({f"optimize_{c}_{k}" for c in CRITERIA for k in per_criterion}
                             | {"optimize_mode", "optimize_steps_run", "optimize_calls", "optimize_calls_made",
                                "optimize_prompt_tokens", "optimize_completion_tokens", "optimize_cost_usd",
                                "optimize_wall_seconds"})
    assert optimize["optimize_coherence_accepted_steps"] == "1" and optimize["optimize_fluency_accepted_steps"] == ""
    assert float(optimize["optimize_coherence_test_after"]) == pytest.approx(1.0)
    assert float(optimize["optimize_coherence_val_after"]) > float(optimize["optimize_coherence_val_before"])
    assert optimize["optimize_mode"] == "SSS" and optimize["optimize_steps_run"] == "2"


# ---------------------------------------------------------------------------------------------
# pytest-xdist: the controller reports what the workers measured, as a serial run would


def comparable(folder: Path) -> Iterator[Any]:
    """results.json less what a run spent (timing; usage, which depends on what the cache held when, and a
    worker may find the other's answers there or ask for them again) and the per-sample rows: what was measured."""
    data = json.loads((folder / "results.json").read_text())
    for key in ("timing", "usage"):
        data.pop(key)
    for optimization in data["optimizations"]:
        optimization.pop("usage")
    yield data
    yield (folder / "predictions.jsonl").read_text()


@pytest.mark.posix
def test_two_workers_write_the_report_and_summary_of_a_serial_run(pytester: pytest.Pytester,
                                                                  fake_llm: FakeLLMServer) -> None:
    everything(pytester.path, fake_llm)
    second = write_project(pytester.path / "second", fake_llm, optimize="steps: 1\nbatch_size: 2", min_rho=0.5)
    second.write_text(second.read_text().replace("from 1 to 5.", "on a scale of 1 to 5."))  # no answer shared
    options = ("--judge-optimize", "--judge-retries=1")
    # in a terminal, where a serial run would draw its status: workers must not (their output is not one)
    screen = in_terminal(pytester.path, "-n", "2", *options, "--judge-report=parallel",
                         "--judge-cache-dir=parallel-cache", columns=250, cache="use")
    assert not DRAW.search(screen) and "calls/s" not in screen and "judging toy" not in screen
    parallel = pytest.RunResult(0, screen_lines(screen), [], 0.0)
    for lock in pytester.path.rglob("*.lock.yaml"):
        lock.unlink()
    serial = pytester.runpytest(*options, "--judge-report=serial", "--judge-cache-dir=serial-cache")
    serial.assert_outcomes(passed=8)
    parallel.assert_outcomes(passed=8)
    assert "2 workers [8 items]" in parallel.stdout.str()
    one, two = list(comparable(pytester.path / "serial")), list(comparable(pytester.path / "parallel"))
    assert len(one[0]["evaluations"]) == len(one[0]["optimizations"]) == len(one[0]["interference"]) == 2
    assert one == two
    for title in ("judge optimization", "judge agreement"):  # all but what was spent: calls, tokens, time
        spent = re.compile(r"\s*(calls|model calls): ")
        assert ([line for line in section(serial, title) if not spent.match(line)]
                == [line for line in section(parallel, title) if not spent.match(line)])
    assert section(parallel, "judge agreement")[-1].startswith("model calls: ")
