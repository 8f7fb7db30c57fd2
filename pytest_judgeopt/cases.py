"""Cases: particular inputs the judge must score within a range, written down as tests.

The agreement items answer "does the judge agree with the humans on average"; a case answers
"does it score this incoherent summary low", as a unit test pins one behaviour. Teams develop a
judge the way they develop code: write the case, watch it fail, change the instruction, watch it
pass. Each case is its own pytest item (``spec.judge.yaml::case[NAME]``).

A case is judged with the instructions in force (the lock file's while it matches, else the
spec's) and the spec's prompt shape, by the same client and cache as the items. An expectation
that every score on the scale meets, or none does, is a test that cannot fail or cannot pass, so
it is a mistake in the spec, reported with the file, the line and the fix.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import Record
from .llm import LLM
from .problems import Path_, SpecError, dotted, problem
from .scoring import Scored, as_record, input_problems, score_records
from .spec import Model, Spec, non_finite
from .spec_schema import explain, schema
from .yaml_lines import read_yaml

CASE_FILE_SUFFIXES = (".yaml", ".yml", ".jsonl")
MAX_CASE_FILE_BYTES = 10_000_000
MAX_ID_SUGGESTIONS = 20_000  # record ids compared for a did-you-mean; beyond it the lookup would cost more than it helps
REPLY_SHOWN = 200
COMPARISON = re.compile(r"^\s*(<=|>=|==|=|<|>)?\s*([-+]?\d+(?:\.\d+)?)\s*$")


class ExpectationError(ValueError):
    """An expectation that cannot be read or cannot decide anything; ``what`` and ``fix`` for the message."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what}. Fix: {fix}")
        self.what = what
        self.fix = fix


@dataclass(frozen=True)
class Expectation:
    """The scores a case allows: from ``low`` to ``high``, each end included unless marked open."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    text: str = ""

    def holds(self, score: float) -> bool:
        above = score > self.low if self.low_open else score >= self.low
        below = score < self.high if self.high_open else score <= self.high
        return above and below

    def __str__(self) -> str:
        return self.text


def number_text(value: float) -> str:
    return f"{value:g}"


def parse_expectation(value: Any, scale: tuple[float, float]) -> Expectation:
    """``[lo, hi]`` (inclusive), a comparison (``"<= 2"``, ``">= 4"``, ``"< 3"``, ``"> 3"``, ``"== 3"``) or one
    number, checked against the criterion's scale; raises ExpectationError saying what is wrong and the fix."""
    low, high = scale
    span = f"[{number_text(low)}, {number_text(high)}]"
    if isinstance(value, list):
        if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ExpectationError(f"a range is two numbers [lowest, highest], got {json.dumps(value, default=str)[:40]}",
                                   "write e.g. [1, 2]")
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ExpectationError("the range holds a number that is not finite", "write finite numbers")
        if lo > hi:
            raise ExpectationError(f"the range [{number_text(lo)}, {number_text(hi)}] runs backwards",
                                   f"write the lower end first: [{number_text(hi)}, {number_text(lo)}]")
        outside = [v for v in (lo, hi) if not low <= v <= high]
        if outside:
            raise ExpectationError(f"the range [{number_text(lo)}, {number_text(hi)}] reaches outside the scale {span}",
                                   f"keep both ends within {span}")
        expectation = Expectation(lo, hi, text=f"[{number_text(lo)}, {number_text(hi)}]")
    elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
        if isinstance(value, str):
            match = COMPARISON.match(value)
            if match is None:
                raise ExpectationError(f"cannot read the expectation {json.dumps(value)[:40]}",
                                       'write a range [lo, hi] or a comparison such as "<= 2", ">= 4", "== 3"')
            op, number = match.group(1) or "==", float(match.group(2))
        else:
            op, number = "==", float(value)
        if not math.isfinite(number):
            raise ExpectationError(f"{number} is not a finite number", "write a finite number")
        if not low <= number <= high:
            raise ExpectationError(f"{number_text(number)} is outside the scale {span}", f"compare with a score within {span}")
        op = "==" if op == "=" else op
        text = f"{op} {number_text(number)}"
        expectation = {"<=": Expectation(low, number, text=text), "<": Expectation(low, number, high_open=True, text=text),
                       ">=": Expectation(number, high, text=text), ">": Expectation(number, high, low_open=True, text=text),
                       "==": Expectation(number, number, text=text)}[op]
    else:
        raise ExpectationError(f"an expectation is a range or a comparison, not {type(value).__name__}",
                               'write e.g. [1, 2], "<= 2" or ">= 4"')
    if expectation.low == expectation.high and (expectation.low_open or expectation.high_open):
        raise ExpectationError(f"no score on the scale {span} meets {expectation.text}",
                               "widen it: the case could never pass")
    if expectation.low <= low and expectation.high >= high and not expectation.low_open and not expectation.high_open:
        raise ExpectationError(f"every score on the scale {span} meets {expectation.text}",
                               "narrow it to the scores the judge must give: the case could never fail")
    return expectation


