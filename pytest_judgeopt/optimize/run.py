"""A whole optimization run: plan, the loop under a file lock (resumable), and the test evaluation.

It returns the result and writes nothing but its checkpoint: the lock file beside the spec is the
caller's (``Session.optimize``). The session is reached only through ``JudgingSession``.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ..compare import Comparison, Configuration, Rules, Side, compare, scoring_of
from ..replies import Usage
from ..spec import Spec, SpecError
from ..splits import repeated_sources
from .budget import Allowance, Budget
from .errors import OptimizationBusy, ReplayIncomplete
from .gate import gate_level, with_gate_rule
from .loop import Optimization, run_key
from .modes import estimate_cost, get_mode, most_calls, plan_text
from .protocol import JudgingSession, L
from .results import CriterionOutcome, OptimizationResult, StepRecord
from .roles import MODEL_ROLES

if TYPE_CHECKING:
    from ..judge import CriterionResult


def optimize_spec(session: JudgingSession[L], loaded: L, mode_name: str | None = None, *, seed: int | None = None,
                  steps: int | None = None, budget: Budget | None = None, diagnostics: bool = False) -> OptimizationResult:
    """Optimize on train, gate on val, then compare initial and final instructions on test.

    The loop judges in the mode's shape (SSS..CCC: one merged prompt); the test split is judged in the shape
    the items test (``spec.inference``), so the lock's test numbers are those of the prompts that will be gated.
    ``diagnostics`` turns the diagnostics on whatever the spec says (the mode study measures them).
    """
    mode = get_mode(mode_name or loaded.spec.optimize.mode)
    spec: Spec = with_gate_rule(loaded.spec, mode)
    if diagnostics:
        spec = replace(spec, optimize=replace(spec.optimize, diagnostics=True))
    seed = spec.optimize.seed if seed is None else seed
    models = {role: session.model_for(spec, role) for role in MODEL_ROLES}
    refusal = "--judge-optimize does not run on splits that share sources: "  # a val gate that is not held out
    if leak := repeated_sources(spec, loaded.dataset.records, refusing=refusal):
        raise SpecError([leak])
    train, val = session.records(loaded, "train"), session.records(loaded, "val")
    if not train or not val:
        raise ValueError(f"{spec.path}: optimization needs train and val samples (train {len(train)}, val {len(val)}); "
                         "give split.train and split.val fractions above 0")
    key = run_key(spec, loaded.dataset.digest, mode, models, session.sample, seed, steps, loaded.cases)
    checkpoint = session.state_dir / "runs" / f"{spec.path.name}-{mode.name}-{key[:16]}.json"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    progress = session.progress or (lambda text: None)
    usage_before = copy.deepcopy(session.llm.usage)
    from filelock import FileLock, Timeout  # the OS's file lock on every platform (fcntl is POSIX only)

    guard_path = checkpoint.with_suffix(".lock")
    guard = FileLock(guard_path, timeout=0)
    try:
        guard.acquire()
    except Timeout:
        raise OptimizationBusy(f"another process is optimizing {spec.path.name} in mode {mode.name} with these "
                               "settings; wait for it to finish (its checkpoint is shared, so nothing is lost)") from None
    try:
        run = Optimization(session.llm, spec, mode, models, train=train, val=val, checkpoint=checkpoint, key=key,
                           seed=seed, steps=steps, progress=progress, cases=loaded.cases)
        planned = run.planned()
        progress(plan_text(spec, mode, planned, run.steps, len(train), len(val), models["judge"]))
        allowance = None
        if budget is not None:
            unpriced = sorted({m.describe() for m in models.values() if estimate_cost(m, 1) is None})
            budget, note = budget.for_prices(unpriced, most_calls(spec, mode, planned, run.steps, len(train), len(val)))
            if note:  # said before the run, and kept for the summary
                progress(note)
                session.notes.append(note)
            allowance = run.budget = Allowance(budget, session.llm.total())
        session.llm.budget = allowance
        try:
            state, resumed_from = run.run()
        finally:
            session.llm.budget = None
    finally:
        # the guard goes while it is still held, so no process can take the old file's lock after this one let go;
        # one that opened it a moment before takes a lock nobody else can see, and ends as this run did (the
        # checkpoint is whole either way). Windows refuses to remove an open file: filelock removes it there.
        with contextlib.suppress(OSError):
            guard_path.unlink()
        guard.release()
    initial, final = state.initial, state.instructions
    names = list(spec.criteria)
    shape = spec.inference  # the items' shape: the numbers the lock reports are for the prompt they test
    sources = dict.fromkeys(names, "optimization")
    before = session.evaluate_instructions(loaded, initial, names, split="test", shape=shape, sources=sources)
    after = session.evaluate_instructions(loaded, final, names, split="test", shape=shape, sources=sources)
    missing = sum(j.failure == "call_replay_miss" for r in (*before.values(), *after.values()) for j in r.judgments)
    if missing:  # no lock from a test evaluation that did not happen
        raise ReplayIncomplete(spec, f"{missing} judgments of the test split")
    comparison = test_comparison(session, loaded, spec, before, after, initial, final, models["judge"].describe(),
                                 shape=shape, seed=seed)
    outcomes = {}
    val_before, val_after = state.val_outcome()
    for c in names:
        outcomes[c] = CriterionOutcome(c, initial[c], final[c], [h.step for h in state.history if c in h.accepted],
                                       val_before.get(c), val_after.get(c),
                                       before[c].agreement, after[c].agreement, comparison.criteria[c].measured,
                                       mean_diagnostic(state.history, c, "specificity"),
                                       mean_diagnostic(state.history, c, "adherence"))
    spent = {role: u.minus(usage_before.get(role, Usage())) for role, u in session.llm.usage.items()}
    usage = {role: u.to_json() for role, u in sorted(spent.items()) if u.requests}
    return OptimizationResult(spec, mode, seed, len(state.history), state.stopped, resumed_from, outcomes,
                              state.history, planned, usage, {r: m.describe() for r, m in models.items()},
                              {"train": len(train), "val": len(val), "test": len(session.records(loaded, "test"))},
                              reused=resumed_from == len(state.history) and resumed_from > 0, comparison=comparison,
                              shapes={"optimized": mode.judge.shape, "test": shape},
                              val_measure={"metric": spec.optimize.gate.metric, "level": gate_level(spec)})


def test_comparison(session: JudgingSession[L], loaded: L, spec: Spec, before: Mapping[str, CriterionResult],
                    after: Mapping[str, CriterionResult], initial: Mapping[str, str], final: Mapping[str, str],
                    model: str, *, shape: str, seed: int) -> Comparison:
    """Initial (a) against final (b) instructions on the untouched test split: the paired comparison of
    compare.py, at the spec's confidence, with the optimizer's own seed for the interval."""
    configs = {label: Configuration(label=label, instructions=dict(instructions), shape=shape, model=model,
                                    scoring=scoring_of(spec, model), data_hash=loaded.dataset.digest)
               for label, instructions in (("initial", initial), ("final", final))}
    sides = [Side(configs[label], {c: r.judgments for c, r in results.items()})
             for label, results in (("initial", before), ("final", after))]
    rules = Rules(max_drop=0.0, confidence=spec.correlation.confidence, inconclusive_passes=True,
                  change="the new instructions", a_noun="the initial instructions'", b_noun="the final instructions'")
    return compare(spec, sides[0], sides[1], kind="optimize", split="test", rules=rules,
                   records=len(session.records(loaded, "test")), seed=seed)


def mean_diagnostic(history: Sequence[StepRecord], criterion: str, key: str) -> float | None:
    """A criterion's mean specificity or adherence over the steps that measured it."""
    values = [h.diagnostics.get(criterion, {}).get(key) for h in history]
    measured = [v for v in values if v is not None]
    return statistics.fmean(measured) if measured else None
