"""load_spec: every mistake comes back as `path:LINE: key.path: what. Fix: how`; valid specs become plain objects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pytest_judgeopt import spec as spec_module
from pytest_judgeopt import spec_schema
from pytest_judgeopt.spec import (
    Correlation,
    Interference,
    JudgeSettings,
    Model,
    SpecError,
    Split,
    load_spec,
)
from pytest_judgeopt.spec_schema import schema

# Line numbers matter: the table below names the line of each offending key in this text.
BASE = """\
name: toy
model: openai/gpt-4o-mini
dataset:
  path: data.jsonl
  group: group
  inputs: {source: source, summary: summary}
  scores: scores
split:
  train: 0.25
  val: 0.25
  test: 0.5
  seed: 1
correlation:
  method: spearman
  level: pooled
criteria:
  coherence:
    instruction: Rate the coherence from 1 to 5.
    scale: [1, 5]
    min_rho: 0.5
  fluency:
    instruction: Rate the fluency.
    min_rho: null
    scale: [1, 5]
"""
assert BASE.splitlines()[15] == "criteria:" and BASE.splitlines()[19] == "    min_rho: 0.5"


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once"
    return text.replace(old, new)


def before_correlation(block: str) -> str:
    """Insert lines at line 13, pushing `correlation:` down."""
    return edit("correlation:\n", block + "correlation:\n")


def without_lines(first: int, last: int) -> str:
    return "".join(line for n, line in enumerate(BASE.splitlines(keepends=True), 1) if not first <= n <= last)


def write(folder: Path, content: str | bytes, name: str = "toy.judge.yaml") -> Path:
    (folder / "data.jsonl").write_text('{"id": "a"}\n')
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def problems_of(path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path, **kwargs)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


@dataclass(frozen=True)
class Broken:
    id: str
    content: str | bytes
    line: int | None  # the line of the offending key; None when the file as a whole is wrong
    key: str | None  # the dotted key path the message names
    what: str
    fix: str
    problems: int = 1  # one mistake, one problem: an edit that breaks one thing is not reported as several


BROKEN = [
    Broken("unknown top-level key", edit("criteria:", "critera:"), 16, "critera",
           "unknown key 'critera'", "did you mean 'criteria'?", problems=2),  # and criteria is missing
    Broken("unknown nested key", edit("min_rho: 0.5", "min_roh: 0.5"), 20, "criteria.coherence.min_roh",
           "unknown key 'min_roh'", "did you mean 'min_rho'?", problems=2),  # and min_rho is missing, as with critera
    Broken("unknown model role", edit("model: openai/gpt-4o-mini", "models:\n  jduge: openai/gpt-4o"), 3, "models.jduge",
           "unknown key 'jduge'", "did you mean 'judge'?"),
    Broken("min_rho as text", edit("min_rho: 0.5", "min_rho: high"), 20, "criteria.coherence.min_rho",
           'expected a number or null, got text ("high")', "write a number or null here"),
    Broken("min_rho true/false", edit("min_rho: 0.5", "min_rho: true"), 20, "criteria.coherence.min_rho",
           "expected a number or null, got true/false", "write a number or null here"),
    Broken("scale as text", edit("scale: [1, 5]\n    min_rho", "scale: 1-5\n    min_rho"), 19, "criteria.coherence.scale",
           'expected a list, got text ("1-5")', "write a list here"),
    Broken("criteria as a list", BASE.split("criteria:")[0] + "criteria:\n  - coherence\n  - fluency\n", 16, "criteria",
           "expected a mapping, got a list", "write a mapping here"),
    Broken("min_rho above 1", edit("min_rho: 0.5", "min_rho: 1.5"), 20, "criteria.coherence.min_rho",
           "1.5 is outside [-1, 1]", "use a value in [-1, 1]"),
    Broken("min_rho nan", edit("min_rho: 0.5", "min_rho: .nan"), 20, "criteria.coherence.min_rho",
           "nan is not a finite number", "write a finite number"),
    Broken("scale reversed", edit("scale: [1, 5]\n    min_rho", "scale: [5, 1]\n    min_rho"), 19, "criteria.coherence.scale",
           "the lowest score 5 is not below the highest 1", "write [lowest, highest], e.g. [1, 5]"),
    Broken("scale of one point", edit("scale: [1, 5]\n    min_rho", "scale: [3, 3]\n    min_rho"), 19,
           "criteria.coherence.scale", "the lowest score 3 is not below the highest 3", "write [lowest, highest]"),
    Broken("scale of three numbers", edit("scale: [1, 5]\n    min_rho", "scale: [1, 3, 5]\n    min_rho"), 19,
           "criteria.coherence.scale", "a scale is two numbers [lowest, highest], got [1, 3, 5]", "write e.g. `scale: [1, 5]`"),
    Broken("scale to infinity", edit("scale: [1, 5]\n    min_rho", "scale: [1, .inf]\n    min_rho"), 19,
           "criteria.coherence.scale[1]", "inf is not a finite number", "write a finite number"),
    Broken("split sums to 0.9", edit("test: 0.5", "test: 0.4"), 8, "split",
           "train + val + test = 0.9, not 1", "make the three fractions add up to 1"),
    Broken("split fraction nan", edit("train: 0.25", "train: .nan"), 9, "split.train",
           "nan is not a finite number", "write a finite number"),
    Broken("test fraction 0", edit("train: 0.25\n  val: 0.25\n  test: 0.5", "train: 0.5\n  val: 0.5\n  test: 0"), 11, "split.test",
           "the test split is empty", "give test a fraction above 0"),
    Broken("split seed not whole", edit("seed: 1", "seed: 1.5"), 12, "split.seed",
           "expected a whole number, got a number (1.5)", "write a whole number here"),
    Broken("missing dataset", without_lines(3, 7), 1, "spec",
           "missing key 'dataset'", "add `dataset:` with `path`, `inputs` and `scores`"),
    Broken("missing criteria", BASE.split("criteria:")[0], 1, "spec",
           "missing key 'criteria'", "add `criteria:` with at least one criterion"),
    Broken("missing instruction", edit("    instruction: Rate the fluency.\n", ""), 21, "criteria.fluency",
           "missing key 'instruction'", "add `instruction:` with the text the judge follows"),
    Broken("dataset file missing", edit("path: data.jsonl", "path: nowhere.jsonl"), 4, "dataset.path",
           "no such file: ", "give the data file's path relative to the spec file"),
    Broken("unknown metric", edit("method: spearman", "method: spearmen"), 14, "correlation.method",
           "unknown metric 'spearmen'", "did you mean 'spearman'?"),
    Broken("unknown level", edit("level: pooled", "level: document"), 15, "correlation.level",
           "'document' is not allowed", "use one of: pooled, group"),
    Broken("unknown inference", before_correlation("inference: merge\n"), 13, "inference",
           "'merge' is not allowed", "did you mean 'merged'?"),
    Broken("level group without groups", edit("level: pooled", "level: group", without_lines(5, 5)), 14,
           "correlation.level", "level: group needs to know the groups", "set `dataset.group`"),
    Broken("scores mapping misses a criterion", edit("scores: scores", "scores: {coherence: coh}"), 7, "dataset.scores",
           "no field given for criterion 'fluency'", "add `fluency: <field with its human score>`"),
    Broken("template with unknown placeholder", before_correlation("judge:\n  template: '{source} {summray}'\n"), 14,
           "judge.template", "unknown placeholder(s) {summray}", "a name from dataset.inputs"),
    Broken("template with positional placeholder", before_correlation("judge:\n  template: '{} {source}'\n"), 14,
           "judge.template", "the template cannot be filled in", "write {{ and }} for literal braces"),
    Broken("invalid YAML", edit("  val: 0.25", "  val: 0.25: 0.5"), 10, None,
           "invalid YAML: mapping values are not allowed here", "fix the YAML syntax at that line"),
    Broken("document is a list", "- coherence\n- fluency\n", 1, None,
           "a spec is a YAML mapping, not a list", "start from the example"),
    Broken("empty file", "", 1, None, "a spec is a YAML mapping, not empty", "start from the example"),
    Broken("interference bad value", before_correlation("interference: yes_please\n"), 13, "interference",
           'unexpected text ("yes_please")', "write `interference: false`, or a mapping with max_drop and confidence"),
    Broken("interference max_drop out of range", before_correlation("interference:\n  max_drop: 5\n"), 14,
           "interference.max_drop", "5 is outside [0, 2]", "use a value in [0, 2]"),
    Broken("model mapping without name", edit("model: openai/gpt-4o-mini", "model: {api_base: 'http://x'}"), 2, "model",
           "missing key 'name'", "add `name:` with a litellm model string"),
    Broken("model as a number", edit("model: openai/gpt-4o-mini", "model: 5"), 2, "model",
           "unexpected a number (5)", "write a litellm model string"),
    Broken("criterion name not an identifier", edit("  fluency:", "  9fluency:"), 21, "criteria.9fluency",
           "'9fluency' is not a valid criterion name", "use letters, digits"),
    Broken("criterion name YAML reads as a number", edit("  fluency:", "  7:"), 21, "criteria.7",
           "'7' is not a valid criterion name", "quote a name YAML reads as a number"),
    Broken("criterion written twice", edit("  fluency:", "  coherence:"), 21, "criteria.coherence",
           "'coherence' is written twice (first on line 17)", "remove or rename one of the two"),
    Broken("alias inside its own anchor", edit("name: toy", "name: &me [*me]"), 1, "name[0]",
           "an alias refers to itself", "remove the *alias from inside its own &anchor"),
    Broken("not UTF-8", edit("Rate the fluency.", "Rate the fl\udcffuency.").encode("utf-8", "surrogateescape"), 22, None,
           "not UTF-8 text (byte", "save the file as UTF-8"),
    Broken("over the size limit", BASE + "#" * spec_module.MAX_SPEC_BYTES, None, None,
           "over the 1,000,000 limit for a spec", "keep data in the dataset file"),
    # issue 12.2: an unquoted comma in a flow mapping ends the value; the rest became "unknown key '1 to 5.'"
    Broken("unquoted comma in a flow mapping",
           edit("    instruction: Rate the fluency.\n    min_rho: null\n    scale: [1, 5]\n",
                "    {instruction: Rate the fluency, from 1 to 5., min_rho: null,\n     scale: [1, 5]}\n")
           .replace("  fluency:\n    {", "  fluency: {"),
           21, "criteria.fluency.instruction",
           "the value was split at a comma: inside {...} YAML ends 'Rate the fluency' at the comma and reads "
           "'from 1 to 5.' as a key of its own", 'quote the value: instruction: "Rate the fluency, from 1 to 5."'),
    Broken("unquoted comma in an input mapping", edit("{source: source, summary: summary}",
                                                      "{source: source text, plain, summary: summary}"), 6,
           "dataset.inputs.source", "the value was split at a comma", 'quote the value: source: "source text, plain"'),
    # issue 12.4: a template that never places an input: every judgment rated a text the judge never saw
    Broken("template that never uses an input", before_correlation("judge:\n  template: '{source} {criteria} {format}'\n"),
           14, "judge.template", "the template never uses the input(s) {summary}, so the judge would not see them",
           "put {summary} (or {inputs} for all of them) in the template, remove them from dataset.inputs, or set "
           "`judge.unused_inputs: warn` to go on anyway"),
    Broken("unused_inputs not a choice", before_correlation("judge:\n  template: '{inputs}'\n  unused_inputs: ignore\n"),
           15, "judge.unused_inputs", "'ignore' is not allowed", "use one of: error, warn"),
    Broken("delimiter of two characters", edit("  scores: scores\n", "  scores: scores\n  delimiter: ';;'\n"), 8,
           "dataset.delimiter", '";;" is longer than 1 character', "write one character"),
    Broken("data glob matching nothing", edit("path: data.jsonl", "path: parts/*.jsonl"), 4, "dataset.path",
           "no file matches 'parts/*.jsonl'", "fix the pattern"),
    Broken("data path list with a missing file", edit("path: data.jsonl", "path: [data.jsonl, more.jsonl]"), 4,
           "dataset.path[1]", "no such file: ", "give the data file's path relative to the spec file"),
    Broken("data path a number", edit("path: data.jsonl", "path: 5"), 4, "dataset.path",
           "unexpected a number (5)", "a glob such as data/*.jsonl, or a list of paths"),
]


def test_unused_inputs_warn_loads_and_keeps_the_warning(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, before_correlation("judge:\n  template: '{source} {criteria}'\n  unused_inputs: warn\n")))
    assert spec.warnings == (f"{tmp_path / 'toy.judge.yaml'}:14: judge.template: the template never uses the input(s) "
                             "{summary}, so the judge would not see them. Fix: put {summary} (or {inputs} for all of them) "
                             "in the template, remove them from dataset.inputs, or set `judge.unused_inputs: warn` to go on anyway",)
    assert load_spec(write(tmp_path, before_correlation("judge:\n  template: '{inputs} {criteria}'\n"))).warnings == ()


@pytest.mark.parametrize(("role", "text", "what"), [
    ("loss", "Rate {criterion} on {scale}: {sample} {judge_score} {human} {verdict}", "loss.txt: unknown placeholder(s) {human}"),
    ("optimizer", "{instruction} {batch} {feedback} {criterion} {scale} {max_chars} {}", "optimizer.txt cannot be filled in"),
    ("adherence", "{old} {new} {feedback!z}", "adherence.txt cannot be filled in"),
])
def test_a_role_prompt_file_with_a_placeholder_the_role_does_not_fill_is_a_spec_error(
        tmp_path: Path, role: str, text: str, what: str) -> None:
    """issue 12.4: a stray {x} in a custom role prompt was a KeyError traceback in the middle of an optimization."""
    (tmp_path / f"{role}.txt").write_text(text)
    path = write(tmp_path, before_correlation(f"optimize:\n  prompts:\n    {role}: {role}.txt\n"))
    found = problems_of(path)
    assert len(found) == 1 and found[0].startswith(f"{path}:15: optimize.prompts.{role}: {what}"), found
    assert f"Fix: the {role} prompt can use {{" in found[0]


def test_a_role_prompt_file_using_the_roles_own_placeholders_loads(tmp_path: Path) -> None:
    (tmp_path / "loss.txt").write_text("About {criterion} ({scale}): {sample}\n{judge_score} vs {human_score}. {verdict} {{ok}}")
    spec = load_spec(write(tmp_path, before_correlation("optimize:\n  prompts:\n    loss: loss.txt\n")))
    assert spec.optimize.prompts["loss"] == (tmp_path / "loss.txt").resolve()


def test_a_comma_in_a_field_name_mapping_without_prose_is_a_missing_value(tmp_path: Path) -> None:
    """`{source: doc, text}` left a value out: no talk of quoting there."""
    found = problems_of(write(tmp_path, edit("{source: source, summary: summary}", "{source: source, summary: summary, text}")))
    assert found == [f"{tmp_path / 'toy.judge.yaml'}:6: dataset.inputs.text: expected text, got empty (null). Fix: write text here"]


def test_a_quoted_value_with_a_comma_is_fine(tmp_path: Path) -> None:
    text = edit("    instruction: Rate the fluency.\n    min_rho: null\n    scale: [1, 5]\n",
                "    {instruction: \"Rate the fluency, from 1 to 5.\", min_rho: null,\n     scale: [1, 5]}\n")
    text = text.replace("  fluency:\n    {", "  fluency: {")
    assert load_spec(write(tmp_path, text)).criteria["fluency"].instruction == "Rate the fluency, from 1 to 5."


@pytest.mark.parametrize("case", BROKEN, ids=[case.id for case in BROKEN])
def test_broken_spec_names_file_line_key_and_fix(tmp_path: Path, case: Broken) -> None:
    path = write(tmp_path, case.content)
    problems = problems_of(path)
    location = f"{path}:{case.line}:" if case.line is not None else f"{path}:"
    head = f"{location} {case.key}: " if case.key is not None else f"{location} "
    matching = [p for p in problems if p.startswith(head) and case.what in p]
    assert matching, f"no problem starts with {head!r} and says {case.what!r}:\n" + "\n".join(problems)
    assert len(problems) == case.problems, "\n".join(problems)
    assert f"Fix: {case.fix}" in matching[0] or case.fix in matching[0].split(". Fix: ", 1)[1]
    for text in problems:  # every sentence has the file and a fix, never a Python repr of an exception
        assert text.startswith(f"{path}:") and ". Fix: " in text and "Traceback" not in text


def test_the_broken_cases_start_from_a_spec_that_loads(tmp_path: Path) -> None:
    """Each case is BASE with one edit, so the problems a case reports come from its edit alone."""
    spec = load_spec(write(tmp_path, BASE))
    assert list(spec.criteria) == ["coherence", "fluency"] and spec.criteria["coherence"].min_rho == 0.5
    assert spec.criteria["coherence"].line == 17 and spec.line_of("correlation", "method") == 14


def test_every_problem_is_reported_at_once_in_line_order(tmp_path: Path) -> None:
    text = edit("min_rho: 0.5", "min_roh: 0.5", edit("level: pooled", "level: document"))
    text = edit("seed: 1", "seed: one", text)
    problems = problems_of(write(tmp_path, text))
    # the misspelled min_rho also leaves the criterion without one
    assert [p.split(": ", 2)[1] for p in problems] == ["split.seed", "correlation.level", "criteria.coherence",
                                                       "criteria.coherence.min_roh"]
    assert [spec_schema.line_number(p) for p in problems] == [12, 15, 17, 20]


def test_a_criterion_without_min_rho_is_an_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, edit("    min_rho: 0.5\n", "")))
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'toy.judge.yaml'}:17: criteria.coherence: missing key 'min_rho'. Fix: ")
    assert "could never fail" in problems[0] and "`min_rho: null`" in problems[0]


def test_min_rho_null_opts_out_of_the_gate(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, BASE))
    assert spec.criteria["fluency"].min_rho is None and spec.criteria["coherence"].min_rho == 0.5


def test_split_by_group_needs_groups(tmp_path: Path) -> None:
    text = edit("  group: group\n", "", edit("seed: 1", "seed: 1\n  by: group"))
    problems = problems_of(write(tmp_path, text))
    assert len(problems) == 1 and ": split.by: split by group needs to know the groups. Fix: set `dataset.group`" in problems[0]
    assert load_spec(write(tmp_path, edit("by: group", "by: record", text))).split.by == "record"


def test_misspelled_key_also_reports_the_missing_one(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, edit("criteria:", "critera:")))
    assert any("missing key 'criteria'" in p for p in problems)
    assert any(":16: critera: unknown key 'critera'. Fix: did you mean 'criteria'?" in p for p in problems)


def test_aliases_that_expand_enormously_are_refused_quickly(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)]  # 10**9 values
    problems = problems_of(write(tmp_path, "".join(levels) + BASE))
    assert len(problems) == 1 and "values once aliases are expanded" in problems[0]


def test_unreadable_path_is_a_spec_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "absent.judge.yaml")
    assert problems[0].startswith(f"{tmp_path / 'absent.judge.yaml'}: cannot read the file")
    assert "Fix: check the path" in problems[0]


def test_custom_metric_names_are_accepted_when_registered(tmp_path: Path) -> None:
    path = write(tmp_path, edit("method: spearman", "method: neg_mae"))
    assert "unknown metric 'neg_mae'" in problems_of(path)[0]
    assert load_spec(path, ("spearman", "neg_mae")).correlation.method == "neg_mae"


# -- valid specs --------------------------------------------------------------------------------

MINIMAL = """\
dataset:
  path: data.jsonl
  inputs: {text: body}
  scores: human
