"""What a run measured, as text for the terminal and JSON for machines."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .llm import LLM


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_lines(evaluations: list[dict[str, Any]], llm: LLM, *, verbose: bool = True,
                  interference: Sequence[dict[str, Any]] = ()) -> Iterator[str]:
    """One table per evaluated spec: per criterion rho, interval, threshold, n, failures, verdict;
    then one per interference check: per criterion rho separate and merged, their difference, verdict."""
    for ev in evaluations:
        results = ev["results"]
        passed = sum(r["passed"] for r in results)
        yield (f"{ev['spec']} ({ev['split']} split, {ev['records']} samples, {ev['shape']} prompts, {ev['model']}): "
               f"{passed}/{len(results)} criteria pass")
        if not verbose:
            continue
        header = f"  {'criterion':<16} {'metric':>8} {'rho':>7} {'interval':>17} {'min':>6} {'n':>5} {'failed':>7}  verdict"
        yield header
        for r in results:
            interval = f"[{fmt(r['low'])}, {fmt(r['high'])}]" if r["low"] is not None else "-"
            yield (f"  {r['criterion']:<16} {r['method']:>8} {fmt(r['value']):>7} {interval:>17} "
                   f"{fmt(r['min_rho'], 2):>6} {r['n']:>5} {sum(r['parse_failures'].values()):>7}  "
                   f"{'pass' if r['passed'] else 'FAIL'}{'' if r['undefined_reason'] is None else ': ' + r['undefined_reason']}")
    for check in interference:
        yield from interference_lines(check, verbose=verbose)
    total = llm.total()
    yield (f"model calls: {total.calls} made, {total.cache_hits} from cache, {total.retries} retries, "
           f"{sum(total.errors.values())} failed; tokens {total.prompt_tokens} in, {total.completion_tokens} out"
           + ("" if total.cost_unknown and not total.cost else f"; cost ${total.cost:.4f}"))


def interference_lines(check: dict[str, Any], *, verbose: bool = True) -> Iterator[str]:
    """The merged-vs-separate table of one spec, with what merging would save and why a criterion loses."""
    from .interference import detail_lines, heading, table_lines

    yield heading(check)
    if verbose:
        yield from table_lines(check)
        yield from detail_lines(check)


def interval_text(low: float | None, high: float | None) -> str:
    return f"[{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else "-"


def optimization_lines(result: Any, verbose: bool = True) -> Iterator[str]:
    """Before/after on the untouched test split, the instruction diffs, and what the run cost."""
    from .lockfile import instruction_diff

    stopped = "; stopped by the budget, keeping the best instructions so far" if result.stopped == "budget" else ""
    resumed = f"; resumed after step {result.resumed_from}" if result.resumed_from and not result.reused else ""
    reused = "; this run had finished before: its result is reused, not repeated" if result.reused else ""
    where = f"; wrote {result.lock_path}" if getattr(result, "lock_path", None) else ""
    yield (f"{result.spec.name}: mode {result.mode.name}, {result.steps_run} steps, seed {result.seed} "
           f"(train {result.split_sizes['train']}, val {result.split_sizes['val']}, test {result.split_sizes['test']})"
           f"{stopped}{resumed}{reused}{where}")
    if not verbose:
        return
    yield (f"  {'criterion':<14} {'val before':>10} {'val after':>10} {'test before':>27} {'test after':>27} "
           f"{'difference':>27}  accepted steps")
    for name, o in result.outcomes.items():
        b, a, d = o.test_before, o.test_after, o.test_diff
        yield (f"  {name:<14} {fmt(o.val_before):>10} {fmt(o.val_after):>10} "
               f"{fmt(b.value) + ' ' + interval_text(b.low, b.high):>27} {fmt(a.value) + ' ' + interval_text(a.low, a.high):>27} "
               f"{fmt(d.diff) + ' ' + interval_text(d.low, d.high):>27}  {', '.join(map(str, o.accepted_steps)) or 'none'}")
    for name, o in result.outcomes.items():
        if o.final != o.initial:
            yield from ("  " + line for line in instruction_diff(name, o.initial, o.final).splitlines())
        else:
            reasons = sorted({h.rejected_reasons.get(name) for h in result.history if h.rejected_reasons.get(name)})
            yield f"  {name}: unchanged ({'; '.join(reasons) or 'no step proposed a change'})"
    calls = sum(u["requests"] for u in result.usage.values())
    made = sum(u["calls"] for u in result.usage.values())
    costs = [u["cost_usd"] for u in result.usage.values()]
    cost = "unknown" if any(c is None for c in costs) else f"${sum(costs):.4f}"
    per_role = ", ".join(f"{role} {u['requests']}" for role, u in result.usage.items())
    yield f"  calls: {calls} ({made} made, {calls - made} from cache or shared; {per_role}); cost {cost}"
    yield f"  planned per step: {', '.join(f'{k} {v}' for k, v in result.planned.items())}"


def study_lines(study: Any) -> Iterator[str]:
    """The paper's table: per mode and criterion, test rho before and after over runs, and what it cost."""
    yield (f"{study.spec_name}: {study.runs} runs per mode, {study.steps} steps each, test split of {study.test_size} "
           f"samples ({study.level} {study.method})")
    yield (f"  {'mode':<5} {'criterion':<14} {'before':>7} {'after (mean ± sd)':>18} {'improved steps':>15} "
           f"{'specificity':>11} {'calls/run':>10} {'cost/run':>9}")
    for row in study.rows:
        sd = f" ± {row['after_sd']:.3f}" if row["after_sd"] is not None else ""
        yield (f"  {row['mode']:<5} {row['criterion']:<14} {fmt(row['before']):>7} {fmt(row['after_mean']) + sd:>18} "
               f"{row['improved_steps']:>15.1f} {fmt(row['specificity'], 1):>11} {row['calls']:>10.0f} "
               f"{'-' if row['cost'] is None else '$' + format(row['cost'], '.4f'):>9}")
