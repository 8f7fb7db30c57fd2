"""Instruction interference: does merging every criterion into one prompt cost agreement?

A merged prompt (one call per sample, all criteria) is cheaper than one prompt per criterion,
but instructions that work alone can dilute each other once they share a prompt. The check is a
paired comparison (compare.py) of two configurations that differ only in the prompt shape: the
instructions in force with separate prompts (a) against the same instructions merged (b), on the
same samples, with the same scoring rule and model.

The verdicts are compare.py's: ``pass`` only when the interval shows the drop is within
``max_drop``; ``fail`` when the drop is beyond it and the interval excludes zero, or merged replies
fail beyond the allowed rate; ``inconclusive`` fails unless the spec says
``interference.inconclusive: pass``, and says how many judged samples would settle it (80% power);
``undefined`` fails; ``no baseline`` (the separate prompt's own rho is undefined) passes unless the
merged replies fail beyond the allowed rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .compare import Comparison, CriterionComparison, Rules, usage_json
from .spec import Interference

if TYPE_CHECKING:
    from .judge import CriterionResult
    from .replies import Usage


def rules_of(settings: Interference) -> Rules:
    return Rules(max_drop=settings.max_drop, confidence=settings.confidence,
                 inconclusive_passes=settings.inconclusive == "pass", change="merging", a_noun="separate prompts",
                 b_noun="merged")


def answers(usage: Usage) -> dict[str, int]:
    """A shape's answers and their tokens (its dollars are in the comparison's usage)."""
    data = usage_json(usage) or {}
    return {key: data[key] for key in ("calls", "prompt_tokens", "completion_tokens")}


@dataclass(frozen=True)
class CriterionInterference:
    """One criterion's comparison, in the words of this check: separate (a) and merged (b)."""

    compared: CriterionComparison

    def __getattr__(self, name: str) -> Any:
        aliases = {"separate": "a", "merged": "b", "failures_separate": "failures_a", "failures_merged": "failures_b",
                   "judged": "judged_a", "scoring_separate": "scoring_a", "scoring_merged": "scoring_b",
                   "mass_outside_scale_separate": "mass_outside_scale_a",
                   "mass_outside_scale_merged": "mass_outside_scale_b"}
        return getattr(self.compared, aliases.get(name, name))

    def to_json(self) -> dict[str, Any]:
        c = self.compared
        return {"criterion": c.criterion, "separate": c.a, "merged": c.b, "diff": c.diff, "low": c.low, "high": c.high,
                "n": c.n, "judged": c.judged_a, "failures_separate": c.failures_a, "failures_merged": c.failures_b,
                "replies_separate": c.replies_a, "replies_merged": c.replies_b,
                "documents": c.documents, "documents_skipped": c.documents_skipped, "verdict": c.verdict,
                "passed": c.passed, "reasons": list(c.reasons), "required_n": c.required_n,
                "scoring_separate": c.scoring_a, "scoring_merged": c.scoring_b,
                "mass_outside_scale_separate": c.mass_outside_scale_a, "mass_outside_scale_merged": c.mass_outside_scale_b}


@dataclass
class InterferenceResult:
    """The check on one spec: the comparison, per criterion, and what each prompt shape cost."""

    comparison: Comparison
    settings: Interference
    model: str
    separate: dict[str, CriterionResult] = field(repr=False)
    merged: dict[str, CriterionResult] = field(repr=False)

    @property
    def criteria(self) -> dict[str, CriterionInterference]:
        return {name: CriterionInterference(c) for name, c in self.comparison.criteria.items()}

    @property
    def records(self) -> int:
        """The samples of the split each shape judged (the pairs behind a criterion's rho may be fewer)."""
        return self.comparison.records

    @property
    def usage_separate(self) -> Usage:
        assert self.comparison.usage_a is not None
        return self.comparison.usage_a

    @property
    def usage_merged(self) -> Usage:
        assert self.comparison.usage_b is not None
        return self.comparison.usage_b

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    @property
    def failed(self) -> list[CriterionInterference]:
        return [c for c in self.criteria.values() if not c.passed]

    def to_json(self) -> dict[str, Any]:
        c = self.comparison
        return {"spec": c.spec_name, "path": c.path, "split": c.split, "model": self.model, "method": c.method,
                "level": c.level, "max_drop": self.settings.max_drop, "confidence": self.settings.confidence,
                "inconclusive": self.settings.inconclusive, "power": c.to_json()["power"], "records": c.records,
                "passed": self.passed,
                "usage": {shape: answers(usage) for shape, usage in (("separate", self.usage_separate),
                                                                     ("merged", self.usage_merged))},
                "criteria": [x.to_json() for x in self.criteria.values()]}