criteria:
  clarity:
    instruction: "  How clear is the text?  "
    scale: [0, 10]
    min_rho: null
"""


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, MINIMAL, name="my-judge.judge.yaml"))
    assert spec.name == "my-judge"
    assert spec.model is None and spec.models == {} and spec.model_for("judge") is None
    assert spec.split == Split(train=0.2, val=0.2, test=0.6, seed=0, by=None)
    assert spec.correlation == Correlation(method="spearman", level="pooled", gate="point", confidence=0.95, min_groups=8,
                                          max_skipped_groups=0.1)
    assert spec.judge == JudgeSettings(system=None, template=None, temperature=0.0, max_tokens=64, n=1, logprobs="auto",
                                       structured="auto", max_parse_failure_rate=0.1)
    assert spec.inference == "separate"
    assert spec.interference is None  # one criterion cannot interfere with another
    ds = spec.dataset
    assert (ds.path, ds.format, ds.id, ds.group, ds.inputs, ds.scores) == (
        (tmp_path / "data.jsonl").resolve(), "jsonl", "id", None, {"text": "body"}, "human")
    clarity = spec.criteria["clarity"]
    assert (clarity.name, clarity.instruction, clarity.scale, clarity.min_rho, clarity.line) == (
        "clarity", "How clear is the text?", (0.0, 10.0), None, 6)
    assert clarity.max_parse_failure_rate == 0.1


def test_partial_sections_keep_the_other_defaults(tmp_path: Path) -> None:
    text = MINIMAL.replace("criteria:", "split: {train: 0.5, val: 0.1, test: 0.4}\njudge: {max_parse_failure_rate: 0.3, n: 3}\n"
                                        "correlation: {gate: lower_bound}\ncriteria:")
    text += "  brevity:\n    instruction: Short?\n    scale: [1, 3]\n    min_rho: 0.2\n    max_parse_failure_rate: 0.05\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.split == Split(0.5, 0.1, 0.4, 0)
    assert spec.correlation == Correlation(gate="lower_bound")
    assert (spec.judge.n, spec.judge.max_tokens, spec.judge.max_parse_failure_rate) == (3, 64, 0.3)
    assert spec.criteria["clarity"].max_parse_failure_rate == 0.3  # inherited from judge:
    assert spec.criteria["brevity"].max_parse_failure_rate == 0.05  # its own wins
    assert spec.interference == Interference(max_drop=0.02, confidence=0.95)  # two criteria: on by default
    assert load_spec(write(tmp_path, text + "interference: false\n")).interference is None


def test_model_as_string(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, BASE))
    assert spec.model == Model("openai/gpt-4o-mini") and spec.model.kwargs == {}
    assert spec.model.describe() == "openai/gpt-4o-mini"


def test_model_as_mapping_gives_litellm_kwargs(tmp_path: Path) -> None:
    text = edit("model: openai/gpt-4o-mini", "model:\n  name: ollama/llama3\n  api_base: http://127.0.0.1:11434\n"
                "  temperature: 0.3\n  api_key: sk-live-do-not-print")
    spec = load_spec(write(tmp_path, text))
    assert spec.model.name == "ollama/llama3"
    assert spec.model.kwargs == {"api_base": "http://127.0.0.1:11434", "temperature": 0.3, "api_key": "sk-live-do-not-print"}
    assert spec.line_of("model", "api_key") == 6 and spec.criteria["fluency"].line == 25


@pytest.mark.parametrize("params", [
    {"api_key": "sk-live-do-not-print"},
    {"api_key": "sk-live-do-not-print", "temperature": 0.2},
    {"API_KEY": "sk-live-do-not-print", "seed": 3},
])
def test_describe_never_shows_the_api_key(params: dict[str, Any]) -> None:
    model = Model.parse({"name": "openai/gpt-4o", **params})
    described = model.describe()
    assert described.startswith("openai/gpt-4o")
    assert "sk-live-do-not-print" not in described and "api_key" not in described.lower()
    for name, value in params.items():
        if "key" not in name.lower():
            assert json.dumps({name: value})[1:-1] in described  # settings that change answers stay visible


def test_models_override_model_per_role(tmp_path: Path) -> None:
    text = edit("model: openai/gpt-4o-mini", "model: openai/gpt-4o-mini\nmodels:\n  loss: anthropic/claude-3-5-haiku\n"
                "  optimizer: {name: openai/gpt-4o, temperature: 1}")
    spec = load_spec(write(tmp_path, text))
    assert spec.model_for("judge") == Model("openai/gpt-4o-mini")
    assert spec.model_for("gradient") == Model("openai/gpt-4o-mini")
    assert spec.model_for("loss") == Model("anthropic/claude-3-5-haiku")
    assert spec.model_for("optimizer") == Model("openai/gpt-4o", (("temperature", 1),))
    assert spec.model_for("optimizer").kwargs == {"temperature": 1}


def test_models_without_model_leave_other_roles_open(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, edit("model: openai/gpt-4o-mini", "models: {judge: local/smollm2}")))
    assert spec.model is None
    assert spec.model_for("judge") == Model("local/smollm2") and spec.model_for("loss") is None


@pytest.mark.parametrize(("file_name", "expected"), [
    ("toy.judge.yaml", "toy"), ("summaries.v2.judge.yaml", "summaries.v2"), ("toy.judge.yml", "toy"), ("toy.yaml", "toy"),
])
def test_name_defaults_to_the_file_name(tmp_path: Path, file_name: str, expected: str) -> None:
    assert load_spec(write(tmp_path, MINIMAL, name=file_name)).name == expected
    assert load_spec(write(tmp_path, "name: given\n" + MINIMAL, name=file_name)).name == "given"


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    text = edit("model: openai/gpt-4o-mini", "model: &m {name: openai/gpt-4o-mini, temperature: 0}\n"
                "models:\n  loss:\n    <<: *m\n    name: openai/gpt-4o")
    spec = load_spec(write(tmp_path, text))
    assert spec.model_for("loss") == Model("openai/gpt-4o", (("temperature", 0),))
    assert spec.model_for("judge") == Model("openai/gpt-4o-mini", (("temperature", 0),))


def test_utf8_bom_and_crlf_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, ("\ufeff" + BASE).replace("\n", "\r\n").encode("utf-8"))
    spec = load_spec(path)
    assert list(spec.criteria) == ["coherence", "fluency"] and spec.criteria["fluency"].line == 21


def test_template_with_inputs_and_literal_braces_is_accepted(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, before_correlation('judge:\n  template: "Doc: {source} {summary}\\n{{json}} {criteria}"\n')))
    assert spec.judge.template == "Doc: {source} {summary}\n{{json}} {criteria}"


# -- the shipped JSON Schema is the editor contract ------------------------------------------------

FULL = """\
name: full
model: {name: openai/gpt-4o-mini, api_base: "http://127.0.0.1:8000/v1", temperature: 0}
models:
  judge: {name: openai/gpt-4o-mini}
  loss: {name: openai/gpt-4o}
  gradient: {name: openai/gpt-4o, temperature: 0.7}
  optimizer: {name: openai/gpt-4o}
  diagnostics: {name: openai/gpt-4o-mini}
