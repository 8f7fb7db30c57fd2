"""Optimization of the judge's instructions, end to end against the scripted server.

Every model call goes over litellm's real HTTP path to ``FakeLLMServer``; a ``World`` answers
each role from a script, and the assertions read the server's request log: what reached each
role, how many calls a step made, which split's samples a prompt held. The scripted judge
answers the human score only under a known instruction, so "optimization works" is a fact the
test can check rather than a hope.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.llm import LLM
from pytest_judgeopt.optimize.modes import get_mode, modes_table, planned_calls
from pytest_judgeopt.session import Session
from tests.conftest import CRITERIA, make_records
from tests.fake_llm import FakeLLMServer, Fault
from tests.world import (
    GOOD,
    INITIAL,
    MERGED_FORMAT,
    MODES,
    OPTIMIZER_ROLES,
    RECORDS,
    SEPARATE_FORMAT,
    SUMMARY,
    World,
    degraded,
    human,
    judged_instructions,
    knows,
    names_in,
    new_session,
    noise,
    role_of,
    strict_improves,
    write_project,
)

# ---------------------------------------------------------------------------------------------
# reading the request log


@dataclass
class Request:
    index: int
    role: str  # judge roles are refined by split: judge (train), gate (val), test
    text: str
    splits: set[str]
    summaries: list[str]


class Log:
    """The server's request log, each request labelled with its role and the splits of the samples it holds."""

    def __init__(self, server: FakeLLMServer, session: Session, spec: Path):
        splits = session.load(spec).splits
        self.split_of = {r.inputs["summary"]: name for name in ("train", "val", "test") for r in getattr(splits, name)}
        self.requests = []
        for i, body in enumerate(server.chat_requests()):
            text = body["messages"][-1]["content"]
            summaries = SUMMARY.findall(text)
            in_splits = {self.split_of[s] for s in summaries}
            role = role_of(body)
            if role == "judge":
                assert len(in_splits) == 1
                role = {"train": "judge", "val": "gate", "test": "test"}[next(iter(in_splits))]
            self.requests.append(Request(i, role, text, in_splits, summaries))

    def steps(self) -> tuple[list[Request], list[list[Request]], list[Request]]:
        """The initial gate, each step's requests, the test evaluation: a step starts at a run of train
        judgments, and steps are sequential, so arrival order separates them."""
        first_test = next(i for i, r in enumerate(self.requests) if r.role == "test")
        loop, test = self.requests[:first_test], self.requests[first_test:]
        starts = [i for i, r in enumerate(loop) if r.role == "judge" and (i == 0 or loop[i - 1].role != "judge")]
        steps = [loop[a:b] for a, b in zip(starts, [*starts[1:], len(loop)], strict=True)]
        return loop[:starts[0]] if starts else loop, steps, test

    @staticmethod
    def count(requests: list[Request]) -> dict[str, int]:
        """Calls by the roles of planned_calls: S and C variants of a role count as that role."""
        out: Counter[str] = Counter()
        for r in requests:
            out[{"loss_c": "loss", "gradient_c": "gradient", "optimizer_c": "optimizer",
                 "specificity": "diagnostics", "adherence": "diagnostics"}.get(r.role, r.role)] += 1
        return dict(out)


# ---------------------------------------------------------------------------------------------
# one two-step run per mode, shared by the tests of what each role sees and how many calls a step makes


@dataclass
class ModeRun:
    mode: str
    diagnostics: bool
    result: Any
    log: Log
    session: Session
    spec: Path


@pytest.fixture(scope="module")
def module_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def mode_run(module_server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], ModeRun]:
    """Two steps of a mode with batch 2 on a world where every rewrite is proposed and the first is an
    improvement, so both steps make every planned call and step 2's judge prompts carry new instructions."""
    runs: dict[tuple[str, bool], ModeRun] = {}

    def run(mode: str, diagnostics: bool) -> ModeRun:
        if (mode, diagnostics) not in runs:
            module_server.reset()
            module_server.responder = World(RECORDS, score=strict_improves)
            folder = tmp_path_factory.mktemp(f"{mode}-{diagnostics}")
            spec = write_project(folder, module_server, optimize=f"steps: 2\nbatch_size: 2\n"
                                                                 f"diagnostics: {{enabled: {str(diagnostics).lower()}}}")
            session = new_session(folder / ".judgeopt")
            try:
                result = session.optimize(spec, mode)
                log = Log(module_server, session, spec)
            finally:
                session.close()
            runs[mode, diagnostics] = ModeRun(mode, diagnostics, result, log, session, spec)
        return runs[mode, diagnostics]

    return run


@pytest.mark.parametrize("diagnostics", [False, True], ids=["plain", "diagnostics"])
@pytest.mark.parametrize("mode", MODES)
def test_calls_per_step_match_the_printed_formula(mode_run: Callable[[str, bool], ModeRun], mode: str,
                                                  diagnostics: bool) -> None:
    run = mode_run(mode, diagnostics)
    k, b, v = len(CRITERIA), 2, 9
    planned = planned_calls(get_mode(mode), k, b, v, diagnostics)
    assert run.result.planned == planned
    initial_gate, steps, test = run.log.steps()
    assert len(steps) == 2 == run.result.steps_run
    assert Log.count(initial_gate) == {"gate": k * v if mode == "ST" else v}
    for number, (requests, record) in enumerate(zip(steps, run.result.history, strict=True), 1):
        measured = Log.count(requests)
        assert measured == planned, f"step {number} of {mode}: the server saw {measured}, the formula says {planned}"
        assert record.calls == planned  # the code's own counters agree with the server
    shape = 2 * k * 18  # the test split before and after, nothing else, in the items' shape (separate prompts)
    assert Log.count(test) == {"test": shape}


