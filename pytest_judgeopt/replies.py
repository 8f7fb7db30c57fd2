"""What a model call returns (a ``Reply`` of ``Choice``s, as the cache stores it) and what calls cost
(``Usage``: requests, answers from a model or the cache, retries, failures, tokens, dollars).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Choice:
    text: str | None
    finish_reason: str | None = None
    logprobs: list[list[tuple[str, float]]] | None = None


@dataclass(frozen=True)
class Reply:
    choices: tuple[Choice, ...]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"choices": [{"text": c.text, "finish_reason": c.finish_reason, "logprobs": c.logprobs} for c in self.choices],
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "cost": self.cost}

    @classmethod
    def from_json(cls, data: dict[str, Any], cached: bool) -> Reply:
        choices = tuple(Choice(c["text"], c.get("finish_reason"),
                               [[(t, lp) for t, lp in pos] for pos in c["logprobs"]] if c.get("logprobs") else None)
                        for c in data["choices"])
        return cls(choices, data.get("prompt_tokens", 0), data.get("completion_tokens", 0), data.get("cost"), cached)


@dataclass
class Usage:
    """What model requests cost: how many were asked, answered by a model or the cache, retried, failed.

    The client keeps one per role, whose tokens and dollars count calls that reached a model; a
    judging keeps one for its own judgments (judge.Judged), whose tokens count every answer.
    """

    requests: int = 0  # every complete() asked for: calls + cache hits + shared + failed
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cost_unknown: int = 0

    def add(self, other: Usage) -> None:
        for name in ("requests", "calls", "cache_hits", "retries", "prompt_tokens", "completion_tokens", "cost", "cost_unknown"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.update(other.errors)

    def minus(self, earlier: Usage) -> Usage:
        """What was spent since ``earlier``, a copy of this same counter taken before."""
        out = Usage(errors=self.errors - earlier.errors)
        for name in ("requests", "calls", "cache_hits", "retries", "prompt_tokens", "completion_tokens", "cost", "cost_unknown"):
            setattr(out, name, getattr(self, name) - getattr(earlier, name))
        return out

    def state(self) -> dict[str, Any]:
        """Every counter as plain data (unlike to_json, nothing rounded or summarised), so counters of
        several processes (pytest-xdist workers) add up to what one process would have counted."""
        return {**{name: getattr(self, name) for name in ("requests", "calls", "cache_hits", "retries", "prompt_tokens",
                                                          "completion_tokens", "cost", "cost_unknown")},
                "errors": dict(self.errors)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Usage:
        return cls(**{**state, "errors": Counter(state.get("errors", {}))})

    @property
    def answered(self) -> int:
        """Requests that got an answer: from a model or from the cache (the client counts an answer shared
        with an identical request in flight as neither; a judging counts it as a call)."""
        return self.calls + self.cache_hits

    def answers_json(self) -> dict[str, int]:
        """Answers and their tokens: how results.json shows what an evaluation's judgments cost."""
        return {"calls": self.answered, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "calls": self.calls, "cache_hits": self.cache_hits, "retries": self.retries,
                "errors": dict(sorted(self.errors.items())), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cost_usd": None if self.cost_unknown and not self.cost else round(self.cost, 6)}


def token_logprobs(choice: Any) -> list[list[tuple[str, float]]] | None:
    """Per generated token, the top alternatives (the chosen token first), as plain tuples."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    out = []
    for position in content:
        chosen = (position.token, position.logprob)
        alternatives = [(alt.token, alt.logprob) for alt in (position.top_logprobs or []) if alt.token != position.token]
        out.append([chosen, *alternatives])
    return out
