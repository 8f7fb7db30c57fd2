"""The pytest items of a spec (criteria, ::merged, ::baseline/::compare, cases, probes, ::optimize, ::study),
their JUnit properties, and the failure text of what the user can act on.

Part of the pytest layer with ``plugin.py``: an item asks the run's judging session (``run_state``) and
turns the result into JUnit properties and a verdict.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .options import setting
from .run_state import run_key

if TYPE_CHECKING:
    from .compare import Comparison
    from .interference import InterferenceResult
    from .judge import CriterionResult


class ItemFailed(Exception):
    """A case or probe that does not hold; the message says what was expected and what the judge did."""


def known_failure(error: BaseException) -> str | None:
    """The message of a failure the user can act on without a traceback (a spec, a call, the embedded model,
    a shared cache that is required)."""
    from .call_errors import CallError
    from .local_model import LocalModelUnavailable
    from .probes import ProbeError
    from .redis_cache import SharedCacheError
    from .spec import SpecError

    if isinstance(error, (SpecError, CallError, ProbeError, SharedCacheError)):
        return str(error)
    if isinstance(error, LocalModelUnavailable):
        return f"cannot run the embedded judge model: {error}"
    return None


class SpecPartItem(pytest.Item):
    """An item that judges one named part of a spec (a case, a probe) through the spec file's session."""

    def __init__(self, *, line: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.line = line

    @property
    def judging(self) -> Any:
        return self.parent.judging  # type: ignore[union-attr]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ItemFailed):
            return str(excinfo.value)
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::{self.name}"


class CaseItem(SpecPartItem):
    """One case of a spec: the judge must score its inputs within the expectation, per criterion."""

    def __init__(self, *, case: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        from .cases import describe_failure

        # the spec's cases selected in this run (after -k and node ids) are judged together, in one pass
        together = [i.case for i in self.session.items if isinstance(i, CaseItem) and i.path == self.path]
        result = self.judging.case(self.path, self.case, together=together)
        self.user_properties.extend(result.properties().items())
        if not result.passed:
            raise ItemFailed(describe_failure(result))


class ProbeItem(SpecPartItem):
    """One behavioural probe of a spec: a paired statistic on the test split, and its gate."""

    def __init__(self, *, probe: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.probe = probe

    def runtest(self) -> None:
        from .probes import describe_failure

        result = self.judging.probe(self.path, self.probe)
        self.user_properties.extend(result.properties().items())
        if not result.passed:
            raise ItemFailed(describe_failure(result))


class JudgeFailed(Exception):
    """The judge missed a threshold; carries what was measured."""

    def __init__(self, result: CriterionResult):
        super().__init__(result.criterion.name)
        self.result = result


class CriterionItem(pytest.Item):
    """One criterion of one spec: passes when the judge agrees with the humans well enough."""

    def __init__(self, *, criterion: str, line: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.criterion = criterion
        self.line = line

    def runtest(self) -> None:
        result = self.config.stash[run_key].session.evaluate(self.path, self.criterion, together=self.together())
        for key, value in junit_properties(result).items():
            self.user_properties.append((key, value))
        if not result.passed:
            raise JudgeFailed(result)

    def together(self) -> list[str]:
        """The criteria this run judges of the spec, in one pass (after -k and node ids): those of its selected
        criterion items, or all of them when an item that needs every criterion's judgments is selected too
        (::merged, ::baseline, ::compare), so those judgments are the items' own."""
        mine = [i for i in self.session.items if i.path == self.path]
        if any(isinstance(i, (MergedItem, ComparisonItem)) for i in mine):
            return []  # every criterion
        return [i.criterion for i in mine if isinstance(i, CriterionItem)]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, JudgeFailed):
            from .text import criterion_failure

            return criterion_failure(excinfo.value.result)
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::{self.criterion}"


class InterferenceFailed(Exception):
    """Merging the instructions into one prompt costs some criterion agreement; carries the comparison."""

    def __init__(self, result: InterferenceResult):
        super().__init__(", ".join(c.criterion for c in result.failed))
        self.result = result


class MergedItem(pytest.Item):
    """The no-interference check of a spec: the merged prompt must not cost any criterion agreement."""

    def __init__(self, *, line: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.line = line

    def runtest(self) -> None:
        result = self.config.stash[run_key].session.interference(self.path)
        for key, value in interference_properties(result).items():
            self.user_properties.append((key, value))
        if not result.passed:
            raise InterferenceFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, InterferenceFailed):
            from .text import interference_failure

            return interference_failure(excinfo.value.result.to_json())
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::merged"


class ComparisonFailed(Exception):
    """Judge b is worse than judge a on some criterion, or the two cannot be compared; carries the comparison."""

    def __init__(self, comparison: Comparison):
        super().__init__(comparison.kind)
        self.comparison = comparison


class ComparisonItem(pytest.Item):
    """``::baseline`` (this run against an earlier run's report) or ``::compare`` (the configured model against
    --judge-compare-model): fails when a criterion drops beyond ``baseline.max_drop`` and the interval excludes zero."""

    def __init__(self, *, line: int, baseline: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.line = line
        self.baseline = baseline

    def runtest(self) -> None:
        run = self.config.stash[run_key]
        if self.name == "baseline":
            comparison = run.session.against_baseline(self.path, self.baseline, source=str(run.baseline.folder))
        else:
            comparison = run.session.compare(self.path, model=setting(self.config, "judge_compare_model"))
        for key, value in comparison_properties(comparison).items():
            self.user_properties.append((key, value))
        if not comparison.passed:
            raise ComparisonFailed(comparison)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ComparisonFailed):
            from .text import comparison_failure

            return comparison_failure(excinfo.value.comparison.to_json())
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::{self.name}"


def interference_properties(result: InterferenceResult) -> dict[str, Any]:
    """The merged item's JUnit properties: per criterion rho separate and merged, their difference with its
    interval, the paired n, the merged prompt's failed judgments and the verdict; the threshold; the calls."""
    out: dict[str, Any] = {"interference_max_drop": result.settings.max_drop}
    for name, c in result.criteria.items():
        out.update({f"interference_{name}_separate": c.separate, f"interference_{name}_merged": c.merged,
                    f"interference_{name}_diff": c.diff, f"interference_{name}_low": c.low,
                    f"interference_{name}_high": c.high, f"interference_{name}_n": c.n,
                    f"interference_{name}_parse_failures": sum(c.failures_merged.values()),
                    f"interference_{name}_verdict": c.verdict})
    for shape, usage in (("separate", result.usage_separate), ("merged", result.usage_merged)):
        out.update({f"interference_calls_{shape}": usage.answered, f"interference_prompt_tokens_{shape}": usage.prompt_tokens})
    return out


def comparison_properties(comparison: Comparison) -> dict[str, Any]:
    """A ::baseline or ::compare item's JUnit properties (prefix: its kind): per criterion rho of a and b, their
    difference with its interval, the paired n, the verdict; the threshold; what each side cost."""
    data = comparison.to_json()
    kind = data["kind"]
    out: dict[str, Any] = {f"{kind}_max_drop": data["max_drop"], f"{kind}_a": data["a"]["label"],
                           f"{kind}_b": data["b"]["label"], f"{kind}_model_a": data["a"]["model"],
                           f"{kind}_model_b": data["b"]["model"], f"{kind}_differs": "; ".join(data["differs"]),
                           f"{kind}_unpaired_a": len(data["unpaired"].get("a", [])),
                           f"{kind}_unpaired_b": len(data["unpaired"].get("b", []))}
    for c in data["criteria"]:
        name = c["criterion"]
        out.update({f"{kind}_{name}_{key}": c[key] for key in ("a", "b", "diff", "low", "high", "n", "verdict")})
    for side in ("a", "b"):
        usage = data["usage"][side]
        if usage is not None:
            out.update({f"{kind}_calls_{side}": usage["calls"], f"{kind}_prompt_tokens_{side}": usage["prompt_tokens"],
                        f"{kind}_completion_tokens_{side}": usage["completion_tokens"],
                        f"{kind}_cost_usd_{side}": usage["cost_usd"]})
    return out


def optimize_properties(result: Any) -> dict[str, Any]:
    """The optimize item's JUnit properties: per criterion val and test rho before and after (with the
    test intervals and their paired difference) and the accepted steps; then the run's steps and cost."""
    out: dict[str, Any] = {"optimize_mode": result.mode.name, "optimize_steps_run": result.steps_run}
    for name, o in result.outcomes.items():
        b, a, d = o.test_before, o.test_after, o.test_diff
        out.update({f"optimize_{name}_val_before": o.val_before, f"optimize_{name}_val_after": o.val_after,
                    f"optimize_{name}_test_before": b.value, f"optimize_{name}_test_before_low": b.low,
                    f"optimize_{name}_test_before_high": b.high, f"optimize_{name}_test_after": a.value,
                    f"optimize_{name}_test_after_low": a.low, f"optimize_{name}_test_after_high": a.high,
                    f"optimize_{name}_test_n": a.n, f"optimize_{name}_test_diff": d.diff,
                    f"optimize_{name}_test_diff_low": d.low, f"optimize_{name}_test_diff_high": d.high,
                    f"optimize_{name}_accepted_steps": ",".join(map(str, o.accepted_steps))})
    costs = [u["cost_usd"] for u in result.usage.values()]
    out.update({"optimize_calls": sum(u["requests"] for u in result.usage.values()),
                "optimize_calls_made": sum(u["calls"] for u in result.usage.values()),
                "optimize_prompt_tokens": sum(u["prompt_tokens"] for u in result.usage.values()),
                "optimize_completion_tokens": sum(u["completion_tokens"] for u in result.usage.values()),
                "optimize_cost_usd": None if any(c is None for c in costs) else round(sum(costs), 6),
                "optimize_wall_seconds": round(result.wall_seconds or 0.0, 3)})
    return out


def junit_properties(result: CriterionResult) -> dict[str, Any]:
    a = result.agreement
    return {"judge_metric": a.method, "judge_level": a.level, "judge_rho": a.value, "judge_ci_low": a.low,
            "judge_ci_high": a.high, "judge_n": result.n, "judge_pairs": a.n, "judge_documents": result.documents,
            "judge_min_rho": result.criterion.min_rho,
            "judge_parse_failures": result.failed_count, "judge_shape": result.shape}


class OptimizeItem(pytest.Item):
    """``--judge-optimize``: improve the instructions, write the lock file; the criterion items then test it."""

    def __init__(self, *, line: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.line = line

    def runtest(self) -> None:
        config = self.config
        session = config.stash[run_key].session
        started = time.monotonic()
        result = session.optimize(self.path, setting(config, "judge_mode"), steps=setting(config, "judge_steps"),
                                  budget=setting(config, "judge_budget"), write=True)
        result.wall_seconds = time.monotonic() - started
        for key, value in optimize_properties(result).items():
            self.user_properties.append((key, value))
        problems = diagnostics_problems(result)
        if result.lock_refused:
            problems.insert(0, f"{result.spec.name}: {result.lock_refused}")
        if problems:
            raise OptimizationFailed("\n".join(problems))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from .optimize.errors import OptimizationBusy, ReplayIncomplete
        from .spec import SpecError

        if isinstance(excinfo.value, (OptimizationFailed, OptimizationBusy, ReplayIncomplete, SpecError, ValueError)):
            return str(excinfo.value)
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::{self.name}"


class StudyItem(OptimizeItem):
    """``--judge-optimize=study``: every mode, several seeds, one table; writes no lock file."""

    def runtest(self) -> None:
        from .optimize.study import run_study

        config = self.config
        session = config.stash[run_key].session
        config.stash[run_key].studies.append(run_study(session, self.path, steps=setting(config, "judge_steps"),
                                                       budget=setting(config, "judge_budget")))


JUDGE_ITEMS = (CriterionItem, MergedItem, ComparisonItem, CaseItem, OptimizeItem, StudyItem)


class OptimizationFailed(Exception):
    pass


def diagnostics_problems(result: Any) -> list[str]:
    """The spec's optional floors on gradient specificity and feedback adherence."""
    settings = result.spec.optimize
    problems = []
    for name, outcome in result.outcomes.items():
        for label, value, floor in (("gradient specificity", outcome.specificity, settings.min_specificity),
                                    ("feedback adherence", outcome.adherence, settings.min_adherence)):
            if floor is not None and (value is None or value < floor):
                shown = "unmeasured" if value is None else f"{value:.1f}"
                problems.append(f"{result.spec.name}::{name}: {label} {shown} is below the spec's minimum {floor:g}")
    return problems
