"""Collection of *.judge.yaml files by the plugin: items, readable errors, options, and a light import."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.options import OPTIONS
from tests.conftest import make_records, spec_text

HEAVY = ("litellm", "scipy", "rich")
ONLY_CRITERIA = "interference: false\n"  # no cross-criterion item: the items are exactly the criteria


def write(pytester: pytest.Pytester, *, name: str = "toy.judge.yaml", folder: str = "",
          records: list[dict[str, Any]] | None = None, spec: str | None = None) -> Path:
    root = pytester.path / folder
    root.mkdir(parents=True, exist_ok=True)
    rows = make_records() if records is None else records
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = root / name
    path.write_text(spec_text(None, extra=ONLY_CRITERIA) if spec is None else spec)
    return path


def collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_each_criterion_is_an_item(pytester: pytest.Pytester) -> None:
    write(pytester)
    write(pytester, folder="judges", spec=spec_text(None, criteria=("relevance", "consistency", "fluency"), extra=ONLY_CRITERIA),
          records=make_records(criteria=("relevance", "consistency", "fluency")))
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert collected(result) == ["judges/toy.judge.yaml::relevance", "judges/toy.judge.yaml::consistency",
                                 "judges/toy.judge.yaml::fluency", "toy.judge.yaml::coherence", "toy.judge.yaml::fluency"]
    result.stdout.fnmatch_lines(["5 tests collected*"])


def test_items_point_at_their_criterion_line(pytester: pytest.Pytester) -> None:
    write(pytester)
    items, _ = pytester.inline_genitems()
    assert [(item.name, item.reportinfo()[1], item.reportinfo()[2]) for item in items] == [
        ("coherence", 9, "judge toy.judge.yaml::coherence"), ("fluency", 13, "judge toy.judge.yaml::fluency")]


def test_other_yaml_files_are_not_collected(pytester: pytest.Pytester) -> None:
    write(pytester)
    (pytester.path / "config.yaml").write_text("criteria: nonsense\n")
    (pytester.path / "toy.judge.yaml.bak").write_text("criteria: nonsense\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK and len(collected(result)) == 2


def test_broken_spec_is_a_collection_error_without_traceback(pytester: pytest.Pytester) -> None:
    text = spec_text(None, extra=ONLY_CRITERIA).replace("    min_rho: 0.5\n", "    min_roh: 0.5\n", 1)
    line = text.splitlines().index("    min_roh: 0.5") + 1
    write(pytester, spec=text)
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert f"toy.judge.yaml:{line}: criteria.coherence.min_roh: unknown key 'min_roh'. Fix: did you mean 'min_rho'?" in out
    assert "Traceback" not in out and "SpecError" not in out and "spec.py" not in out


def test_a_criterion_without_min_rho_is_a_collection_error(pytester: pytest.Pytester) -> None:
    text = spec_text(None, extra=ONLY_CRITERIA).replace("    min_rho: 0.5\n", "", 1)
    line = text.splitlines().index("  coherence:") + 1
    write(pytester, spec=text)
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*toy.judge.yaml:{line}: criteria.coherence: missing key 'min_rho'. Fix: this criterion "
                                 "has no gate, so its item could never fail: add `min_rho:` *, or `min_rho: null` to "
                                 "report its agreement without ever failing"])


def test_a_spec_without_group_whose_sources_repeat_says_so(pytester: pytest.Pytester) -> None:
    """Done-when of issue 11: without `dataset.group` each record is its own group, and the four summaries of
    one article would land in different splits; collection says so and names the fix."""
    text = spec_text(None, extra=ONLY_CRITERIA).replace("  group: group\n", "")
    line = text.splitlines().index("dataset:") + 1
    write(pytester, spec=text)  # 6 articles x 4 summaries
    result = pytester.runpytest("--collect-only", "-q", "-W", "default::pytest_judgeopt.spec.SpecWarning")
    assert result.ret == pytest.ExitCode.OK and len(collected(result)) == 2
    result.stdout.fnmatch_lines([f"*SpecWarning: *toy.judge.yaml:{line}: dataset.group: no group is set, so each record "
                                 "is its own group, but input 'source' repeats: 24 of 24 records share 6 texts (record "
                                 "'d0-s0' and 3 more have the same one), so records of one source would fall into "
                                 "several splits and the test split would not be held out. Fix: set `dataset.group` "
                                 "to the field naming the source (its own field `source` will do), or `split.by: "
                                 "record` to split records on purpose"])
    write(pytester, spec=text.replace("seed: 1}", "seed: 1, by: record}"))  # chosen on purpose: nothing to say
    result = pytester.runpytest("--collect-only", "-q", "-W", "default::pytest_judgeopt.spec.SpecWarning")
    assert result.ret == pytest.ExitCode.OK and "dataset.group" not in result.stdout.str()
    write(pytester, spec=text, records=[{**r, "source": f"Article {r['id']}."} for r in make_records()])
    result = pytester.runpytest("--collect-only", "-q", "-W", "default::pytest_judgeopt.spec.SpecWarning")
    assert result.ret == pytest.ExitCode.OK and "dataset.group" not in result.stdout.str()  # no source repeats


def test_collection_errors_list_every_problem_and_keep_other_specs(pytester: pytest.Pytester) -> None:
    write(pytester, name="good.judge.yaml")
    text = spec_text(None, extra=ONLY_CRITERIA).replace("min_rho: 0.5", "min_rho: 2", 1).replace("test: 0.5", "test: 1.5")
    write(pytester, name="bad.judge.yaml", spec=text)
    result = pytester.runpytest("--collect-only", "-q", "--continue-on-collection-errors")
    out = result.stdout.str()
    assert re.search(r"bad\.judge\.yaml:7: split\.test: 1\.5 is outside \[0, 1\]\. Fix: ", out)
    assert re.search(r"bad\.judge\.yaml:13: criteria\.coherence\.min_rho: 2 is outside \[-1, 1\]\. Fix: ", out)
    assert collected(result) == ["good.judge.yaml::coherence", "good.judge.yaml::fluency"]
    assert "Traceback" not in out


def test_bad_data_row_fails_collection_naming_data_file_and_line(pytester: pytest.Pytester) -> None:
    records = make_records()
    records[6]["scores"]["fluency"] = 11
    write(pytester, records=records)
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "data.jsonl:7: scores.fluency: human score 11 is outside the scale [1, 5]. Fix: " in out
    assert "Traceback" not in out


def test_spec_glob_ini_changes_which_files_are_collected(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\njudge_spec_glob = *.judge.yml\n")
    write(pytester, name="short.judge.yml")
    write(pytester, name="long.judge.yaml", spec="this: is not read\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert collected(result) == ["short.judge.yml::coherence", "short.judge.yml::fluency"]


def test_spec_glob_takes_several_patterns(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\njudge_spec_glob = *.judge.yml judge_*.yaml\n")
    write(pytester, name="a.judge.yml")
    write(pytester, name="judge_b.yaml")
    write(pytester, name="c.judge.yaml")
    result = pytester.runpytest("--collect-only", "-q")
    assert sorted({line.split("::")[0] for line in collected(result)}) == ["a.judge.yml", "judge_b.yaml"]


def test_help_lists_every_judge_option_in_the_judgeopt_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    start = out.index("LLM judge tests (pytest-judgeopt):")
    group = out[start:]
    group = group[:re.search(r"\n\S", group).start()]  # up to the next unindented heading
    in_group = set(re.findall(r"^  (--judge-[\w-]+)", group, re.M))
    defined = set(re.findall(r"^  (--judge-[\w-]+)", out, re.M))  # option lines anywhere in the help
    flags = {flag for flag, *_ in OPTIONS}
    assert len(flags) >= 8 and all(flag.startswith("--judge-") for flag in flags)
    assert flags <= in_group, f"missing from the judgeopt group: {sorted(flags - in_group)}"
    assert defined == in_group, f"--judge-* options outside the judgeopt group: {sorted(defined - in_group)}"
    ini = out[out.index("[pytest] "):]
    for name in [name for _, name, *_ in OPTIONS] + ["judge_spec_glob"]:
        assert re.search(rf"^  {name} \(", ini, re.M), f"ini {name} is not listed"


def test_importing_the_plugin_imports_no_heavy_module() -> None:
    code = ("import sys, json; import pytest_judgeopt.plugin; "
            f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == []


RECORD_MODULES = """
import json, sys