def test_the_readme_shows_the_calls_per_step_rendered_from_the_mode_table() -> None:
    """The README's table is the mode table's own rendering, so its formulas are the ones measured above."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert modes_table() in readme, "the README's mode table is out of date: paste optimize.modes.modes_table() into it"


@pytest.mark.parametrize("mode", MODES)
def test_each_role_sees_only_what_its_stage_may_contain(mode_run: Callable[[str, bool], ModeRun], mode: str) -> None:
    run = mode_run(mode, True)
    m = get_mode(mode)
    by_summary = {r["summary"]: r for r in RECORDS}
    _, steps, _ = run.log.steps()
    for number, requests in enumerate(steps, 1):
        instructions = dict(INITIAL) if number == 1 else {c: run.result.history[0].proposals[c] or INITIAL[c]
                                                          for c in CRITERIA}
        if number == 2:  # step 1 was accepted for every criterion in every mode
            assert sorted(run.result.history[0].accepted) == sorted(CRITERIA)
        roles = Counter(r.role for r in requests)
        for r in requests:
            if r.role == "loss":
                (c,) = names_in(r.text)  # its own criterion and no other's name, instruction, score or critique
                assert m.loss.per_criterion
                assert not any(i in r.text for i in instructions.values())  # the loss model never sees the prompt
                (summary,) = r.summaries
                assert f"Human score for {c}: {human(by_summary[summary], c):g}" in r.text
            elif r.role == "loss_c":
                assert not m.loss.per_criterion and names_in(r.text) == set(CRITERIA)
                assert not any(i in r.text for i in instructions.values())
            elif r.role == "gradient":
                (c,) = names_in(r.text)
                assert m.gradient.per_criterion
                assert instructions[c] in r.text and f"The judge misread the {c} of this text." in r.text
            elif r.role == "gradient_c":
                assert not m.gradient.per_criterion and names_in(r.text) == set(CRITERIA)
                assert all(f"- {c}: {instructions[c]}" in r.text for c in CRITERIA)
                critique = r.text.split("<critique>\n")[1].split("\n</critique>")[0]
                if not m.loss.per_criterion:  # one critique about all criteria, not labelled with the first one's name
                    assert critique.startswith("(about all criteria)") and not names_in(critique)
                else:
                    assert critique.splitlines()[0] == f"[{CRITERIA[0]}] The judge misread the {CRITERIA[0]} of this text."
                    assert f"[{CRITERIA[1]}] The judge misread the {CRITERIA[1]} of this text." in critique
            elif r.role == "optimizer":
                (c,) = names_in(r.text)
                assert m.optimizer.per_criterion
                assert instructions[c] in r.text and f"Change the {c} instruction: look closer at Summary" in r.text
            elif r.role == "optimizer_c":
                assert not m.optimizer.per_criterion and names_in(r.text) == set(CRITERIA)
                assert all(f"- {c}: {instructions[c]}" in r.text for c in CRITERIA)
                if m.gradient.per_criterion:
                    assert all(f"Change the {c} instruction" in r.text for c in CRITERIA)
            elif r.role == "specificity":
                assert len(names_in(r.text.split("<feedback>")[0])) == 1
        train_judged = [r for r in requests if r.role == "judge"]
        if m.judge.shape == "separate":  # once per sample per criterion, each prompt one criterion
            assert Counter(s for r in train_judged for s in r.summaries) == dict.fromkeys(
                {s for r in train_judged for s in r.summaries}, len(CRITERIA))
            assert all(len(judged_instructions(r.text)) == 1 for r in train_judged)
        else:  # once per sample, all criteria in one prompt
            assert len({s for r in train_judged for s in r.summaries}) == len(train_judged) == 2
            assert all(judged_instructions(r.text) == instructions for r in train_judged)
        assert roles["optimizer" if m.optimizer.per_criterion else "optimizer_c"] == (len(CRITERIA) if m.optimizer.per_criterion else 1)
    # every judge prompt keeps its output format, before and after the instructions changed
    judge_requests = [r for r in run.log.requests if r.role in ("judge", "gate", "test")]
    updated = [r for r in judge_requests if "Be strict." in r.text]
    assert updated and len(updated) < len(judge_requests)
    for r in judge_requests:  # the test split in the items' shape (separate, the default), the loop in the mode's
        assert (SEPARATE_FORMAT if m.judge.shape == "separate" or r.role == "test" else MERGED_FORMAT) in r.text, r.text


@pytest.mark.parametrize("mode", MODES)
def test_val_and_test_samples_stay_out_of_the_optimizer_roles(mode_run: Callable[[str, bool], ModeRun], mode: str) -> None:
    run = mode_run(mode, True)
    requests = run.log.requests
    for r in requests:
        if r.role not in ("gate", "test"):
            assert r.splits <= {"train"}, f"a {r.role} prompt holds {r.splits} samples"
    assert {r.role for r in requests if "val" in r.splits} == {"gate"}
    last_loop = max(r.index for r in requests if r.role != "test")
    first_test = min(r.index for r in requests if r.role == "test")
    assert last_loop < first_test  # the test split is judged only after the loop
    assert run.session.llm.usage["gate"].requests == sum(r.role == "gate" for r in requests)


# ---------------------------------------------------------------------------------------------
# a world with a known answer: optimization finds it, the gate keeps it, the lock file carries it


LOCK = "toy.judge.lock.yaml"


def read_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def judge_texts(server: FakeLLMServer) -> list[str]:
    return [b["messages"][-1]["content"] for b in server.chat_requests() if role_of(b) == "judge"]


def test_optimization_finds_the_known_instruction_and_ordinary_runs_then_use_it(pytester: pytest.Pytester,
                                                                                 fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals=dict(GOOD))
    spec = write_project(pytester.path, fake_llm, optimize="steps: 1\nbatch_size: 2", min_rho=0.9)
    pytester.runpytest("--judge-cache=off").assert_outcomes(failed=2, passed=1)  # noise (merged: no worse than separate)
    spec_bytes = spec.read_bytes()

    result = pytester.runpytest("--judge-optimize", "--judge-retries=1")
    result.assert_outcomes(passed=4)  # the optimize item, then both criteria and the merged check on the new lock
    result.stdout.fnmatch_lines(["*judge optimization*", "*toy: mode SSS, 1 steps*wrote*toy.judge.lock.yaml*",
                                 "*+Count the facts*", "*+Check the grammar*"])
    assert spec.read_bytes() == spec_bytes  # like a snapshot update: the spec is never edited
    lock = read_yaml(pytester.path / LOCK)
    for c in CRITERIA:
        entry = lock["criteria"][c]
        assert entry["instruction"] == GOOD[c] and entry["initial_instruction"] == INITIAL[c]
        assert entry["accepted_steps"] == [1]
        assert entry["val"]["after"] == 1.0 > entry["val"]["before"]
        assert entry["test"]["after"]["value"] == 1.0 > entry["test"]["before"]["value"]

    fake_llm.reset()
    result = pytester.runpytest("--judge-cache=off")
    result.assert_outcomes(passed=3)
    texts = judge_texts(fake_llm)
    assert texts and all(judged_instructions(t).items() <= GOOD.items() for t in texts)
    assert "judge notes" not in result.stdout.str()


def run_gate(tmp_path: Path, server: FakeLLMServer, mode: str, optimize: str = "") -> Any:
    """One step on a world where coherence's rewrite is better and fluency's is worse than its start."""
    good = {"coherence": GOOD["coherence"], "fluency": INITIAL["fluency"]}
    server.responder = World(RECORDS, score=knows(good, bad={"fluency": "Rate loosely."}),
                             proposals={"coherence": GOOD["coherence"], "fluency": "Rate loosely."})
    spec = write_project(tmp_path / mode, server, optimize=f"steps: 1\nbatch_size: 2\n{optimize}")
    session = new_session(tmp_path / mode / ".judgeopt")
    try:
        return session.optimize(spec, mode, write=True)
    finally:
        session.close()


def test_the_gate_rolls_back_a_worse_rewrite_and_the_lock_keeps_the_old_instruction(
        tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = World(RECORDS, score=knows(INITIAL, bad={c: "Rate loosely." for c in CRITERIA}),
                               proposals=dict.fromkeys(CRITERIA, "Rate loosely."))
    spec = write_project(tmp_path, fake_llm, optimize="steps: 2\nbatch_size: 2")
    session = new_session(tmp_path / ".judgeopt")
    try:
        result = session.optimize(spec, "SSS", write=True)
    finally:
        session.close()
    for step in result.history:
        assert step.proposals == dict.fromkeys(CRITERIA, "Rate loosely.")
        assert step.accepted == []
        for c in CRITERIA:  # each rewrite is rejected for its own criterion's drop (per_criterion, SSS's default)
            assert step.rejected_reasons[c].startswith(f"rejected by the val gate: {c} val spearman would fall from 1.000")
    lock = read_yaml(tmp_path / LOCK)
    assert {c: lock["criteria"][c]["instruction"] for c in CRITERIA} == INITIAL
    assert all(lock["criteria"][c]["accepted_steps"] == [] for c in CRITERIA)


def test_per_criterion_gate_keeps_one_gain_and_rejects_another_loss_in_sss(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    result = run_gate(tmp_path, fake_llm, "SSS")
    (step,) = result.history
    assert step.val_after["coherence"] > step.val_before["coherence"]
    assert step.val_after["fluency"] < step.val_before["fluency"]
    assert step.accepted == ["coherence"]
    assert step.rejected_reasons == {"fluency": "rejected by the val gate: fluency val spearman would fall from 1.000 "
                                                "to 0.725 (tolerance 0)"}
    assert step.val_kept == pytest.approx({"coherence": 1.0, "fluency": 1.0})  # the kept combination, judged again
    assert step.judged_again
    assert result.instructions == {"coherence": GOOD["coherence"], "fluency": INITIAL["fluency"]}
    assert read_yaml(tmp_path / "SSS" / LOCK)["criteria"]["fluency"]["instruction"] == INITIAL["fluency"]


@pytest.mark.parametrize("mode", ["SSC", "CCC"])
def test_no_regression_gate_rejects_a_joint_rewrite_that_hurts_one_criterion(tmp_path: Path, fake_llm: FakeLLMServer,
                                                                             mode: str) -> None:
    """The spec says nothing of the gate rule; the mode chosen at run time makes the rewrite joint, so
    the joint rule applies (not the per-criterion default of the spec's SSS)."""
    result = run_gate(tmp_path, fake_llm, mode)
    (step,) = result.history
    assert step.val_after["coherence"] > step.val_before["coherence"]
    assert step.val_after["fluency"] < step.val_before["fluency"]
    assert step.accepted == []
    assert step.rejected_reasons == dict.fromkeys(CRITERIA, "rejected by the val gate: fluency val spearman would fall "
                                                            "from 1.000 to 0.725 (tolerance 0)")
    assert result.instructions == INITIAL
    assert read_yaml(tmp_path / mode / LOCK)["gate"]["rule"] == "no_regression"


@pytest.mark.parametrize("mode", ["SSC", "CCC"])
def test_mean_gate_accepts_a_joint_rewrite_when_the_mean_improves(tmp_path: Path, fake_llm: FakeLLMServer,
                                                                  mode: str) -> None:
    result = run_gate(tmp_path, fake_llm, mode, "gate: {rule: mean}")
    (step,) = result.history
    before, after = step.val_before, step.val_after
    assert after["fluency"] < before["fluency"] and sum(after.values()) > sum(before.values())
    assert sorted(step.accepted) == sorted(CRITERIA)
    assert result.instructions == {"coherence": GOOD["coherence"], "fluency": "Rate loosely."}


# ---------------------------------------------------------------------------------------------
# faults: an optimizer that answers without an instruction, a role whose calls keep failing


@pytest.mark.parametrize("mode", ["SSS", "SSC"])
def test_an_optimizer_reply_without_an_instruction_is_a_rejected_update(tmp_path: Path, fake_llm: FakeLLMServer,
                                                                        mode: str) -> None:
    fake_llm.responder = World(RECORDS, score=strict_improves, proposals=dict.fromkeys(CRITERIA))
    spec = write_project(tmp_path, fake_llm, optimize="steps: 2\nbatch_size: 2")
    session = new_session(tmp_path / ".judgeopt")
    try:
        result = session.optimize(spec, mode, write=True)
    finally:
        session.close()
    assert result.steps_run == 2
    for step in result.history:
        assert step.accepted == [] and step.proposals == dict.fromkeys(CRITERIA)
        assert step.rejected_reasons == dict.fromkeys(CRITERIA, "the optimizer's reply held no instruction")
        assert "gate" not in step.calls  # nothing to gate
    assert result.instructions == INITIAL
    assert read_yaml(tmp_path / LOCK)["criteria"]["coherence"]["instruction"] == INITIAL["coherence"]


@pytest.mark.parametrize("role", ["loss", "gradient"])
def test_a_role_call_failing_on_every_retry_is_counted_and_the_run_completes(tmp_path: Path, fake_llm: FakeLLMServer,
                                                                            role: str) -> None:
    """Every coherence critique (or gradient) fails with HTTP 500, first try and the one retry; fluency goes on."""
    fake_llm.responder = World(RECORDS, score=strict_improves,
                               fail=lambda asked, text: asked == role and 'criterion "coherence"' in text)
    spec = write_project(tmp_path, fake_llm, optimize="steps: 2\nbatch_size: 2")
    session = new_session(tmp_path / ".judgeopt")
    try:
        result = session.optimize(spec, "SSS", write=True)
        log = Log(fake_llm, session, spec)
    finally:
        session.close()
    assert result.steps_run == 2
    failed = [r for r in log.requests if r.role == role and names_in(r.text) == {"coherence"}]
    assert len(failed) == 2 * 2 * 2  # 2 steps x batch 2 x (first try + 1 retry)
    for step in result.history:
        assert step.failures == {f"{role}:server": 2}
        assert step.rejected_reasons["coherence"] == "no feedback reached the optimizer"
        assert step.proposals["coherence"] is None and step.proposals["fluency"]
    assert result.usage[role]["errors"] == {"server": 4}
    assert result.history[0].accepted == ["fluency"]
    assert not any(r.role == "optimizer" and "coherence" in names_in(r.text) for r in log.requests)
    # step 2's second "Be strict." ties on val (already the human score): a tie keeps the instruction in force
    assert read_yaml(tmp_path / LOCK)["criteria"]["fluency"]["accepted_steps"] == [1]


def feedback_labels(text: str) -> tuple[dict[int, str], dict[int, str]]:
    """An optimizer prompt's batch (text number -> summary) and its feedback (text number -> the summary it is about)."""
    batch, feedback = text.split("Feedback on the instruction")
    texts = {int(i): summary for i, summary in re.findall(r"^\[text (\d+)\]\n.*?<summary>\n(.*?)\n</summary>", batch, re.M | re.S)}
    notes = {int(i): summary for i, summary in re.findall(r"^\[text (\d+)\] Change the \w+ instruction: look closer at (.*)$",
                                                        feedback, re.M)}
    return texts, notes


def test_feedback_keeps_the_number_of_its_text_when_another_texts_feedback_failed(tmp_path: Path,
                                                                                   fake_llm: FakeLLMServer) -> None:
    """The coherence critique of every first and second summary of a document fails: the optimizer must
    still be told which text each remaining note is about, not have the notes renumbered from 1."""
    fake_llm.responder = World(RECORDS, score=strict_improves, fail=lambda role, text: role == "loss" and (
        'criterion "coherence"' in text and re.search(r"<summary>\nSummary [01] of", text) is not None))
    spec = write_project(tmp_path, fake_llm, optimize="steps: 2\nbatch_size: 3")
    session = new_session(tmp_path / ".judgeopt")
    try:
        session.optimize(spec, "SSS")
        log = Log(fake_llm, session, spec)
    finally:
        session.close()
    prompts = [r.text for r in log.requests if r.role == "optimizer" and names_in(r.text) == {"coherence"}]
    shifted = 0
    for text in prompts:
        texts, notes = feedback_labels(text)
        assert notes and all(texts[i] == summary for i, summary in notes.items()), (texts, notes)
        shifted += sorted(notes) != list(range(1, len(notes) + 1))
    assert shifted  # some batch had a failed text before a good one, so numbering from 1 would have been wrong


# ---------------------------------------------------------------------------------------------
# the budget


def test_a_call_budget_stops_cleanly_keeps_the_best_so_far_and_is_never_exceeded(pytester: pytest.Pytester,
                                                                                  fake_llm: FakeLLMServer) -> None:
    """SSS, K=2, B=2, V=9: the initial gate takes 9 calls and a step 21, so a budget of 35 ends in step 2,
    in its critiques, where four calls would otherwise go out at once and overshoot the cap."""
    chain = {GOOD["coherence"]: "Count the facts twice", INITIAL["coherence"]: GOOD["coherence"]}
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals={
        "coherence": lambda current: chain.get(current, current + "!"), "fluency": GOOD["fluency"]})
    write_project(pytester.path, fake_llm, optimize="steps: 3\nbatch_size: 2", min_rho=0.9)
    result = pytester.runpytest("--judge-optimize", "--judge-budget=calls=35", "--judge-retries=1")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*toy: mode SSS, 1 steps*stopped by the budget, keeping the best instructions so far*"])
    lock = read_yaml(pytester.path / LOCK)
    assert lock["stopped"] == "budget" and lock["steps_run"] == 1
    assert {c: lock["criteria"][c]["instruction"] for c in CRITERIA} == GOOD
    requests = [role_of(b) for b in fake_llm.chat_requests()]
    log = Log(fake_llm, Session(LLM()), pytester.path / "toy.judge.yaml")  # loads the splits; makes no call
    loop = [r for r in log.requests if r.role != "test"]
    assert all(r.index < min(t.index for t in log.requests if t.role == "test") for r in loop)
    assert len(loop) <= 35 < len(requests)
    assert len(loop) >= 9 + 21  # the first step did run whole


