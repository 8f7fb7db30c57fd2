"""Textual-gradient optimization of a judge's instructions, in five decomposition modes.

The layout: ``modes`` (the five modes as a table of stage strategies, and the call plan),
``stages`` (the strategies: what each stage's calls contain and how many it makes), ``protocol``
(the interfaces: stages, the step they run in, the session a run uses), ``roles`` (prompt
templates and reply parsing), ``step`` (one step's role calls), ``gate``, ``budget``, ``loop``
(the loop, its checkpoint state, run keys), ``run`` (a whole run), ``results``, ``study``.

The names below are loaded on first use (PEP 562): ``from pytest_judgeopt.optimize import Budget``
imports the budget, not the judge, the client and the statistics.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_WHERE = {
    "Budget": "budget", "Allowance": "budget", "BudgetExceeded": "budget",
    "OptimizationBusy": "errors", "ReplayIncomplete": "errors",
    "Mode": "modes", "MODES": "modes", "get_mode": "modes", "planned_calls": "modes", "formula": "modes",
    "plan_text": "modes", "modes_table": "modes",
    "default_rule": "gate", "with_gate_rule": "gate", "gate_values": "gate", "accepted": "gate",
    "Optimization": "loop", "State": "loop", "run_key": "loop",
    "StepRecord": "results", "CriterionOutcome": "results", "OptimizationResult": "results",
    "optimize_spec": "run",
    "Study": "study", "run_study": "study",
}
__all__ = [
    "MODES",
    "Allowance",
    "Budget",
    "BudgetExceeded",
    "CriterionOutcome",
    "Mode",
    "Optimization",
    "OptimizationBusy",
    "OptimizationResult",
    "ReplayIncomplete",
    "State",
    "StepRecord",
    "Study",
    "accepted",
    "default_rule",
    "formula",
    "gate_values",
    "get_mode",
    "modes_table",
    "optimize_spec",
    "plan_text",
    "planned_calls",
    "run_key",
    "run_study",
    "with_gate_rule",
]

if TYPE_CHECKING:
    from .budget import Allowance, Budget, BudgetExceeded
    from .errors import OptimizationBusy, ReplayIncomplete
    from .gate import accepted, default_rule, gate_values, with_gate_rule
    from .loop import Optimization, State, run_key
    from .modes import (
        MODES,
        Mode,
        formula,
        get_mode,
        modes_table,
        plan_text,
        planned_calls,
    )
    from .results import CriterionOutcome, OptimizationResult, StepRecord
    from .run import optimize_spec
    from .study import Study, run_study


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