dataset:
  path: data.jsonl
  format: jsonl
  delimiter: ";"
  skip_missing: false
  id: uid
  group: doc
  inputs: {source: src, summary: summ}
  scores: {coherence: coh, fluency: flu, relevance: rel}
  annotators: ratings
  aggregate: median
split: {train: 0.3, val: 0.2, test: 0.5, seed: 7, by: group}
correlation: {method: kendall, level: group, gate: lower_bound, confidence: 0.9, min_groups: 10,
              max_skipped_groups: 0.2, positive: 3, weights: linear, alpha_level: interval, epsilon: 0.2,
              alpha: 0.1, min_items: 40}
judge:
  system: You are strict.
  template: "{inputs}\\n{criteria}\\n{format}\\n{summary}"
  unused_inputs: warn
  temperature: 0.5
  max_tokens: 128
  n: 3
  logprobs: true
  structured: false
  max_parse_failure_rate: 0.2
inference: merged
interference: {max_drop: 0.05, confidence: 0.9, inconclusive: pass}
baseline: {max_drop: 0.03, inconclusive: fail}
cache: {by_endpoint: true}
cases:
  - {name: jumbled, inputs: {source: a, summary: b}, expect: {coherence: [1, 2]}, note: why}
  - {name: from-data, record: r1, expect: {fluency: ">= 2"}}