def test_retries_count_against_the_call_budget(fake_llm: FakeLLMServer) -> None:
    """At the client: a call whose first attempts fail (500) and are retried spends a call of the budget per
    attempt; the retries bypassed it, so a budget of 2 let a third request through."""
    from pytest_judgeopt.call_errors import CallError
    from pytest_judgeopt.optimize.budget import Allowance, Budget
    from pytest_judgeopt.spec import Model
    from tests.conftest import server_model

    fake_llm.faults = [Fault("status", status=500), Fault("status", status=500)]
    llm = LLM(retries=3, backoff=0.01)
    try:
        llm.budget = Allowance(Budget(calls=2), llm.total())
        with pytest.raises(CallError) as caught:
            llm.run(llm.complete(Model.parse(server_model(fake_llm)), [{"role": "user", "content": "q"}]))
    finally:
        llm.close()
    assert caught.value.kind == "budget"
    assert len(fake_llm.chat_requests()) == 2 and llm.usage["judge"].retries == 1


def test_a_dollar_budget_for_an_unpriced_model_says_so_and_counts_calls(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    """litellm has no price for openai/fake-judge, so usd=1 alone never stopped anything: it says so before the
    run and caps the calls at the plan's most, which a server failing every attempt (each call retried) reaches."""
    fake_llm.responder = lambda body: Fault("status", status=500)
    spec = write_project(tmp_path, fake_llm, optimize="steps: 2\nbatch_size: 2")
    said: list[str] = []
    session = Session(LLM(retries=5, backoff=0.001, timeout=10.0), state_dir=tmp_path / ".judgeopt", progress=said.append)
    try:
        from pytest_judgeopt.optimize.budget import Budget

        result = session.optimize(spec, "SSS", budget=Budget(usd=1.0))
    finally:
        session.close()
    plan = next(i for i, line in enumerate(said) if line.startswith("optimizing toy"))
    note = said[plan + 1]
    most = int(re.search(r"at most (\d+) calls", said[plan])[1])  # type: ignore[index]
    assert note == (f"--judge-budget usd=1: litellm has no price for openai/fake-judge, so its calls cost no counted "
                    f"dollars; the budget counts calls instead: at most {most} (the plan's most; set calls=N to change it)")
    assert note in session.notes
    assert result.stopped == "budget"
    log = Log(fake_llm, Session(LLM()), spec)  # loads the splits; makes no call
    loop = [r for r in log.requests if r.role != "test"]
    assert len(loop) == most  # every attempt counted: the loop's requests stop at the cap


# ---------------------------------------------------------------------------------------------
# resuming after a kill, and not repeating a finished run


RESUME_SCRIPT = """\
import sys

from pytest_judgeopt.llm import LLM
from pytest_judgeopt.session import Session

spec, state, base_url = sys.argv[1:4]
session = Session(LLM(retries=1, backoff=0.01, timeout=30.0), state_dir=state)
assert session.load(spec).spec.model.kwargs["api_base"] == base_url
session.optimize(spec, "SSS", steps=3, write=True)
print("finished")
"""


def comparable(lock: dict[str, Any]) -> dict[str, Any]:
    """A lock file's content without the time it was made (and the checksum over that time)."""
    return {k: v for k, v in lock.items() if k not in ("made", "checksum")}


@pytest.mark.posix
def test_a_killed_run_resumes_from_its_last_step_and_ends_like_an_uninterrupted_one(
        tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    world = World(RECORDS, score=strict_improves)
    release, holding = threading.Event(), [True]
    checkpoints = tmp_path / "killed" / ".judgeopt" / "runs"

    def completed_steps() -> int:
        for path in checkpoints.glob("*.json"):
            try:
                return len(json.loads(path.read_text())["history"])
            except (ValueError, KeyError):
                return 0
        return 0

    def responder(body: dict[str, Any]) -> str | Fault:
        if holding[0] and completed_steps() >= 1:  # freeze the run after its first checkpointed step
            release.wait(30)
        return world(body)

    fake_llm.responder = responder
    spec = write_project(tmp_path / "killed", fake_llm, optimize="batch_size: 2")
    script = tmp_path / "optimize_script.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    output = tmp_path / "script.log"
    with output.open("wb") as sink:
        process = subprocess.Popen([sys.executable, str(script), str(spec), str(tmp_path / "killed" / ".judgeopt"),
                                    fake_llm.base_url], env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while completed_steps() < 1:
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the run never checkpointed a step"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        holding[0] = False
        release.set()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / LOCK).exists()
    interrupted_at = completed_steps()
    assert 1 <= interrupted_at < 3

    fake_llm.reset()
    session = new_session(tmp_path / "killed" / ".judgeopt")
    try:
        resumed = session.optimize(spec, "SSS", steps=3, write=True)
    finally:
        session.close()
    assert resumed.resumed_from == interrupted_at >= 1 and not resumed.reused
    assert resumed.steps_run == 3
    redone = Counter(role_of(b) for b in fake_llm.chat_requests())
    assert redone["optimizer"] == 2 * (3 - interrupted_at)  # only the steps after the checkpoint

    whole_spec = write_project(tmp_path / "whole", fake_llm, optimize="batch_size: 2")
    session = new_session(tmp_path / "whole" / ".judgeopt")
    try:
        whole = session.optimize(whole_spec, "SSS", steps=3, write=True)
    finally:
        session.close()
    assert whole.resumed_from == 0
    assert [h.batch for h in resumed.history] == [h.batch for h in whole.history]
    assert comparable(read_yaml(tmp_path / "killed" / LOCK)) == comparable(read_yaml(tmp_path / "whole" / LOCK))

    fake_llm.reset()
    session = new_session(tmp_path / "killed" / ".judgeopt")
    try:
        again = session.optimize(spec, "SSS", steps=3, write=True)
    finally:
        session.close()
    assert again.reused and again.steps_run == 3
    assert not {role_of(b) for b in fake_llm.chat_requests()} & {*OPTIMIZER_ROLES, "specificity", "adherence"}
    assert again.instructions == resumed.instructions
    from pytest_judgeopt.report import optimization_lines

    assert "its result is reused, not repeated" in next(optimization_lines(again))


def test_a_finished_run_is_not_taken_for_a_run_with_more_steps(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = World(RECORDS, score=strict_improves)
    spec = write_project(tmp_path, fake_llm, optimize="batch_size: 2")
    session = new_session(tmp_path / ".judgeopt")
    try:
        one = session.optimize(spec, "SSS", steps=1)
        two = session.optimize(spec, "SSS", steps=2)
        again = session.optimize(spec, "SSS", steps=2)
    finally:
        session.close()
    assert (one.steps_run, two.steps_run, again.steps_run) == (1, 2, 2)
    assert not two.reused and again.reused


# ---------------------------------------------------------------------------------------------
# the command line: modes, lock files, the fixture, the study, the diagnostics floors


def test_a_mode_that_separates_after_combining_is_refused_with_the_reason(pytester: pytest.Pytester,
                                                                          fake_llm: FakeLLMServer) -> None:
    spec = write_project(pytester.path, fake_llm)
    result = pytester.runpytest("--judge-optimize", "--judge-mode=SCS")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--judge-mode SCS: 'SCS' combines a stage and then separates a later one*"
                                 "once a stage is C, every later stage must be C*"])
    with pytest.raises(ValueError, match="'CCS' combines a stage and then separates a later one"):
        Session(LLM()).optimize(spec, "CCS")

    spec = write_project(pytester.path, fake_llm, optimize="mode: CSS")
    line = spec.read_text().splitlines().index("  mode: CSS") + 1
    result = pytester.runpytest("--judge-optimize")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*toy.judge.yaml:{line}: optimize.mode: 'CSS' combines a stage and then separates*"])
    assert fake_llm.chat_requests() == []


def test_optimize_refuses_splits_that_share_sources_unless_split_by_record_says_so(pytester: pytest.Pytester,
                                                                                   fake_llm: FakeLLMServer) -> None:
    """Without `dataset.group`, RECORDS' three summaries of an article fall into train, val and test alike: the
    val gate would not be held out from what the optimizer reads. The run stops before any call."""
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals=dict(GOOD))
    spec = write_project(pytester.path, fake_llm, optimize="steps: 1\nbatch_size: 2")
    text = spec.read_text().replace("  group: group\n", "")
    spec.write_text(text)
    warned = ("-W", "default::pytest_judgeopt.spec.SpecWarning")
    result = pytester.runpytest("--judge-optimize", "-k", "optimize", *warned)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*toy.judge.yaml:*: dataset.group: --judge-optimize does not run on splits that share "
                                 "sources: no group is set, so each record is its own group, but input 'source' "
                                 "repeats: *Fix: set `dataset.group` *, or `split.by: record` to split records on purpose*"])
    assert fake_llm.chat_requests() == []
    spec.write_text(text.replace("seed: 1}", "seed: 1, by: record}"))
    result = pytester.runpytest("--judge-optimize", "-k", "optimize", *warned)
    result.assert_outcomes(passed=1)
    assert "does not run on splits that share sources" not in result.stdout.str()
    assert fake_llm.chat_requests()


