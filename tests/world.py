"""The scripted world of the optimizer tests: their records and instructions, which role a request is
for, and ``World``, a deterministic model that answers every role over the scripted server.

A helper module (no tests here), shared by the optimizer, report, fault, secret, replay and
parallel tests. The judge answers the human score only under a known instruction, so
"optimization works" is a fact a test can check rather than a hope.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.llm import LLM
from pytest_judgeopt.session import Session
from tests.conftest import CRITERIA, make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer, Fault

MODES = ("ST", "SSS", "SSC", "SCC", "CCC")
RECORDS = make_records(n_groups=12, per_group=3)  # split seed 1: 3 train, 3 val, 6 test documents
INITIAL = {c: f"Rate the {c} from 1 to 5." for c in CRITERIA}
SUMMARY = re.compile(r"<summary>\n(.*?)\n</summary>", re.S)
SEPARATE_FORMAT = "Answer in this format and nothing else"
MERGED_FORMAT = "Answer with one JSON object and nothing else"
ROLE_MARKS = (  # most specific first: "...instructions" before "...instruction"
    ("You review one score", "loss"),
    ("You review the scores an automatic judge gave", "loss_c"),
    ("Write feedback on the instructions", "gradient_c"),
    ("Write feedback on the instruction", "gradient"),
    ("Answer with the new instruction between <instruction>", "optimizer"),
    ("Answer with one JSON object mapping each criterion", "optimizer_c"),
    ("how specifically does this feedback", "specificity"),
    ("how faithfully does the new instruction", "adherence"),
)
GOOD = {"coherence": "Count the facts", "fluency": "Check the grammar"}  # the instructions the judge knows
OPTIMIZER_ROLES = ("loss", "loss_c", "gradient", "gradient_c", "optimizer", "optimizer_c")

Score = Callable[[dict[str, Any], str, str], float]  # (record, criterion, instruction) -> the judge's score
# (record, criterion, every instruction in the prompt) -> the judge's score, None for a reply without one
Joint = Callable[[dict[str, Any], str, dict[str, str]], "float | None"]


def role_of(body: dict[str, Any]) -> str:
    """Which role a request is for. Judge prompts are the only ones with a system message, so a
    judge prompt that lost its output format is still recognised (and then caught by the asserts)."""
    messages = body["messages"]
    text = messages[-1]["content"]
    if messages[0]["role"] == "system":
        return "judge"
    for mark, role in ROLE_MARKS:
        if mark in text:
            return role
    raise AssertionError(f"a request no role's prompt matches: {text[:300]!r}")


def judged_instructions(text: str) -> dict[str, str]:
    """The criteria and instructions a judge prompt holds (separate or merged shape)."""
    one = re.search(r"^Criterion: (\w+)\nInstruction: (.*)$", text, re.M)
    if one:
        return {one.group(1): one.group(2)}
    return dict(re.findall(r"^- (\w+): (.*)$", text, re.M))


def names_in(text: str) -> set[str]:
    return {c for c in CRITERIA if c in text}


def noise(record: dict[str, Any], criterion: str) -> float:
    """A fixed pseudo-random score: agreement with the humans is poor but the same on every run."""
    return float(int(hashlib.sha256(f"{record['id']}/{criterion}".encode()).hexdigest()[:8], 16) % 5 + 1)


def human(record: dict[str, Any], criterion: str) -> float:
    return float(record["scores"][criterion])


def knows(good: dict[str, str], bad: dict[str, str] | None = None, base: Score | None = None) -> Score:
    """The human score under a known good instruction; ``degraded`` under a known bad one; else ``base`` (noise)."""
    bad = bad or {}

    def score(record: dict[str, Any], criterion: str, instruction: str) -> float:
        if good.get(criterion) == instruction:
            return human(record, criterion)
        if bad.get(criterion) == instruction:
            return degraded(record, criterion)
        return (base or (lambda r, c, i: noise(r, c)))(record, criterion, instruction)

    return score


def degraded(record: dict[str, Any], criterion: str) -> float:
    """Worse than the human score but still related: the first sample of each document gets the middle score."""
    return 3.0 if record["id"].endswith("-s0") else human(record, criterion)


@dataclass
class World:
    """A deterministic scripted model for every role (so a resumed run sees what an uninterrupted one saw).

    judge: ``score(record, criterion, instruction)``, or ``joint(record, criterion, instructions)`` seeing every
    instruction in the prompt (a None score is a reply without one: prose, or the key missing). loss and gradient: short texts naming only
    their own criterion (S) or none (C), so the tests can see where a text travelled. optimizer:
    ``proposals[c]``, a string or a function of the current instruction; None answers without an
    instruction. diagnostics: ``diagnostics`` for both ratings. ``fail(role, text)`` returning True
    answers that request with HTTP 500.
    """

    records: list[dict[str, Any]]
    score: Score = field(default_factory=lambda: knows({}))
    joint: Joint | None = None
    proposals: dict[str, str | Callable[[str], str] | None] = field(default_factory=dict)
    diagnostics: str = "8 because the feedback is about this criterion only."
    fail: Callable[[str, str], bool] = lambda role, text: False

    def __post_init__(self) -> None:
        self.by_summary = {r["summary"]: r for r in self.records}

    def __call__(self, body: dict[str, Any]) -> str | Fault:
        role = role_of(body)
        text = body["messages"][-1]["content"]
        if self.fail(role, text):
            return Fault("status", 500)
        if role == "judge":
            record = self.by_summary[SUMMARY.search(text).group(1)]
            asked = judged_instructions(text)
            if self.joint is not None:
                scores = {c: self.joint(record, c, asked) for c in asked}
            else:
                scores = {c: self.score(record, c, i) for c, i in asked.items()}
            if SEPARATE_FORMAT in text:
                (c, s), = scores.items()
                return "I cannot rate this text." if s is None else f"{c}: {s:g}"
            return json.dumps({c: s for c, s in scores.items() if s is not None})  # no score: the key is missing
        if role == "loss":
            c = re.search(r'criterion "(\w+)"', text).group(1)
            return f"The judge misread the {c} of this text."
        if role == "loss_c":
            return "The judge misread this text overall."
        if role == "gradient":  # names its text, so a test can check the optimizer is told which text it is about
            c = re.search(r'criterion "(\w+)"', text).group(1)
            return f"Change the {c} instruction: look closer at {SUMMARY.search(text).group(1)}"
        if role == "gradient_c":
            return "Change the instructions: look closer at every aspect."
        if role == "optimizer":
            c = re.search(r'criterion "(\w+)"', text).group(1)
            current = re.search(r"<instruction>\n(.*?)\n</instruction>", text, re.S).group(1)
            new = self.propose(c, current)
            return "I would keep it as it is." if new is None else f"Here it is.\n<instruction>{new}</instruction>"
        if role == "optimizer_c":
            current = dict(re.findall(r"^- (\w+): (.*)$", text.split("Texts it rated")[0], re.M))
            proposed = {c: self.propose(c, i) for c, i in current.items()}
            if all(v is None for v in proposed.values()):
                return "No changes are needed."
            return json.dumps({c: v for c, v in proposed.items() if v is not None})
        return self.diagnostics

    def propose(self, criterion: str, current: str) -> str | None:
        new = self.proposals.get(criterion, lambda i: i + " Be strict.")
        return new(current) if callable(new) else new


def strict_improves(record: dict[str, Any], criterion: str, instruction: str) -> float:
    """Each "Be strict." the optimizer adds makes the judge agree more: noise, then the human score."""
    return human(record, criterion) if "Be strict." in instruction else noise(record, criterion)


def gradual_improves(record: dict[str, Any], criterion: str, instruction: str) -> float:
    """Each "Be strict." (up to four) moves the judge a quarter of the way from noise to the human score: on the
    splits of RECORDS every step of a 4-step run gains on val, so no step repeats an earlier candidate."""
    w = min(1.0, instruction.count("Be strict.") / 4)
    return w * human(record, criterion) + (1 - w) * noise(record, criterion)


def write_project(folder: Path, server: FakeLLMServer, *, records: list[dict[str, Any]] = RECORDS, optimize: str = "",
                  extra: str = "", **spec_args: Any) -> Path:
    """A spec and its data; ``optimize`` is the body of the spec's optimize: block (one setting per line),
    ``extra`` more top-level spec lines."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if optimize.strip():
        extra += "optimize:\n" + "".join(f"  {line}\n" for line in optimize.strip().splitlines())
    if "correlation:" not in extra:  # RECORDS' test split holds 6 documents: intervals from 6 on (the default is 8)
        extra += "correlation: {min_groups: 6}\n"
    spec = folder / "toy.judge.yaml"
    spec.write_text(spec_text(server_model(server), extra=extra, **spec_args))
    return spec


def new_session(state: Path) -> Session:
    return Session(LLM(retries=1, backoff=0.01, timeout=10.0), state_dir=state)


# ---------------------------------------------------------------------------------------------
# one project that exercises everything a report holds (the report and HTML tests)


def report_world() -> World:
    """coherence's rewrite makes the judge agree (accepted at step 1); fluency's makes it worse (rejected twice)."""
    good = {"coherence": GOOD["coherence"], "fluency": INITIAL["fluency"]}
    return World(RECORDS, score=knows(good, bad={"fluency": "Rate loosely."}),
                 proposals={"coherence": GOOD["coherence"], "fluency": "Rate loosely."})


def everything(folder: Path, server: FakeLLMServer) -> Path:
    """A project whose run has an optimization, criterion items and the merged check."""
    server.responder = report_world()
    return write_project(folder, server, optimize="steps: 2\nbatch_size: 2", min_rho=0.5)


def report_run(pytester: pytest.Pytester, server: FakeLLMServer, out: str, *args: str) -> pytest.RunResult:
    everything(pytester.path, server)
    return pytester.runpytest("--judge-optimize", "--judge-retries=1", f"--judge-report={out}",
                              f"--judge-cache-dir={out}-cache", *args)
