"""The five decomposition modes, as one table of stage strategies, and the call plan they imply.

Each of loss, gradient and optimizer works per criterion (S) or on all criteria at once (C); ST
also judges each criterion alone. A mode is the four strategies; the calls a step makes, the
plan printed before a run and the README's table are all read off them, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..spec import OPTIMIZE_MODES, Model, Spec, mode_problem
from .protocol import Calls, GradientStage, JudgeShape, LossStage, OptimizerStage, Stage
from .stages import (
    CombinedGradient,
    CombinedLoss,
    CombinedOptimizer,
    Count,
    JointJudge,
    SeparateGradient,
    SeparateJudge,
    SeparateLoss,
    SeparateOptimizer,
)

# the roles a step's calls are counted under, in the order the plan prints them
ROLES = ("judge", "loss", "gradient", "optimizer", "gate", "diagnostics")
DIAGNOSTICS = Count(("K",), times=2)  # specificity and adherence, per criterion
SIZES = "K criteria, batch B, V val samples"


def letter(stage: Stage) -> str:
    return "S" if stage.per_criterion else "C"


@dataclass(frozen=True)
class Mode:
    name: str
    judge: JudgeShape
    loss: LossStage
    gradient: GradientStage
    optimizer: OptimizerStage

    @property
    def letters(self) -> str:
        return "".join(letter(s) for s in (self.loss, self.gradient, self.optimizer))

    def calls(self, diagnostics: bool = False) -> dict[str, Calls]:
        """Each role's calls per step, in ROLES order."""
        counts = dict(zip(ROLES, (self.judge.calls, self.loss.calls, self.gradient.calls, self.optimizer.calls,
                                  self.judge.gate_calls, DIAGNOSTICS), strict=True))
        if not diagnostics:
            del counts["diagnostics"]
        return counts


MODES = {mode.name: mode for mode in (
    Mode("ST", SeparateJudge(), SeparateLoss(), SeparateGradient(), SeparateOptimizer()),
    Mode("SSS", JointJudge(), SeparateLoss(), SeparateGradient(), SeparateOptimizer()),
    Mode("SSC", JointJudge(), SeparateLoss(), SeparateGradient(), CombinedOptimizer()),
    Mode("SCC", JointJudge(), SeparateLoss(), CombinedGradient(), CombinedOptimizer()),
    Mode("CCC", JointJudge(), CombinedLoss(), CombinedGradient(), CombinedOptimizer()),
)}
if tuple(MODES) != OPTIMIZE_MODES:  # the spec validates mode names without importing the optimizer
    raise ImportError(f"the mode table {tuple(MODES)} differs from spec.OPTIMIZE_MODES {OPTIMIZE_MODES}")


def get_mode(name: str) -> Mode:
    problem = mode_problem(name.upper())
    if problem:
        raise ValueError(f"{problem}; use one of {', '.join(OPTIMIZE_MODES)}")
    return MODES[name.upper()]


def planned_calls(mode: Mode, criteria: int, batch: int, val: int, diagnostics: bool = False) -> dict[str, int]:
    """Calls per step by role: the formula printed before a run and checked by the tests."""
    sizes = {"K": criteria, "B": batch, "V": val}
    return {role: calls.count(sizes) for role, calls in mode.calls(diagnostics).items()}


def formula(mode: Mode, diagnostics: bool = False) -> dict[str, str]:
    return {role: calls.formula for role, calls in mode.calls(diagnostics).items()}


def plan_text(spec: Spec, mode: Mode, planned: Mapping[str, int], steps: int, train: int, val: int, judge: Model) -> str:
    """The calls a run will make, per role and step, from the mode's formula; dollars where litellm knows the price."""
    terms = formula(mode, spec.optimize.diagnostics)
    per_step = sum(planned.values())
    # a term that is already a number ("optimizer 1") is not written out again ("optimizer 1=1")
    parts = ", ".join(f"{role} {n}" if terms[role] == str(n) else f"{role} {terms[role]}={n}" for role, n in planned.items())
    batch = min(spec.optimize.batch_size, train)
    extra, again = 0, ""
    combination = mode.judge.combination_calls
    if combination is not None and spec.optimize.gate.rule == "per_criterion" and planned["gate"]:
        extra = combination.count({"K": len(spec.criteria), "B": batch, "V": val})
        again = f", +gate {combination.formula}={extra} when the gate keeps only some rewrites (it judges that combination)"
    text = (f"optimizing {spec.name} in mode {mode.name}: K={len(spec.criteria)} criteria, B={batch}, "
            f"V={val} val samples; per step {parts}: {per_step} calls{again}; {steps} steps: at most "
            f"{most_calls(spec, mode, planned, steps, train, val)} calls (+{planned['gate']} to judge val first, and the "
            "test split before and after)")
    price = estimate_cost(judge, (per_step + extra) * steps)
    return text + (f"; estimated cost ${price:.2f}" if price is not None else "; cost unknown for this model")


def most_calls(spec: Spec, mode: Mode, planned: Mapping[str, int], steps: int, train: int, val: int) -> int:
    """The most calls the loop's steps make by the mode's formula (the plan line's "at most")."""
    extra = 0
    combination = mode.judge.combination_calls
    if combination is not None and spec.optimize.gate.rule == "per_criterion" and planned["gate"]:
        extra = combination.count({"K": len(spec.criteria), "B": min(spec.optimize.batch_size, train), "V": val})
    return (sum(planned.values()) + extra) * steps


def estimate_cost(model: Model, calls: int, prompt_tokens: int = 800, completion_tokens: int = 200) -> float | None:
    """Rough: typical tokens per call times litellm's price list; None when litellm has no price."""
    from ..llm import import_litellm

    try:
        prompt, completion = import_litellm().cost_per_token(model=model.name, prompt_tokens=prompt_tokens,
                                                             completion_tokens=completion_tokens)
    except Exception:  # litellm raises for models it has no price for
        return None
    return calls * (prompt + completion)


def modes_table() -> str:
    """The README's table of the modes and their calls per step, rendered from MODES (a test checks that
    the README holds exactly this text)."""
    lines = [f"| mode | judge | loss | gradient | optimizer | calls per step ({SIZES}) |", "|---|---|---|---|---|---|"]
    for mode in MODES.values():
        calls = ", ".join(f"{role} {text}" for role, text in formula(mode).items())
        lines.append(f"| {mode.name} | {mode.judge.label} | {letter(mode.loss)} | {letter(mode.gradient)} | "
                     f"{letter(mode.optimizer)} | {calls} |")
    lines.append("")
    import textwrap

    lines += textwrap.wrap(f"With diagnostics on, a step adds diagnostics {DIAGNOSTICS.formula} (specificity and "
                           "adherence, per criterion). In a joint mode under the `per_criterion` rule, a step whose "
                           "gate keeps only some of the rewrites judges val once more, gate V: the merged prompt it "
                           "keeps.", 95)
    return "\n".join(lines) + "\n"