def test_a_hand_edited_lock_is_never_overwritten(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals=dict(GOOD))
    write_project(pytester.path, fake_llm, optimize="steps: 1\nbatch_size: 2", min_rho=0.9)
    pytester.runpytest("--judge-optimize").assert_outcomes(passed=4)
    lock = pytester.path / LOCK
    edited = lock.read_text().replace("instruction: Count the facts\n", "instruction: Count the facts, twice\n")
    assert edited != lock.read_text()
    lock.write_text(edited)

    fake_llm.reset()
    result = pytester.runpytest("--judge-optimize")
    result.assert_outcomes(passed=3, failed=1)  # coherence is tested with the hand-edited instruction, and fails
    assert lock.read_text() == edited
    new = pytester.path / "toy.judge.lock.new.yaml"
    assert read_yaml(new)["criteria"]["coherence"]["instruction"] == GOOD["coherence"]
    result.stdout.fnmatch_lines([
        "*judge notes*",
        f"*{lock} was edited by hand since pytest-judgeopt wrote it, so it was left as it is; the new result is in {new}*",
        "*toy.judge.lock.yaml was edited by hand; testing its instructions as edited*"])
    assert any(judged_instructions(t) == {"coherence": "Count the facts, twice"} for t in judge_texts(fake_llm))


