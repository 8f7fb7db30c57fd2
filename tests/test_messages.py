"""The wording of what a run prints (issue 12.8): failure messages, the plan line, instruction diffs, the
study table. Each test pins one sentence that read wrong, from the objects a run builds."""

from __future__ import annotations

from pathlib import Path

from pytest_judgeopt.judge import Judgment, assess
from pytest_judgeopt.optimize.modes import get_mode, plan_text, planned_calls
from pytest_judgeopt.optimize_text import instruction_diff, study_table
from pytest_judgeopt.spec import Model, Spec, load_spec
from pytest_judgeopt.text import criterion_failure, measured_line, render
from tests.conftest import spec_text


def toy_spec(folder: Path, **spec_args: object) -> Spec:
    (folder / "data.jsonl").write_text("")
    (folder / "toy.judge.yaml").write_text(spec_text(None, **spec_args))  # type: ignore[arg-type]
    return load_spec(folder / "toy.judge.yaml")


def judged(spec: Spec, scores: list[float | None]) -> list[Judgment]:
    out = []
    for i, score in enumerate(scores):
        failure, detail, reply = (None, "", f"coherence: {score:g}") if score is not None else (
            "no_score", "no number in the reply", "I cannot rate this summary.")
        out.append(Judgment(f"r{i}", f"g{i}", "coherence", float(1 + i % 5), score, failure, detail, reply))
    return out


def test_a_failed_judgment_says_reply_once(tmp_path: Path) -> None:
    """It read "no_score: no number in the reply reply \"I cannot...\"."""
    spec = toy_spec(tmp_path)
    result = assess(spec, spec.criteria["coherence"], judged(spec, [1, 2, None, 4, 5, 3, 2, 1]), split="test",
                    shape="separate", instruction="Rate it.")
    text = criterion_failure(result)
    assert '    r2: no_score: no number in the reply; the reply: "I cannot rate this summary."' in text.splitlines()
    assert "reply reply" not in text


def test_no_ci_is_named_where_there_is_no_interval(tmp_path: Path) -> None:
    """With too few pairs there is no interval: "(pooled, 95% CI, n=2 ...)" named one that was not there."""
    spec = toy_spec(tmp_path)
    few = assess(spec, spec.criteria["coherence"], judged(spec, [1, 2]), split="test", shape="separate",
                 instruction="Rate it.")
    assert few.agreement.low is None
    assert "CI" not in measured_line(few) and "(pooled, no interval" in measured_line(few)
    assert "2 pairs of 2 documents" in measured_line(few)
    many = assess(spec, spec.criteria["coherence"], judged(spec, [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 2, 3]), split="test",
                  shape="separate", instruction="Rate it.")
    assert many.agreement.low is not None and "(pooled, 95% CI, 12 pairs of 12 documents" in measured_line(many)


def test_a_long_instruction_changed_in_one_word_diffs_as_one_line() -> None:
    """Wrapped at 88 characters, one longer word re-flowed the paragraph and every later line showed as changed."""
    first = ("Rate the coherence of the summary from 1 to 5, reading it as a whole and in order. "
             "A coherent summary builds from sentence to sentence into a body of information about a topic. ")
    rest = " ".join(f"Sentence {i} says one more thing about what a good summary of the article does." for i in range(8))
    old, new = first + rest, first.replace("a body", "a well-structured, well-organized body") + rest
    changed = [line.text for line in instruction_diff("coherence", old, new) if line.kind in ("add", "del")]
    assert changed == ["-A coherent summary builds from sentence to sentence into a body of information about a topic.",
                       "+A coherent summary builds from sentence to sentence into a well-structured, well-organized body "
                       "of information about a topic."]


def test_the_plan_line_writes_a_term_that_is_a_number_once(tmp_path: Path) -> None:
    spec = toy_spec(tmp_path)
    mode = get_mode("SSC")
    text = plan_text(spec, mode, planned_calls(mode, 2, 3, 10), 4, 3, 10, Model("openai/gpt-4o-mini"))
    assert "optimizer 1," in text and "=1," not in text.replace("K=", "")  # it read "optimizer 1=1"
    assert "loss K*B=6" in text


def test_a_one_criterion_spec_is_never_called_merged(tmp_path: Path) -> None:
    """`inference: merged` with one criterion is the separate prompt; runs printed "(merged)" for it."""
    assert toy_spec(tmp_path, criteria=("coherence",), extra="inference: merged\n").inference == "separate"
    assert toy_spec(tmp_path, extra="inference: merged\n").inference == "merged"


def test_the_study_table_shows_calls_made_and_from_the_cache_apart() -> None:
    row = {"mode": "SSS", "criterion": "coherence", "val_shape": "merged", "val_before": 0.3, "val_after_mean": 0.5,
           "val_after_sd": None, "test_before": 0.1, "test_after_mean": 0.2, "test_after_sd": None,
           "improved_steps": 1.0, "specificity": None, "calls": 40.0, "calls_made": 0.0, "calls_cached": 40.0,
           "reused_runs": 2, "cost": None}
    lines = render([study_table({"spec": "toy", "runs": 2, "steps": 1, "val_size": 9, "test_size": 18,
                                 "test_shape": "separate", "method": "spearman", "level": "pooled",
                                 "val": {"metric": "spearman", "level": "group"}, "rows": [row]})])
    assert "(test pooled spearman; val spearman at level group (mean over documents; before and after on the documents " \
           "both have); val in each mode's prompt shape, test with separate prompts)" in lines[0]
    assert lines[1].split() == ["mode", "criterion", "val", "before", "val", "after", "(mean", "±", "sd)", "test",
                                "before", "(held", "out)", "test", "after", "(held", "out)", "improved", "steps",
                                "specificity", "calls/run", "made", "cached", "cost/run"]
    assert lines[3].split() == ["SSS", "coherence", "0.300", "0.500", "0.100", "0.200", "1.0", "-", "0", "40", "-"]
    assert lines[4].startswith("  choose a mode on val (the numbers the gate selected by); test is held out")
    assert lines[5] == ("  runs finished before were reused from their checkpoints (SSS: 2): their optimization steps "
                        "were neither asked again nor counted, only the test split's judgments")