@dataclass(frozen=True)
class Case:
    name: str
    inputs: dict[str, str]
    expect: dict[str, Expectation]
    record: str | None
    human: dict[str, float]  # the record's human scores; none for texts written in the case
    file: Path
    line: int
    note: str | None = None

    @property
    def item_name(self) -> str:
        return f"case[{self.name}]"


# --------------------------------------------------------------------------
# reading and checking


def case_schema() -> dict[str, Any]:
    """The spec schema's case definition, for a file of cases (wrapped as `cases:` so messages name the same keys)."""
    full = schema()
    return {"type": "object", "properties": {"cases": {"type": "array", "items": {"$ref": "#/$defs/case"}}},
            "$defs": full["$defs"]}


def read_case_file(spec: Spec, file: Path) -> tuple[Any, dict[Path_, int]]:
    """The cases of a ``.yaml`` or ``.jsonl`` file, as ``{"cases": [...]}``, with the line of every key."""
    at = spec.line_of("cases")
    if file.suffix.lower() not in CASE_FILE_SUFFIXES:
        raise SpecError([problem(spec.path, at, "cases", f"cannot read cases from '{file.name}'",
                                 "name a .yaml or .jsonl file of cases, or write the cases in the spec as a list")])
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise SpecError([problem(spec.path, at, "cases", f"cannot read {file} ({exc.strerror})",
                                 "give the file's path relative to the spec file")]) from None
    if size > MAX_CASE_FILE_BYTES:
        raise SpecError([problem(file, None, "", f"the file is {size:,} bytes, over the {MAX_CASE_FILE_BYTES:,} limit",
                                 "keep a case file to the cases that matter; split it across specs")])
    lines: dict[Path_, int] = {}
    if file.suffix.lower() == ".jsonl":
        entries: list[Any] = []
        from .data import read_jsonl

        for number, row in read_jsonl(file):
            record_json_lines(row, ("cases", len(entries)), number, lines)
            entries.append(row)
        lines[("cases",)] = 1
        return {"cases": entries}, lines
    data, found = read_yaml(file)
    if isinstance(data, dict) and set(data) == {"cases"}:  # the spec's section copied as it was
        data, found = data["cases"], {k[1:]: v for k, v in found.items() if k[:1] == ("cases",)}
    if not isinstance(data, list):
        raise SpecError([problem(file, 1, "", "a case file holds a YAML list of cases",
                                 "write `- name: ...` entries with inputs (or record) and expect")])
    lines = {("cases", *key): line for key, line in found.items()}
    return {"cases": data}, lines


def record_json_lines(value: Any, at: Path_, line: int, lines: dict[Path_, int]) -> None:
    lines[at] = line
    if isinstance(value, dict):
        for key, item in value.items():
            record_json_lines(item, (*at, key), line, lines)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            record_json_lines(item, (*at, i), line, lines)