probes:
  - {kind: retest, name: again, criteria: [coherence], k: 3, min: 0.8, metric: kendall, gate: bound, sample: 4}
  - {kind: pad, criteria: fluency, input: summary, filler: Also this., max_rise: 0.2}
  - {kind: transform, transform: shuffle, expect: {coherence: lower}}
optimize:
  mode: SSC
  steps: 2
  batch_size: 4
  seed: 3
  temperature: 0.5
  max_instruction_chars: 800
  max_tokens: 1500
  study_runs: 2
  gate: {metric: kendall, rule: mean, tolerance: 0.01, cases: true}
  cases_in_prompt: true
  prompts: {loss: p/loss.txt, loss_combined: p/loss_c.txt, gradient: p/gradient.txt, gradient_combined: p/gradient_c.txt,
            optimizer: p/optimizer.txt, optimizer_combined: p/optimizer_c.txt, specificity: p/spec.txt, adherence: p/adh.txt}
  diagnostics: {enabled: true, min_specificity: 5, min_adherence: 6}
criteria:
  coherence:
    instruction: Is it coherent?
    scale: [1, 5]
    min_rho: 0.4
    max_parse_failure_rate: 0.1
  fluency:
    instruction: Is it fluent?
    scale: [0, 3]
    min_rho: null
  relevance:
    instruction: Is it relevant?
    scale: [1, 5]
    min_rho: {humans: -0.05}
