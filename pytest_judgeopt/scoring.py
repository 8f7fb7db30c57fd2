"""Judging texts that are not records of the dataset: one judgment, as a user's own test asks for it.

``judge.score(spec, "coherence", source=..., summary=...)``, the spec's cases and the probes'
changed inputs all take this path: the prompts, the instructions in force, the model, the answer
cache and the client of the regression items, so a case and an item that judge the same text
share its answer, and a case judges exactly what the items test.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .data import Record
from .judge import Judgment, judge_records
from .llm import LLM
from .spec import Model, Spec


@dataclass(frozen=True)
class Scored:
    """One criterion's judgment of one input.

    ``score`` is what the regression items would use: the probability-weighted score where the spec
    asks for logprobs and the provider returned them (then also in ``weighted``, with the number the
    reply wrote in ``parsed``), else the number parsed from the reply. A failed judgment has no score
    and says why in ``failure`` (a kind) and ``detail``; it is never replaced by a default.
    """

    criterion: str
    score: float | None
    reply: str | None
    failure: str | None
    detail: str = ""
    weighted: float | None = None
    parsed: float | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.score is not None

    def to_json(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "score": self.score, "weighted": self.weighted, "parsed": self.parsed,
                "failure": self.failure, "detail": self.detail, "reply": self.reply}


def scored(judgment: Judgment) -> Scored:
    weighted = judgment.score if judgment.scoring == "weighted" else None
    return Scored(judgment.criterion, judgment.score, judgment.reply, judgment.failure, judgment.detail, weighted,
                  judgment.parsed)


def input_problems(spec: Spec, inputs: Mapping[str, Any], *, complete: bool = True) -> list[tuple[str, str]]:
    """(what, fix) for each input that is not one of the spec's placeholders, and, when the inputs must be
    ``complete``, for each placeholder without a text: the prompt shows every input, so none may be left out."""
    known = list(spec.dataset.inputs)
    out = []
    for name in inputs:
        if name not in known:
            guess = difflib.get_close_matches(str(name), known, n=1)
            out.append((f"unknown input '{name}' (the spec's inputs are {', '.join(known)})",
                        f"did you mean '{guess[0]}'?" if guess else f"use the names in dataset.inputs: {', '.join(known)}"))
    if complete:
        for name in known:
            if name not in inputs:
                out.append((f"no text for the input '{name}'", f"add `{name}:` with the text the judge reads as {{{name}}}"))
    return out


def check_inputs(spec: Spec, inputs: Mapping[str, Any]) -> dict[str, str]:
    """The inputs of a ``judge.score`` call as texts; a wrong or missing name is the caller's mistake, said plainly."""
    problems = input_problems(spec, inputs)
    if problems:
        raise ValueError(f"{spec.path}: " + "; ".join(f"{what}. Fix: {fix}" for what, fix in problems))
    return {name: str(inputs[name]) for name in spec.dataset.inputs}


def as_record(key: str, inputs: Mapping[str, str], spec: Spec, human: Mapping[str, float] | None = None) -> Record:
    """A record for the judge to read: texts with no human score (NaN stands where the judge code expects one)."""
    scores = {name: (human or {}).get(name, math.nan) for name in spec.criteria}
    return Record(id=key, group=key, inputs=dict(inputs), human=scores, line=0)


async def score_records(llm: LLM, model: Model, spec: Spec, records: Sequence[Record], instructions: Mapping[str, str],
                        wanted: Sequence[str], *, role: str = "judge") -> list[dict[str, Scored]]:
    """Judge records outside the splits in the spec's prompt shape, as the items judge: separate prompts for the
    criteria wanted, or the merged prompt of every criterion, read for the ones wanted. One dict per record."""
    if not records:
        return []
    names = list(spec.criteria) if spec.inference == "merged" else list(wanted)
    judged = await judge_records(llm, model, spec, records, instructions, criteria=names, shape=spec.inference, role=role)
    by_record: dict[str, dict[str, Scored]] = {r.id: {} for r in records}
    for name in wanted:
        for judgment in judged.judgments[name]:
            by_record[judgment.record_id][name] = scored(judgment)
    return [by_record[r.id] for r in records]