def test_a_lock_is_used_only_while_it_matches_its_spec_and_format(pytester: pytest.Pytester,
                                                                  fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals=dict(GOOD))
    spec = write_project(pytester.path, fake_llm, optimize="steps: 1\nbatch_size: 2", min_rho=0.9)
    spec_bytes = spec.read_bytes()
    pytester.runpytest("--judge-optimize").assert_outcomes(passed=4)
    assert spec.read_bytes() == spec_bytes
    lock = pytester.path / LOCK
    written = lock.read_text()

    spec.write_text(spec.read_text().replace("min_rho: 0.9", "min_rho: 0.8"))  # a threshold: the lock stays in force
    fake_llm.reset()
    pytester.runpytest("--judge-cache=off").assert_outcomes(passed=3)
    assert all(judged_instructions(t).items() <= GOOD.items() for t in judge_texts(fake_llm))

    lock.write_text(written.replace("version: 1\n", "version: 0\n"))
    fake_llm.reset()
    result = pytester.runpytest("--judge-cache=off")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(["*judge notes*", f"*{lock}: lock format version 0, this pytest-judgeopt reads "
                                 "version 1. Fix: run pytest --judge-optimize to write it again (or delete it)*"])
    assert all(judged_instructions(t).items() <= INITIAL.items() for t in judge_texts(fake_llm))

    lock.write_text(written)
    spec.write_text(spec.read_text().replace("Rate the fluency from 1 to 5.", "Rate how fluent the text reads."))
    fake_llm.reset()
    result = pytester.runpytest("--judge-cache=off")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(["*toy.judge.lock.yaml: the spec changed since this lock was made, so the spec's "
                                 "instructions are tested; run pytest --judge-optimize to make a new lock*"])
    used = {c: i for t in judge_texts(fake_llm) for c, i in judged_instructions(t).items()}
    assert used == {"coherence": INITIAL["coherence"], "fluency": "Rate how fluent the text reads."}
    assert lock.read_text() == written


FIXTURE_TEST = """
def test_optimize_from_python(judge):
    result = judge.optimize("toy.judge.yaml", mode="SSS")
    assert sorted(result.outcomes) == ["coherence", "fluency"]
    for name, final in (("coherence", "Count the facts"), ("fluency", "Check the grammar")):
        outcome = result.outcomes[name]
        assert outcome.final == final and outcome.accepted_steps == [1]
        assert outcome.test_after.value > outcome.test_before.value
        assert outcome.val_after > outcome.val_before
"""


def test_the_judge_fixture_optimizes_and_shares_its_work_with_the_command_line(pytester: pytest.Pytester,
                                                                               fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals=dict(GOOD))
    write_project(pytester.path, fake_llm, optimize="steps: 1\nbatch_size: 2", min_rho=0.9)
    pytester.makepyfile(test_from_python=FIXTURE_TEST)
    pytester.runpytest("test_from_python.py").assert_outcomes(passed=1)
    assert not (pytester.path / LOCK).exists()  # only --judge-optimize writes the lock
    assert Counter(role_of(b) for b in fake_llm.chat_requests())["optimizer"] == 2

    fake_llm.reset()
    result = pytester.runpytest("--judge-optimize", "--judge-mode=SSS", "toy.judge.yaml")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*toy: mode SSS, 1 steps*its result is reused, not repeated*"])
    assert not {role_of(b) for b in fake_llm.chat_requests()} & set(OPTIMIZER_ROLES)
    assert read_yaml(pytester.path / LOCK)["criteria"]["coherence"]["instruction"] == GOOD["coherence"]


def test_a_cached_mode_study_shows_its_calls_made_and_cached_apart(pytester: pytest.Pytester,
                                                                   fake_llm: FakeLLMServer) -> None:
    """issue 12.8: calls per run differed between a fresh and a cached study, with nothing saying why."""
    fake_llm.responder = World(RECORDS, score=strict_improves)
    write_project(pytester.path, fake_llm, optimize="study_runs: 1\nbatch_size: 2")

    def rows(result: pytest.RunResult) -> dict[str, list[str]]:
        out = result.stdout.str()
        return {mode: re.search(rf"^\s+{mode}\s+coherence\s.*$", out, re.M).group(0).split() for mode in MODES}

    fresh = pytester.runpytest("--judge-optimize=study", "--judge-steps=1", "-k", "study")
    fresh.assert_outcomes(passed=1)
    made = {mode: int(cells[-3]) for mode, cells in rows(fresh).items()}  # ... calls made, cached, cost
    assert all(n > 0 for n in made.values())
    cached = pytester.runpytest("--judge-optimize=study", "--judge-steps=1", "-k", "study")
    again = rows(cached)
    assert {mode: int(cells[-3]) for mode, cells in again.items()} == dict.fromkeys(MODES, 0)
    assert sum(int(cells[-2]) for cells in again.values()) > 0  # the answers a reused run still needs come from the cache
    cached.stdout.fnmatch_lines(["*runs finished before were reused from their checkpoints (ST: 1, SSS: 1, SSC: 1, "
                                 "SCC: 1, CCC: 1)*"])