"""
# the keys that are another spelling of a key FULL uses (a spec writes one of the two)
ALIASES = """\
agreement: {agreement: mae}
criteria:
  coherence: {instruction: Coherent, scale: [1, 5], max_error: 0.8}
  fluency: {instruction: Fluent, scale: [1, 5], min_agreement: {humans: 0}}
"""


def schema_keys(node: dict[str, Any], at: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every property path the schema names (criteria's per-criterion keys under '*')."""
    node = resolve(node)
    keys: set[tuple[str, ...]] = set()
    for name, sub in node.get("properties", {}).items():
        keys.add((*at, name))
        keys |= schema_keys(sub, (*at, name))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in resolve(extra):
        keys |= schema_keys(extra, (*at, "*"))
    for branch in node.get("oneOf", []):
        keys |= schema_keys(branch, at)
    return keys


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return schema()["$defs"][ref.rsplit("/", 1)[1]] if ref else node


def data_keys(value: Any, at: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if not isinstance(value, dict):
        return set()
    out: set[tuple[str, ...]] = set()
    for key, item in value.items():
        path = at + (("*",) if at == ("criteria",) else (key,))
        out.add(path)
        out |= data_keys(item, path)
    return out


def test_shipped_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    on_disk = Path(spec_schema.__file__).parent / "schemas" / spec_schema.SCHEMA_FILE
    assert json.loads(on_disk.read_text()) == schema()


def test_full_spec_uses_every_schema_key_and_validates_directly(tmp_path: Path) -> None:
    data = yaml.safe_load(FULL)
    covered = data_keys(data) | data_keys(yaml.safe_load(ALIASES))
    covered |= {("agreement", *k[1:]) for k in covered if k[0] == "correlation"}  # one section, two names
    covered |= {("correlation", *k[1:]) for k in covered if k[0] == "agreement"}
    missing = schema_keys(schema()) - covered
    assert ("criteria", "*", "min_rho") in schema_keys(schema()) and ("interference", "max_drop") in schema_keys(schema())
    assert not missing, f"the full spec no longer covers schema keys {sorted(missing)}"
    errors = list(jsonschema.Draft202012Validator(schema()).iter_errors(data))
    assert errors == []
    (tmp_path / "p").mkdir()
    for file in data["optimize"]["prompts"].values():
        (tmp_path / file).write_text("Improve the instruction.\n")
    spec = load_spec(write(tmp_path, FULL))
    assert spec.correlation == Correlation("kendall", "group", "lower_bound", 0.9, 10, 0.2, 3, "linear", "interval", 0.2,
                                           0.1, 40)
    assert spec.criteria["relevance"].humans_margin == -0.05 and spec.criteria["relevance"].min_rho is None
    assert (spec.dataset.annotators, spec.dataset.aggregate) == ("ratings", "median")
    assert spec.judge.logprobs is True and spec.judge.structured is False
    assert spec.inference == "merged" and spec.interference == Interference(0.05, 0.9, "pass")
    assert (spec.baseline.max_drop, spec.baseline.inconclusive) == (0.03, "fail")
    assert spec.dataset.id == "uid" and spec.dataset.scores == {"coherence": "coh", "fluency": "flu", "relevance": "rel"}
    assert spec.model_for("gradient") == Model("openai/gpt-4o", (("temperature", 0.7),))
    assert spec.cache.by_endpoint is True


@pytest.mark.parametrize(("old", "new", "key"), [
    ("criteria:\n", "critera: {}\ncriteria:\n", "critera"),
    ("min_rho: 0.4", "min_rho: 2", "criteria.coherence.min_rho"),
    ("level: group", "level: document", "correlation.level"),
    ("scale: [0, 3]", "scale: [0, 1, 3]", "criteria.fluency.scale"),
    ("n: 3", "n: 0", "judge.n"),
    ("steps: 2", "steps: 0", "optimize.steps"),
])
def test_schema_rejects_what_load_spec_rejects(tmp_path: Path, old: str, new: str, key: str) -> None:
    text = FULL.replace(old, new, 1)
    assert text != FULL
    errors = list(jsonschema.Draft202012Validator(schema()).iter_errors(yaml.safe_load(text)))
    assert errors
    assert any(f": {key}: " in p for p in problems_of(write(tmp_path, text)))


def test_scale_ends_written_as_integers_make_an_integer_scale(tmp_path: Path) -> None:
    text = MINIMAL + "  consistency:\n    instruction: Consistent?\n    scale: [0.0, 1.0]\n    min_rho: null\n" \
                     "  mixed:\n    instruction: Mixed?\n    scale: [1, 4.5]\n    min_rho: null\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.criteria["clarity"].integer is True  # [0, 10]
    assert spec.criteria["consistency"].integer is False
    assert spec.criteria["mixed"].integer is False


@pytest.mark.parametrize("key", ["structured", "logprobs"])
def test_structured_and_logprobs_take_auto_true_or_false(tmp_path: Path, key: str) -> None:
    for value, expected in (("auto", "auto"), ("true", True), ("false", False)):
        spec = load_spec(write(tmp_path, MINIMAL + f"judge: {{{key}: {value}}}\n"))
        assert getattr(spec.judge, key) == expected
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, MINIMAL + f"judge: {{{key}: always}}\n"))
    assert str(caught.value).endswith(f".judge.yaml:10: judge.{key}: 'always' is not allowed. Fix: use one of: auto, true, false")