def load_cases(spec: Spec, records: Sequence[Record]) -> tuple[Case, ...]:
    """The spec's cases, checked against its criteria, inputs and data; raises SpecError listing every problem."""
    raw = spec.raw.get("cases")
    if raw is None:
        settings = spec.raw.get("optimize", {})
        unused = [at for at, on in ((("optimize", "gate", "cases"), settings.get("gate", {}).get("cases")),
                                    (("optimize", "cases_in_prompt"), settings.get("cases_in_prompt"))) if on]
        if unused:
            raise SpecError([problem(spec.path, spec.line_of(*at), dotted(at), "the spec has no cases for this to use",
                                     "add `cases:` to the spec, or remove this setting") for at in unused])
        return ()
    if isinstance(raw, str):
        file = (spec.path.parent / raw).resolve()
        document, lines = read_case_file(spec, file)
        import jsonschema

        found = [text for error in jsonschema.Draft202012Validator(case_schema()).iter_errors(document)
                 for text in explain(file, error, lines)]
        found += [problem(file, lines.get(at), dotted(at), f"{number} is not a finite number", "write a finite number")
                  for at, number in non_finite(document)]
        if found:
            raise SpecError(sorted(set(found), key=found.index))
        entries = document["cases"]
    else:  # checked by the spec's schema already
        file, entries, lines = spec.path, raw, spec.lines
    by_id = {r.id: r for r in records}
    problems: list[str] = []
    cases: list[Case] = []
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        at: Path_ = ("cases", i)

        def report(what: str, fix: str, *key: str | int, at: Path_ = at) -> None:
            problems.append(problem(file, lines.get(at + key, lines.get(at)), dotted(at + key), what, fix))

        name = entry["name"]
        line = lines.get(at, 1)
        if name in first:
            report(f"the case name '{name}' is used twice (first on line {first[name]})",
                   "give every case its own name: it is the item's id", "name")
            continue
        first[name] = line
        record_id = entry.get("record")
        inputs = {key: str(value) for key, value in entry.get("inputs", {}).items()}
        record = None
        if record_id is None and "inputs" not in entry:
            report("a case needs the texts to judge", "add `inputs:` (placeholder -> text) or `record:` with a record id")
            continue
        if record_id is not None:
            record = by_id.get(str(record_id))
            if record is None:
                guess = (difflib.get_close_matches(str(record_id), list(by_id), n=1)
                         if len(by_id) <= MAX_ID_SUGGESTIONS else [])
                report(f"no record with id '{record_id}' in {spec.dataset.path.name}",
                       f"did you mean '{guess[0]}'?" if guess else f"use the `{spec.dataset.id}` of a record", "record")
                continue
        bad = False
        for what, fix in input_problems(spec, inputs, complete=record is None):
            report(what, fix, "inputs")
            bad = True
        expect: dict[str, Any] = {}
        for criterion, value in entry["expect"].items():
            if criterion not in spec.criteria:
                guess = difflib.get_close_matches(criterion, list(spec.criteria), n=1)
                report(f"no criterion '{criterion}' in the spec",
                       f"did you mean '{guess[0]}'?" if guess else f"use one of: {', '.join(spec.criteria)}", "expect", criterion)
                bad = True
                continue
            try:
                expect[criterion] = parse_expectation(value, spec.criteria[criterion].scale)
            except ExpectationError as exc:
                report(exc.what, exc.fix, "expect", criterion)
                bad = True
        if bad:
            continue
        texts = {**record.inputs, **inputs} if record is not None else inputs
        cases.append(Case(name=name, inputs={k: texts[k] for k in spec.dataset.inputs}, expect=expect,
                          record=record.id if record is not None else None,
                          human=dict(record.human) if record is not None else {}, file=file, line=line,
                          note=entry.get("note")))
    if problems:
        raise SpecError(problems)
    return tuple(cases)