def pytest_collection_finish(session):
    with open("modules.json", "w") as handle:
        json.dump(sorted(sys.modules), handle)
"""


def test_collecting_a_spec_imports_no_heavy_module(pytester: pytest.Pytester) -> None:
    write(pytester, spec=spec_text(None))  # the defaults, whatever items they bring besides the criteria
    pytester.makeconftest(RECORD_MODULES)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    assert collected(result)[:2] == ["toy.judge.yaml::coherence", "toy.judge.yaml::fluency"]
    modules = set(json.loads((pytester.path / "modules.json").read_text()))
    assert {"pytest_judgeopt.plugin", "pytest_judgeopt.spec", "pytest_judgeopt.data"} <= modules  # it did collect
    assert {m for m in modules if m.split(".")[0] in HEAVY} == set()


# -- issue 12.4: a custom template that leaves an input out -----------------------------------------

UNUSED = "judge:\n  template: '{source}\\n{criteria}\\n{format}'\n"


def test_a_template_that_never_uses_an_input_is_a_collection_error(pytester: pytest.Pytester) -> None:
    write(pytester, spec=spec_text(None, extra=ONLY_CRITERIA + UNUSED))
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*toy.judge.yaml:*: judge.template: the template never uses the input(s) {summary}, "
                                 "so the judge would not see them. Fix: *"])
    assert "Traceback" not in result.stdout.str()


def test_unused_inputs_warn_collects_with_a_warning(pytester: pytest.Pytester) -> None:
    write(pytester, spec=spec_text(None, extra=ONLY_CRITERIA + UNUSED + "  unused_inputs: warn\n"))
    result = pytester.runpytest("--collect-only", "-q", "-W", "default::pytest_judgeopt.spec.SpecWarning")
    assert result.ret == pytest.ExitCode.OK and len(collected(result)) == 2
    result.stdout.fnmatch_lines(["*SpecWarning: *toy.judge.yaml:*: judge.template: the template never uses the input(s) "
                                 "{summary}*"])
