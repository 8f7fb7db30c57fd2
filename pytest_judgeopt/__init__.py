"""pytest-judgeopt: test LLM judges against human scores, per criterion, and improve their instructions.

The names a Python user needs are importable from here (``from pytest_judgeopt import Session``),
but each is loaded on first access (PEP 562): pytest imports this package whenever the plugin is
installed, and the modules behind these names bring litellm, scipy and rich with them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ below imports on first use
    from .call_errors import CallError as CallError
    from .cases import CaseResult as CaseResult
    from .interference import InterferenceResult as InterferenceResult
    from .judge import CriterionResult as CriterionResult
    from .judge import Judgment as Judgment
    from .llm import LLM as LLM
    from .optimize import Budget as Budget
    from .optimize import OptimizationResult as OptimizationResult
    from .replies import Usage as Usage
    from .scoring import Scored as Scored
    from .session import Session as Session
    from .spec import Spec as Spec
    from .spec import SpecError as SpecError
    from .spec import load_spec as load_spec
    from .stats import Agreement as Agreement
    from .stats import PairedDifference as PairedDifference

# public name -> the module that defines it (the optimizer's names through its package's re-exports)
_LAZY = {
    "Session": ".session",
    "load_spec": ".spec",
    "Spec": ".spec",
    "SpecError": ".spec",
    "CriterionResult": ".judge",
    "Judgment": ".judge",
    "Scored": ".scoring",
    "CaseResult": ".cases",
    "Agreement": ".stats",
    "PairedDifference": ".stats",
    "InterferenceResult": ".interference",
    "OptimizationResult": ".optimize",
    "Budget": ".optimize",
    "LLM": ".llm",
    "CallError": ".call_errors",
    "Usage": ".replies",
}

__all__ = ["__version__", *_LAZY]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-judgeopt")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once: the next access finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
