"""What a run measured, as text for the terminal and JSON for machines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .llm import LLM


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_lines(evaluations: list[dict[str, Any]], llm: LLM, *, verbose: bool = True) -> Iterator[str]:
    """One table per evaluated spec: per criterion rho, interval, threshold, n, failures, verdict."""
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
    total = llm.total()
    yield (f"model calls: {total.calls} made, {total.cache_hits} from cache, {total.retries} retries, "
           f"{sum(total.errors.values())} failed; tokens {total.prompt_tokens} in, {total.completion_tokens} out"
           + ("" if total.cost_unknown and not total.cost else f"; cost ${total.cost:.4f}"))
