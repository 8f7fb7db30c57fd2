"""A cap on what one optimization may spend: parsed from ``--judge-budget``, counted as calls are let through."""

from __future__ import annotations

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