def test_the_mode_study_prints_every_mode_and_criterion_with_specificity(pytester: pytest.Pytester,
                                                                        fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = World(RECORDS, score=strict_improves, diagnostics="8 because it stays on its criterion.")
    write_project(pytester.path, fake_llm, optimize="study_runs: 2\nbatch_size: 2")
    result = pytester.runpytest("--judge-optimize=study", "--judge-steps=1", "-k", "study")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "judge mode study" in out
    assert re.search(r"toy: 2 runs per mode, 1 steps each, val split of 9 samples, test split of 18 samples", out)
    for mode in MODES:
        for c in CRITERIA:
            row = re.search(rf"^\s+{mode}\s+{c}\s.*$", out, re.M)
            assert row, f"no row for {mode} {c}"
            assert "8.0" in row.group(0).split()  # the specificity column (rho values have three decimals)
    assert not (pytester.path / LOCK).exists()  # the study writes nothing
    asked = Counter(role_of(b) for b in fake_llm.chat_requests())  # identical prompts come from the answer cache
    assert asked["specificity"] >= len(CRITERIA) and asked["optimizer"] >= 1 and asked["optimizer_c"] >= 1


def test_a_diagnostics_floor_fails_the_optimize_item_naming_criterion_and_value(pytester: pytest.Pytester,
                                                                                 fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals=dict(GOOD), diagnostics="3: it wanders off.")
    write_project(pytester.path, fake_llm, optimize="steps: 1\nbatch_size: 2\ndiagnostics: {enabled: true, "
                                                   "min_specificity: 9}", min_rho=0.9)
    result = pytester.runpytest("--judge-optimize")
    result.assert_outcomes(failed=1, passed=3)
    result.stdout.fnmatch_lines(["*toy::coherence: gradient specificity 3.0 is below the spec's minimum 9*",
                                 "*toy::fluency: gradient specificity 3.0 is below the spec's minimum 9*"])
    assert "Traceback" not in result.stdout.str()
    assert read_yaml(pytester.path / LOCK)["criteria"]["coherence"]["diagnostics"]["specificity"] == 3.0


def test_the_optimize_item_runs_first_whatever_reordered_the_items(pytester: pytest.Pytester,
                                                                   fake_llm: FakeLLMServer) -> None:
    """issue 12.20: with -p randomly (which reorders first) a criterion item could run before ::optimize wrote
    the lock it tests. Here a conftest reverses the items as the first reordering, the worst order there is."""
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals=dict(GOOD))
    write_project(pytester.path, fake_llm, optimize="steps: 1\nbatch_size: 2", min_rho=0.9)
    (pytester.path / "test_plain.py").write_text("def test_a():\n    pass\n\n\ndef test_b():\n    pass\n")
    pytester.makeconftest("""
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_collection_modifyitems(items):
            items.reverse()
    """)
    result = pytester.runpytest("--judge-optimize", "-v")
    result.assert_outcomes(passed=6)  # the criteria pass on the lock's instructions, so the lock came first
    ran = [line.split(" ")[0] for line in result.outlines if " PASSED" in line]
    assert ran == ["toy.judge.yaml::optimize", "toy.judge.yaml::fluency", "toy.judge.yaml::coherence",
                   "toy.judge.yaml::merged", "test_plain.py::test_b", "test_plain.py::test_a"]


def test_a_lock_records_its_judge_model_and_runs_with_another_say_so(pytester: pytest.Pytester,
                                                                    fake_llm: FakeLLMServer) -> None:
    """issue 12.7: a lock made with one model was used by runs with another without a word. The rule: a model
    named for the run (--judge-model, JUDGEOPT_MODEL) tests the lock on it; a model the spec now names does not."""
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals=dict(GOOD))
    spec = write_project(pytester.path, fake_llm, optimize="steps: 1\nbatch_size: 2", min_rho=0.9)
    pytester.runpytest("--judge-optimize").assert_outcomes(passed=4)
    lock = pytester.path / LOCK
    assert read_yaml(lock)["judge_model"] == "openai/fake-judge"

    def in_force(session: Session) -> tuple[dict[str, str], list[str]]:
        return session.in_force(session.load(spec))[1], session.notes

    assert in_force(new_session(pytester.path / ".judgeopt")) == (dict.fromkeys(CRITERIA, "lock"), [])

    sources, notes = in_force(Session(LLM(), model_override="openai/another-judge", state_dir=pytester.path / ".s"))
    assert sources == dict.fromkeys(CRITERIA, "lock")
    assert notes == [f"{LOCK} was optimized with openai/fake-judge; this run judges with openai/another-judge "
                     "(--judge-model or JUDGEOPT_MODEL), so the lock's instructions are tested on that model"]

    spec.write_text(spec.read_text().replace('"name": "openai/fake-judge"', '"name": "openai/new-judge"'))
    sources, notes = in_force(new_session(pytester.path / ".judgeopt"))
    assert sources == dict.fromkeys(CRITERIA, "spec")
    assert notes == [f"{LOCK} was optimized with openai/fake-judge, but the spec now judges with openai/new-judge, so the "
                     "spec's instructions are tested; run pytest --judge-optimize to make a lock for openai/new-judge, "
                     "or pass --judge-model openai/fake-judge to test the lock with the model it was made for"]


