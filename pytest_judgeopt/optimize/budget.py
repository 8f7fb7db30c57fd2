"""A cap on what one optimization may spend: parsed from ``--judge-budget``, counted as calls are let through."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..llm import Usage


@dataclass(frozen=True)
class Budget:
    calls: int | None = None
    usd: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``calls=500``, ``usd=2.5`` or both, comma-separated; a bare number is calls."""
        calls = usd = None
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.rpartition("=")
            key = key.strip().lower() or "calls"
            try:
                if key == "calls":
                    calls = int(value)
                elif key in ("usd", "dollars", "$"):
                    usd = float(value)
                else:
                    raise ValueError(key)
            except ValueError:
                raise ValueError(f"cannot read budget {part!r}: write calls=N and/or usd=X, e.g. calls=500,usd=2") from None
        if calls is None and usd is None:
            raise ValueError("an empty budget: write calls=N and/or usd=X")
        return cls(calls, usd)

    def for_prices(self, unpriced: Sequence[str], most_calls: int) -> tuple[Budget, str | None]:
        """A dollar cap counts nothing for a model litellm has no price for: then the calls are capped instead
        (by ``calls=`` if given, else at the plan's most, so retries cannot run past it), and the note says so."""
        if self.usd is None or not unpriced:
            return self, None
        calls = self.calls if self.calls is not None else most_calls
        source = "calls= of --judge-budget" if self.calls is not None else "the plan's most; set calls=N to change it"
        return Budget(calls, self.usd), (
            f"--judge-budget usd={self.usd:g}: litellm has no price for {', '.join(unpriced)}, so its calls cost no "
            f"counted dollars; the budget counts calls instead: at most {calls} ({source})")


class Allowance:
    """A budget as one optimization spends it: counted from the run's start, not the session's (a second
    spec, or a study's next run, gets its own cap), and a call counts when it is let through, not when it
    returns, so calls in flight together cannot overshoot the cap."""

    def __init__(self, budget: Budget, spent: Usage):
        self.budget = budget
        self.cost_before = spent.cost
        self.admitted = 0

    def over(self, total: Usage) -> bool:
        return ((self.budget.calls is not None and self.admitted >= self.budget.calls)
                or (self.budget.usd is not None and total.cost - self.cost_before >= self.budget.usd))

    def exceeded(self, total: Usage) -> bool:
        """The client's check before each model call (cache hits are not asked about): a call let through counts."""
        if self.over(total):
            return True
        self.admitted += 1
        return False


class BudgetExceeded(Exception):
    """The budget ran out mid-step: the step is dropped and the run keeps the best instructions so far."""
