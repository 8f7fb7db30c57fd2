"""The mode study: every mode, several seeds, diagnostics on — which decomposition works for this judge."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..spec import OPTIMIZE_MODES
from .budget import Budget
from .gate import gate_level
from .protocol import JudgingSession, L
from .results import OptimizationResult
from .run import optimize_spec


@dataclass
class Study:
    spec_name: str
    runs: int
    steps: int
    val_size: int
    test_size: int
    test_shape: str
    method: str
    level: str
    rows: list[dict[str, Any]]
    results: list[OptimizationResult]
    val: dict[str, str]  # the gate's metric and level: what the val numbers are

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec_name, "runs": self.runs, "steps": self.steps, "val_size": self.val_size,
                "test_size": self.test_size, "test_shape": self.test_shape, "method": self.method, "level": self.level,
                "val": dict(self.val), "rows": self.rows}


def spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard deviation over runs (None where there are too few runs)."""
    return (statistics.fmean(values) if values else None, statistics.stdev(values) if len(values) > 1 else None)


def run_study(session: JudgingSession[L], path: str | Path, *, modes: Sequence[str] = OPTIMIZE_MODES,
              runs: int | None = None, steps: int | None = None, budget: Budget | None = None) -> Study:
    """Every mode, ``study_runs`` seeds each, one row per mode and criterion. Writes no lock.

    A row has the val numbers (the gate's split, in the mode's prompt shape: what to choose a mode by) and
    the test numbers (held out, in the items' shape): choosing the mode whose test number is best would make
    the test split a selection split, and its numbers would flatter the mode chosen.
    """
    loaded = session.load(path)
    spec = loaded.spec
    runs = runs or spec.optimize.study_runs
    results = [optimize_spec(session, loaded, mode, seed=spec.optimize.seed + i, steps=steps, budget=budget, diagnostics=True)
               for mode in modes for i in range(runs)]
    rows = []
    for mode in modes:
        mine = [r for r in results if r.mode.name == mode]
        calls = statistics.fmean(sum(u["requests"] for u in r.usage.values()) for r in mine)
        # made and cached apart: a second study answers from the cache (and reuses finished runs), so the
        # total of requests alone would differ between a fresh and a cached run without saying why
        made = statistics.fmean(sum(u["calls"] for u in r.usage.values()) for r in mine)
        cached = statistics.fmean(sum(u["cache_hits"] for u in r.usage.values()) for r in mine)
        reused = sum(bool(r.reused) for r in mine)
        costs = [sum(u["cost_usd"] for u in r.usage.values()) for r in mine
                 if all(u["cost_usd"] is not None for u in r.usage.values())]  # a run of unknown cost leaves none
        for c in spec.criteria:
            val_mean, val_sd = spread([v for r in mine if (v := r.outcomes[c].val_after) is not None])
            test_mean, test_sd = spread([v for r in mine if (v := r.outcomes[c].test_after.value) is not None])
            spec_values = [v for r in mine if (v := r.outcomes[c].specificity) is not None]
            rows.append({
                "mode": mode, "criterion": c, "val_shape": mine[0].shapes["optimized"],
                "val_before": mine[0].outcomes[c].val_before, "val_after_mean": val_mean, "val_after_sd": val_sd,
                "test_before": mine[0].outcomes[c].test_before.value, "test_after_mean": test_mean,
                "test_after_sd": test_sd,
                "improved_steps": statistics.fmean(len(r.outcomes[c].accepted_steps) for r in mine),
                "specificity": statistics.fmean(spec_values) if spec_values else None,
                "calls": calls, "calls_made": made, "calls_cached": cached, "reused_runs": reused,
                "cost": statistics.fmean(costs) if len(costs) == len(mine) else None,
            })
    return Study(spec.name, runs, steps or spec.optimize.steps, len(session.records(loaded, "val")),
                 len(session.records(loaded, "test")), spec.inference, spec.correlation.method, spec.correlation.level,
                 rows, results, {"metric": spec.optimize.gate.metric, "level": gate_level(spec)})