# --------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Check:
    """One criterion of one case: the expectation and what the judge said."""

    criterion: str
    expectation: Expectation
    scored: Scored
    human: float | None = None

    @property
    def passed(self) -> bool:
        return self.scored.score is not None and self.scored.failure is None and self.expectation.holds(self.scored.score)

    def reason(self) -> str:
        s = self.scored
        if s.score is None or s.failure is not None:
            return f"expected {self.expectation}, but the judgment failed ({s.failure}: {s.detail})"
        return f"expected {self.expectation}, the judge scored {score_text(s)}"

    def to_json(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "expect": self.expectation.text, "low": self.expectation.low,
                "high": self.expectation.high, "low_open": self.expectation.low_open,
                "high_open": self.expectation.high_open, "human": self.human, "passed": self.passed,
                **{k: v for k, v in self.scored.to_json().items() if k != "criterion"}}


def score_text(s: Scored) -> str:
    if s.score is None:
        return "-"
    if s.weighted is not None:
        said = "" if s.parsed is None else f"; the reply says {s.parsed:g}"
        return f"{s.score:.2f} (probability-weighted{said})"
    return f"{s.score:g}"


@dataclass
class CaseResult:
    case: Case
    spec_name: str
    path: str
    shape: str
    model: str
    checks: list[Check]
    instruction_sources: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec_name, "path": self.path, "case": self.case.name, "file": str(self.case.file),
                "line": self.case.line, "record": self.case.record, "note": self.case.note, "shape": self.shape,
                "model": self.model, "passed": self.passed,
                "instruction_sources": dict(sorted(self.instruction_sources.items())),
                "checks": [c.to_json() for c in self.checks]}

    def properties(self) -> dict[str, Any]:
        """The case item's JUnit properties: per criterion the expectation, the judge's score and the verdict."""
        out: dict[str, Any] = {"case_passed": self.passed, "case_shape": self.shape}
        if self.case.record is not None:
            out["case_record"] = self.case.record
        for c in self.checks:
            out.update({f"case_{c.criterion}_expect": c.expectation.text, f"case_{c.criterion}_score": c.scored.score,
                        f"case_{c.criterion}_failure": c.scored.failure, f"case_{c.criterion}_passed": c.passed})
        return out


def checks(case: Case, scores: Mapping[str, Scored]) -> list[Check]:
    return [Check(name, expectation, scores[name], case.human.get(name)) for name, expectation in case.expect.items()]


async def judge_cases(llm: LLM, model: Model, spec: Spec, cases: Sequence[Case], instructions: Mapping[str, str],
                      *, role: str = "judge") -> list[list[Check]]:
    """Each case's checks under the given instructions (the items', or an optimizer's candidate), all calls in
    flight together: cases that expect the same criteria share one pass of the judge."""
    from .llm import gather_or_cancel

    groups: dict[tuple[str, ...], list[Case]] = {}
    for case in cases:
        groups.setdefault(tuple(case.expect), []).append(case)
    work = [score_records(llm, model, spec, [as_record(f"case:{c.name}", c.inputs, spec, c.human) for c in members],
                          instructions, names, role=role) for names, members in groups.items()]
    found: dict[str, dict[str, Scored]] = {}
    for members, scores in zip(groups.values(), await gather_or_cancel(work), strict=True):
        found.update({case.name: s for case, s in zip(members, scores, strict=True)})
    return [checks(c, found[c.name]) for c in cases]


def describe_failure(result: CaseResult) -> str:
    """A failing case's message: per criterion the expectation, the judge's score and its reply."""
    case = result.case
    sources = sorted({result.instruction_sources.get(c.criterion, "spec") for c in result.checks})
    lines = [f"{result.spec_name}::{case.item_name} failed ({result.shape} prompts, instructions from "
             f"{' and '.join(sources)}, {result.model}):"]
    for check in result.checks:
        mark = "ok  " if check.passed else "FAIL"
        human = "" if check.human is None else f" (human score {check.human:g})"
        lines.append(f"  {mark} {check.criterion}: {check.reason()}{human}")
        lines.append(f"       reply: {json.dumps((check.scored.reply or '')[:REPLY_SHOWN])}")
    if case.note:
        lines.append(f"  note: {case.note}")
    where = f"record {case.record}" if case.record else "inputs"
    lines.append(f"  {where}: " + ", ".join(f"{name} {json.dumps(text[:60])}" for name, text in case.inputs.items()))
    return "\n".join(lines)
