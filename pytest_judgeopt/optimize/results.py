"""What an optimization returns: each step's record, each criterion's outcome, the run as a whole.

Plain data with a JSON form: the report, results.json and the lock file (written by the caller,
``Session.optimize``) are all made from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..spec import Spec
from .modes import Mode

if TYPE_CHECKING:  # stats imports scipy: only once something is measured
    from ..compare import Comparison
    from ..stats import Agreement, PairedDifference


@dataclass
class StepRecord:
    step: int
    batch: list[str]
    proposals: dict[str, str | None]
    rejected_reasons: dict[str, str]
    val_before: dict[str, float | None]
    val_after: dict[str, float | None]
    accepted: list[str]
    calls: dict[str, int]
    diagnostics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    # val values of the combination the gate checked for keeping (None: the rule kept nothing of the candidate);
    # in force after the step when ``accepted`` is not empty. ``judged_again``: it was not the candidate, so the
    # gate judged it (a merged prompt holding only some of the rewrites)
    val_kept: dict[str, float | None] | None = None
    judged_again: bool = False
    # failed and judged val judgments per criterion: "before", "after" (the candidate), "kept" (the combination)
    val_failed: dict[str, dict[str, list[int]]] = field(default_factory=dict)


@dataclass
class CriterionOutcome:
    name: str
    initial: str
    final: str
    accepted_steps: list[int]
    val_before: float | None
    val_after: float | None
    test_before: Agreement
    test_after: Agreement
    test_diff: PairedDifference
    specificity: float | None
    adherence: float | None

    def to_json(self) -> dict[str, Any]:
        def agreement(a: Agreement) -> dict[str, Any]:
            return {"value": a.value, "low": a.low, "high": a.high, "n": a.n, "reason": a.reason}

        d = self.test_diff
        return {"initial": self.initial, "final": self.final, "accepted_steps": self.accepted_steps,
                "val_before": self.val_before, "val_after": self.val_after,
                "test_before": agreement(self.test_before), "test_after": agreement(self.test_after),
                "test_diff": {"value": d.diff, "low": d.low, "high": d.high, "n": d.n, "reason": d.reason},
                "specificity": self.specificity, "adherence": self.adherence}


@dataclass
class OptimizationResult:
    spec: Spec
    mode: Mode
    seed: int
    steps_run: int
    stopped: str | None
    resumed_from: int
    outcomes: dict[str, CriterionOutcome]
    history: list[StepRecord]
    planned: dict[str, int]
    usage: dict[str, dict[str, Any]]
    models: dict[str, str]
    split_sizes: dict[str, int]
    reused: bool = False
    # the prompt shape of the loop's judgments (train, val) and of the test numbers (the items' shape)
    shapes: dict[str, str] = field(default_factory=lambda: {"optimized": "separate", "test": "separate"})
    # what the val numbers are: the gate's metric at the items' level (pooled, or the mean of per-document values
    # on the documents both compared instructions have one in)
    val_measure: dict[str, str] = field(default_factory=lambda: {"metric": "spearman", "level": "pooled"})
    comparison: Comparison | None = None  # initial against final instructions on test (compare.py)
    lock_path: Path | None = None  # set by the caller that writes the lock file
    lock_note: str | None = None
    lock_refused: str | None = None  # why no lock was written, when the caller refused to write one
    wall_seconds: float | None = None  # set by the caller that timed the run (the optimize item)

    @property
    def instructions(self) -> dict[str, str]:
        return {c: o.final for c, o in self.outcomes.items()}

    @property
    def harmed(self) -> dict[str, str]:
        """Criteria whose test agreement fell significantly (the paired interval lies below zero), with why:
        such instructions are not locked, whatever val said."""
        out = {}
        for c, o in self.outcomes.items():
            d = o.test_diff
            if d.diff is not None and d.high is not None and d.high < 0:
                out[c] = (f"{c}: the test agreement fell significantly with the new instructions "
                          f"({o.test_before.value:.3f} -> {o.test_after.value:.3f}, difference {d.diff:+.3f} "
                          f"[{d.low:+.3f}, {d.high:+.3f}])")
        return out

    @property
    def shape_note(self) -> str | None:
        """What to know when the loop optimized a prompt shape the items do not test."""
        optimized, tested = self.shapes["optimized"], self.shapes["test"]
        if optimized == tested:
            return None
        words = {"merged": "one merged prompt", "separate": "separate prompts"}
        return (f"{self.spec.name}: mode {self.mode.name} optimized and gated the instructions with {words[optimized]}, "
                f"but the items test them with {words[tested]} (inference: {self.spec.inference}); the val numbers are "
                f"for {optimized} prompts, the test numbers for {tested} ones. To optimize the shape the items test, set "
                f"inference: {optimized}" + (" or use --judge-mode ST" if tested == "separate" else ""))

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec.name, "mode": self.mode.name, "seed": self.seed, "steps_run": self.steps_run,
                "stopped": self.stopped, "resumed_from": self.resumed_from, "reused": self.reused,
                "planned_calls_per_step": self.planned, "usage": self.usage, "models": self.models,
                "split_sizes": self.split_sizes, "shapes": self.shapes, "val": dict(self.val_measure),
                "lock_refused": self.lock_refused,
                "criteria": {c: o.to_json() for c, o in self.outcomes.items()},
                "history": [asdict(h) for h in self.history],
                "comparison": None if self.comparison is None else self.comparison.to_json()}