def test_a_lock_broken_by_hand_is_kept_and_an_outdated_one_is_replaced(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    """A lock we cannot read was edited by hand (we write valid YAML), so it is kept like any hand edit;
    a lock of an older format is ours, and writing it again is the fix its message gives."""
    fake_llm.responder = World(RECORDS, score=knows(GOOD), proposals=dict(GOOD))
    spec = write_project(tmp_path, fake_llm, optimize="steps: 1\nbatch_size: 2")
    lock, new = tmp_path / LOCK, tmp_path / "toy.judge.lock.new.yaml"
    broken = "version: 1\ncriteria:\n  coherence: {instruction: Count the facts\n"  # an unclosed brace
    lock.write_text(broken)
    session = new_session(tmp_path / ".judgeopt")
    try:
        result = session.optimize(spec, "SSS", write=True)
        assert lock.read_text() == broken and result.lock_path == new
        assert read_yaml(new)["criteria"]["coherence"]["instruction"] == GOOD["coherence"]
        assert any(f"{lock} cannot be read as a lock file" in note and f"the new result is in {new}" in note
                   for note in session.notes), session.notes

        new.unlink()
        lock.write_text("version: 0\ncriteria:\n  coherence: {instruction: Count the facts}\n")
        again = session.optimize(spec, "SSS", write=True)
        assert again.lock_path == lock and not new.exists()
        assert read_yaml(lock)["version"] == 1
    finally:
        session.close()


# ---------------------------------------------------------------------------------------------
# the gate judges exactly what it keeps (issue 11): cross-criterion harm in one merged prompt, partial
# acceptance, failed judgments, undefined values, ties; the shape the numbers are for


BIG = make_records(n_groups=20, per_group=3)  # split seed 1: 5 train, 5 val, 10 test documents
HARM = "Count the facts"  # coherence's rewrite: right for coherence, it reverses fluency in a merged prompt
MENDS = "Mind the grammar"  # fluency's rewrite in the world where it half mends that harm


def reversed_score(record: dict[str, Any], criterion: str) -> float:
    return 6.0 - human(record, criterion)


def harmful(record: dict[str, Any], criterion: str, asked: dict[str, str]) -> float:
    """Coherence is right under HARM (noise otherwise); fluency is right under its own instruction unless
    HARM shares its prompt, which reverses it."""
    if criterion == "coherence":
        return human(record, criterion) if asked.get("coherence") == HARM else noise(record, criterion)
    return reversed_score(record, criterion) if asked.get("coherence") == HARM else human(record, criterion)


def half_mended(record: dict[str, Any], criterion: str, asked: dict[str, str]) -> float:
    """As ``harmful``, but with fluency's own rewrite beside HARM fluency is only degraded, not reversed."""
    if criterion == "fluency" and asked.get("coherence") == HARM and asked.get("fluency") == MENDS:
        return degraded(record, criterion)
    return harmful(record, criterion, asked)


def optimize_once(folder: Path, server: FakeLLMServer, world: Callable[[dict[str, Any]], Any], mode: str, *,
                  records: list[dict[str, Any]] = BIG, extra: str = "", optimize: str = "") -> tuple[Any, Session, Path]:
    server.responder = world
    spec = write_project(folder, server, records=records, extra=extra, optimize=f"steps: 1\nbatch_size: 2\n{optimize}")
    session = new_session(folder / ".judgeopt")
    try:
        return session.optimize(spec, mode, write=True), session, spec
    finally:
        session.close()


def test_sss_keeps_no_rewrite_that_reverses_another_criterion_and_the_harmed_item_passes(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    """Done-when of issue 11: the per-criterion rule looked at coherence alone and kept HARM, which the merged
    prompt's fluency paid for (its recorded val stayed as it was); the lock then failed fluency's item."""
    fake_llm.responder = World(BIG, joint=harmful, proposals={"coherence": HARM, "fluency": None})
    write_project(pytester.path, fake_llm, records=BIG, extra="inference: merged\ninterference: false\n",
                  optimize="steps: 2\nbatch_size: 2")
    result = pytester.runpytest("--judge-optimize", "--judge-mode=SSS", "-v")
    result.stdout.fnmatch_lines(["*toy.judge.yaml::optimize PASSED*", "*toy.judge.yaml::coherence FAILED*",
                                 "*toy.judge.yaml::fluency PASSED*"])
    lock = read_yaml(pytester.path / LOCK)
    assert {c: lock["criteria"][c]["instruction"] for c in CRITERIA} == INITIAL
    assert lock["criteria"]["fluency"]["val"] == {"before": pytest.approx(1.0), "after": pytest.approx(1.0),
                                                  "metric": "spearman", "level": "pooled"}
    out = result.stdout.str()
    assert "fluency val spearman would fall from 1.000 to -1.000" in out  # why coherence's rewrite was rejected


def test_a_partial_acceptance_is_judged_as_the_combination_it_keeps(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    """Coherence's rewrite gains, fluency's loses: keeping coherence's alone forms a prompt the candidate's
    judgment never saw, in which fluency is reversed. The gate judges that combination and rejects it."""
    world = World(BIG, joint=half_mended, proposals={"coherence": HARM, "fluency": MENDS})
    result, session, spec = optimize_once(tmp_path, fake_llm, world, "SSS", extra="inference: merged\n")
    (step,) = result.history
    assert step.val_after["coherence"] == pytest.approx(1.0) and step.val_before["coherence"] < 0.9
    assert step.val_before["fluency"] == pytest.approx(1.0)
    assert -0.9 < step.val_after["fluency"] < 0.99  # the candidate: degraded
    assert step.val_kept == pytest.approx({"coherence": 1.0, "fluency": -1.0})  # the combination, judged again
    assert step.judged_again
    assert step.accepted == []
    assert step.rejected_reasons["coherence"].startswith("rejected by the val gate: kept without fluency's rewrite, ")
    assert "fluency val spearman would fall from 1.000 to -1.000" in step.rejected_reasons["coherence"]
    val = len(session.records(session.load(spec), "val"))
    assert step.calls["gate"] == 2 * val  # the candidate, then the combination
    assert result.instructions == INITIAL
    assert result.outcomes["fluency"].val_after == pytest.approx(1.0)  # what is in force, measured
    verify = new_session(tmp_path / ".judgeopt")
    try:
        assert verify.evaluate(spec, "fluency").passed
    finally:
        verify.close()


def test_a_kept_combination_records_its_real_val_values(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    """Coherence gains; fluency's own rewrite loses and is dropped; coherence's rewrite alone leaves fluency as it
    was. The combination is judged, kept, and its measured values (not the candidate's) are the new val."""
    world = World(BIG, joint=lambda r, c, asked: (human(r, c) if asked[c] in (HARM, INITIAL["fluency"]) else
                                                 degraded(r, c) if asked[c] == MENDS else noise(r, c)),
                  proposals={"coherence": HARM, "fluency": MENDS})
    result, _, _ = optimize_once(tmp_path, fake_llm, world, "SSS")
    (step,) = result.history
    assert step.accepted == ["coherence"]
    assert step.val_after["fluency"] < 0.99 and step.val_kept["fluency"] == pytest.approx(1.0)
    assert step.judged_again
    assert result.outcomes["fluency"].val_after == pytest.approx(1.0)
    assert result.outcomes["coherence"].val_after == pytest.approx(1.0)


def extremes_only(record: dict[str, Any], criterion: str, asked: dict[str, str]) -> float | None:
    """Under EXTREMES the coherence judge answers only where the human score is 1 or 5 (and then rightly);
    otherwise it agrees, imperfectly, everywhere."""
    if criterion == "coherence" and asked.get("coherence") == EXTREMES:
        return human(record, criterion) if human(record, criterion) in (1.0, 5.0) else None
    return degraded(record, criterion)


EXTREMES = "Rate only the clear cases"


@pytest.mark.parametrize("mode", ["ST", "SSS", "CCC"])
def test_a_rewrite_that_answers_only_easy_samples_is_rejected(tmp_path: Path, fake_llm: FakeLLMServer, mode: str) -> None:
    """Failures raise rho: agreement on the parsed judgments alone went to 1.0 while 60% of the judgments failed."""
    world = World(BIG, joint=extremes_only, proposals={"coherence": EXTREMES, "fluency": None})
    result, _, _ = optimize_once(tmp_path, fake_llm, world, mode)
    (step,) = result.history
    assert step.val_after["coherence"] == pytest.approx(1.0) and step.val_before["coherence"] < 0.9
    assert step.accepted == []
    reason = step.rejected_reasons["coherence"]
    assert re.search(r"coherence failed judgments would rise from 0/15 to 10/15 \(67%\), above the allowed 10%", reason), reason
    assert step.val_failed["after"]["coherence"] == [10, 15]


@pytest.mark.parametrize("mode", ["ST", "SSS"])
def test_undefined_agreement_before_and_after_is_no_evidence(tmp_path: Path, fake_llm: FakeLLMServer, mode: str) -> None:
    """A constant judge has no rank correlation: -inf >= -inf used to count as 'not worse' and keep the rewrite."""
    world = World(BIG, joint=lambda r, c, asked: 3.0 if c == "coherence" else human(r, c),
                  proposals={"coherence": "Rate it once more.", "fluency": None})
    result, _, _ = optimize_once(tmp_path, fake_llm, world, mode)
    (step,) = result.history
    assert step.val_before["coherence"] is None and step.val_after["coherence"] is None
    assert step.accepted == []
    assert "undefined before and after" in step.rejected_reasons["coherence"]


@pytest.mark.parametrize("mode", ["ST", "SSS", "SSC", "CCC"])
def test_a_tie_keeps_the_old_instruction_under_every_rule(tmp_path: Path, fake_llm: FakeLLMServer, mode: str) -> None:
    """per_criterion kept a rewrite that tied (>=) while no_regression required a gain: one rule now, a gain."""
    world = World(BIG, score=lambda r, c, i: noise(r, c))  # every instruction scores the same
    result, _, _ = optimize_once(tmp_path, fake_llm, world, mode)
    (step,) = result.history
    assert step.val_after == step.val_before and all(step.proposals.values())
    assert step.accepted == []
    assert all("no criterion's val agreement improved" in step.rejected_reasons[c] or
               "does not improve" in step.rejected_reasons[c] for c in CRITERIA), step.rejected_reasons


def test_the_test_split_is_judged_in_the_shape_the_items_test_and_the_lock_says_so(
        tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    """SSS optimizes a merged prompt; the items test separate prompts (the default): the lock's test numbers are
    theirs, the lock and a note say which shape each number is for."""
    _, session, spec = optimize_once(tmp_path, fake_llm, World(BIG, score=strict_improves), "SSS")
    log = Log(fake_llm, session, spec)
    tests = [r for r in log.requests if r.role == "test"]
    assert tests and all(SEPARATE_FORMAT in r.text for r in tests)
    assert all(MERGED_FORMAT in r.text for r in log.requests if r.role == "gate")
    lock = read_yaml(tmp_path / LOCK)
    assert lock["shapes"] == {"optimized": "merged", "test": "separate"}
    assert any("mode SSS optimized and gated the instructions with one merged prompt, but the items test them "
               "with separate prompts" in note for note in session.notes), session.notes

    _, session, spec = optimize_once(tmp_path / "merged", fake_llm, World(BIG, score=strict_improves), "SSS",
                                     extra="inference: merged\n")
    assert read_yaml(tmp_path / "merged" / LOCK)["shapes"]["test"] == "merged"
    assert not any("optimized and gated" in note for note in session.notes)


def test_a_significant_test_drop_fails_the_optimize_item_and_writes_no_lock(pytester: pytest.Pytester,
                                                                            fake_llm: FakeLLMServer) -> None:
    """The rewrite fits train and val and reverses the judge on test: the paired difference excludes zero below."""
    write_project(pytester.path, fake_llm, records=BIG, optimize="steps: 1\nbatch_size: 2")
    test_ids = {r.id for r in Session(LLM()).load(pytester.path / "toy.judge.yaml").splits.test}

    def overfit(record: dict[str, Any], criterion: str, instruction: str) -> float:
        on_test = record["id"] in test_ids
        if criterion == "coherence" and instruction == HARM:
            return reversed_score(record, criterion) if on_test else human(record, criterion)
        return human(record, criterion) if on_test or criterion == "fluency" else noise(record, criterion)

    fake_llm.responder = World(BIG, score=overfit, proposals={"coherence": HARM, "fluency": None})
    result = pytester.runpytest("--judge-optimize", "--judge-mode=ST", "-v")
    result.stdout.fnmatch_lines(["*toy.judge.yaml::optimize FAILED*"])
    out = result.stdout.str()
    assert re.search(r"coherence: the test agreement fell significantly with the new instructions \(1\.000 -> "
                     r"-1\.000, difference -2\.000 \[-2\.000, -2\.000\]\); no lock was written", out), out
    assert not (pytester.path / LOCK).exists()
    assert "no lock written" in out  # the summary's heading says so too


def test_the_mode_study_shows_val_numbers_and_marks_test_as_held_out(pytester: pytest.Pytester,
                                                                     fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = World(RECORDS, score=strict_improves)
    write_project(pytester.path, fake_llm, optimize="study_runs: 1\nbatch_size: 2")
    result = pytester.runpytest("--judge-optimize=study", "--judge-steps=1", "-k", "study")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    header = next(line for line in out.splitlines() if "criterion" in line and "mode" in line)
    assert "val before" in header and "val after" in header and "test before (held out)" in header, header
    from scipy.stats import spearmanr

    val = Session(LLM()).load(pytester.path / "toy.judge.yaml").splits.val
    by_id = {r["id"]: r for r in RECORDS}
    noisy = spearmanr([noise(by_id[r.id], "coherence") for r in val], [r.human["coherence"] for r in val])[0]
    row = re.search(r"^\s+SSS\s+coherence\s.*$", out, re.M).group(0).split()
    assert row[2:4] == [f"{noisy:.3f}", "1.000"], row  # val before (the initial noise) and after (the human score)
    assert "choose a mode on val" in out


SWAP_LOWEST = "Compare the texts of one article"  # coherence's rewrite: gains pooled, loses per document


def in_document_order(record: dict[str, Any], criterion: str) -> list[dict[str, Any]]:
    return sorted((r for r in BIG if r["group"] == record["group"]), key=lambda r: (human(r, criterion), r["id"]))


def banded(record: dict[str, Any], criterion: str) -> float:
    """Right in each document's order (per document 1.0), each document in a band of its own (pooled poor)."""
    rank = [r["id"] for r in in_document_order(record, criterion)].index(record["id"])
    return 1.0 + rank + 2 * (int(record["group"][1:]) % 2)


def lowest_two_swapped(record: dict[str, Any], criterion: str) -> float:
    """The human scores with each document's two lowest swapped: better pooled than ``banded``, worse within."""
    order = in_document_order(record, criterion)
    rank = [r["id"] for r in order].index(record["id"])
    return human(order[{0: 1, 1: 0}.get(rank, rank)], criterion)


@pytest.mark.parametrize(("level", "kept"), [("group", []), ("pooled", ["coherence"])])
def test_the_gate_measures_at_the_items_level(tmp_path: Path, fake_llm: FakeLLMServer, level: str,
                                              kept: list[str]) -> None:
    """Issue 11, found 13: the gate used pooled rho when the items average per-document values. On val the rewrite
    gains pooled (0.454 -> 0.495) and halves the per-document value (1.000 -> 0.500): the level decides."""
    world = World(BIG, joint=lambda r, c, asked: (human(r, c) if c == "fluency" else lowest_two_swapped(r, c)
                                                 if asked[c] == SWAP_LOWEST else banded(r, c)),
                  proposals={"coherence": SWAP_LOWEST, "fluency": None})
    result, _, _ = optimize_once(tmp_path, fake_llm, world, "ST", extra=f"correlation: {{level: {level}, min_groups: 6}}\n")
    (step,) = result.history
    assert step.accepted == kept
    before, after = (1.0, 0.5) if level == "group" else (0.454, 0.495)
    assert (step.val_before["coherence"], step.val_after["coherence"]) == (pytest.approx(before, abs=1e-3),
                                                                           pytest.approx(after, abs=1e-3))
    if level == "group":
        assert "coherence val spearman would fall from 1.000 to 0.500" in step.rejected_reasons["coherence"]
    assert result.to_json()["val"] == {"metric": "spearman", "level": level}
    lock = read_yaml(tmp_path / LOCK)
    assert lock["criteria"]["coherence"]["val"] == {"before": pytest.approx(before, abs=1e-3),
                                                    "after": pytest.approx(after if kept else before, abs=1e-3),
                                                    "metric": "spearman", "level": level}


CASE_TEXT = "Sentences out of order, the end before the start."


def mends_or_reverses(record: dict[str, Any], criterion: str, asked: dict[str, str]) -> float:
    """Coherence is right under HARM; fluency is degraded under its initial instruction, right under MENDS, and
    reversed when HARM shares its prompt without MENDS."""
    if criterion == "coherence":
        return human(record, criterion) if asked.get("coherence") == HARM else noise(record, criterion)
    if asked.get("fluency") == MENDS:
        return human(record, criterion)
    return reversed_score(record, criterion) if asked.get("coherence") == HARM else degraded(record, criterion)


def test_what_the_case_gate_leaves_is_judged_on_val_as_the_combination_it_is(tmp_path: Path,
                                                                             fake_llm: FakeLLMServer) -> None:
    """The val gate keeps both rewrites (both gain, judged together); the case gate drops fluency's (it breaks a
    case). Coherence's left alone reverses fluency in the merged prompt: judged again, the step keeps nothing."""
    world = World(BIG, joint=mends_or_reverses, proposals={"coherence": HARM, "fluency": MENDS})

    def respond(body: dict[str, Any]) -> str | Fault:
        text = body["messages"][-1]["content"]
        if role_of(body) == "judge" and f"<summary>\n{CASE_TEXT}\n</summary>" in text:
            scores = {c: 5 if i == MENDS else 1 for c, i in judged_instructions(text).items()}
            return f"{next(iter(scores))}: {next(iter(scores.values()))}" if SEPARATE_FORMAT in text else json.dumps(scores)
        return world(body)

    cases = f"cases:\n  - {{name: jumbled, inputs: {{source: s, summary: {CASE_TEXT!r}}}, expect: {{fluency: [1, 2]}}}}\n"
    result, _, _ = optimize_once(tmp_path, fake_llm, respond, "SSS", extra=cases, optimize="gate: {cases: true}")
    (step,) = result.history
    assert step.val_after == pytest.approx({"coherence": 1.0, "fluency": 1.0})  # the candidate: both gain
    assert step.rejected_reasons["fluency"].startswith("rejected by the case gate: case[jumbled] breaks")
    assert step.judged_again and step.val_kept["fluency"] == pytest.approx(-1.0)
    assert step.accepted == []
    assert step.rejected_reasons["coherence"].startswith("rejected by the val gate: kept without fluency's rewrite, "
                                                         "fluency val spearman would fall")
    assert result.instructions == INITIAL


def test_a_studys_runs_send_their_own_seed_with_every_role_call(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    """Role calls went without a seed, so a mode study's second run (seed + 1) was answered from the cache with
    the first run's critiques and rewrites. Each role call carries its run's seed; the judge's calls carry none
    (a judgment at temperature 0 is the same measurement in every run, and stays cached across them)."""
    from pytest_judgeopt.optimize.study import run_study

    fake_llm.responder = World(RECORDS, score=strict_improves)
    spec = write_project(tmp_path, fake_llm, optimize="study_runs: 2\nbatch_size: 2\nseed: 5")
    with Session(LLM(retries=1, backoff=0.01, timeout=10.0), state_dir=tmp_path / ".judgeopt") as session:
        run_study(session, spec, modes=["SSS"], steps=1)
    bodies = fake_llm.chat_requests()
    roles = [b for b in bodies if role_of(b) != "judge"]
    assert {b.get("seed") for b in roles} == {5, 6}
    for seed in (5, 6):  # the second run asked its own roles, not the cache for the first run's answers
        assert Counter(role_of(b) for b in roles if b["seed"] == seed)["optimizer"] >= 1
    assert {b.get("seed") for b in bodies if role_of(b) == "judge"} == {None}
