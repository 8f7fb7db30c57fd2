"""The optimizer's roles: their prompt templates, the text quoted into them, and the parsing of their replies.

The templates are ``pytest_judgeopt/prompts/*.txt`` unless the spec's ``optimize.prompts`` names a
file for one; every reply is read leniently (a weak model wraps an instruction in prose), and a reply
with nothing to read yields None, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..data import Record
from ..parse import json_objects
from ..spec import Spec

# the roles that have a model (the gate judges with the judge's); ``models:`` in a spec may name each
MODEL_ROLES = ("judge", "loss", "gradient", "optimizer", "diagnostics")
FEEDBACK_CHARS = 1500  # per critique or gradient quoted into a later prompt: keeps prompts bounded


def template(spec: Spec, name: str) -> str:
    """A role's prompt: the spec's override file if it names one, else ours."""
    override = spec.optimize.prompts.get(name)
    if override is not None:
        return override.read_text(encoding="utf-8")
    return resources.files("pytest_judgeopt").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")


def fill(text: str, **values: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": text.format_map(values)}]


def clip(text: str | None, limit: int = FEEDBACK_CHARS) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def show(score: float | None) -> str:
    return "no usable score" if score is None else f"{score:g}"


def verdict(judge: float | None, human: float) -> str:
    if judge is None:
        return "The judge gave no usable score."
    diff = judge - human
    if abs(diff) < 0.5:
        return "The judge's score matches the human score."
    return f"The judge's score is {abs(diff):g} {'higher' if diff > 0 else 'lower'} than the human score."


@dataclass
class Seen:
    """One batch sample as the judge saw it: its reply (per criterion) and scores."""

    record: Record
    replies: dict[str, str | None]
    scores: dict[str, float | None]

    def score_table(self, criteria: Sequence[str]) -> str:
        human = self.record.human
        lines = [f"- {c}: judge {show(self.scores[c])}, human {human[c]:g}. {verdict(self.scores[c], human[c])}"
                 for c in criteria]
        return "Scores:\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# replies


def tagged_instruction(reply: str | None) -> str | None:
    """A separate optimizer's rewrite: the last ``<instruction>`` block (a model may quote the old one first)."""
    if reply is None:
        return None
    found = re.findall(r"<instruction>(.*?)</instruction>", reply, re.S)
    return found[-1] if found else None


def instruction_object(reply: str | None, criteria: Sequence[str]) -> dict[str, str]:
    """A combined optimizer's rewrites: the first JSON object in the reply naming any criterion."""
    for obj in json_objects(reply or ""):
        found = {c: obj[c] for c in criteria if isinstance(obj.get(c), str)}
        if found:
            return found
    return {}


def rating(reply: str | None) -> float | None:
    """The first integer 1-10 in the diagnostics model's reply, as method.md defines the score."""
    match = re.search(r"(?<!\d)(10|[1-9])(?!\d)", reply or "")
    return float(match.group(1)) if match else None
