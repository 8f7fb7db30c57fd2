"""Cases 1 and 3: the SummEval example's four criteria over 480 samples, cold and then from a warm cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common import Context, Row, Stopwatch, median, run_worker
from workload import documents_by_systems, write_jsonl, write_spec

DOCUMENTS, PER_DOCUMENT = 60, 8  # 480 samples, shaped like the example (8 systems per article)
CACHED_TARGET_S = 2.0


def build(ctx: Context) -> Path:
    """The example spec over 480 samples, all in the test split (the split the items judge)."""
    folder = ctx.scratch / "judge-pass"
    folder.mkdir(parents=True, exist_ok=True)
    documents = 12 if ctx.settings.quick else DOCUMENTS
    data = write_jsonl(folder / "summeval480.jsonl", documents_by_systems(documents, PER_DOCUMENT))
    return write_spec(folder, data, ctx.server.base_url, split={"train": 0, "val": 0, "test": 1})


def cold(ctx: Context, spec: Path) -> tuple[Row, Path]:
    """Case 1: every judgment is a model call; the pass can be no faster than ceil(calls / C) rounds of latency."""
    from pytest_judgeopt.cache import Cache
    from pytest_judgeopt.llm import LLM
    from pytest_judgeopt.session import Session

    s = ctx.settings
    walls, cpus, calls, peaks = [], [], [], []
    for i in range(s.repeats):
        cache_dir = spec.parent / f"cache-{i}"
        ctx.server.reset()
        session = Session(LLM(cache=Cache(cache_dir), concurrency=s.concurrency), state_dir=spec.parent / "state")
        with Stopwatch() as watch:
            results = session.evaluate(spec)
        session.close()
        stats = ctx.server.stats()
        walls.append(watch.wall)
        cpus.append(watch.cpu)
        calls.append(stats["calls"])
        peaks.append(stats["max_in_flight"])
        ctx.log(f"  judge pass {i + 1}/{s.repeats}: {watch.wall:.2f} s, {stats['calls']} calls, CPU {watch.cpu:.2f} s")
    n_calls = int(median(calls))
    ideal = math.ceil(n_calls / s.concurrency) * s.latency
    wall = median(walls)
    cpu_per_call = median(cpus) / n_calls if n_calls else None
    samples = len(next(iter(results.values())).judgments)
    row = Row("1. judge pass", f"{samples} samples x {len(results)} criteria, separate prompts, C={s.concurrency}",
              wall, "s", ideal, "<= 1.15 x ideal", wall <= 1.15 * ideal, s.repeats, walls,
              details={"calls": calls, "max_in_flight": peaks, "cpu_s": cpus, "cpu_ms_per_call": 1000 * cpu_per_call,
                       "cpu_floor_s": median(cpus), "samples": samples, "criteria": len(results)})
    return row, spec.parent / "cache-0"


def warm(ctx: Context, spec: Path, cache_dir: Path) -> Row:
    """Case 3: the same pass in a fresh process on the warm cache: no calls, so only our own work is left."""
    s = ctx.settings
    runs = []
    for _ in range(s.repeats):
        ctx.server.reset()
        out = run_worker(["benchmarks/workers.py", "cached", str(spec), str(cache_dir)])
        out["calls"] = ctx.server.calls()
        runs.append(out)
        ctx.log(f"  cached re-run: {out['evaluate_s']:.3f} s in evaluate, {out['calls']} calls")
    walls = [r["evaluate_s"] for r in runs]
    wall = median(walls)
    mid = sorted(runs, key=lambda r: r["evaluate_s"])[len(runs) // 2]
    judgments = mid["judgments"]
    ok = wall < CACHED_TARGET_S and all(r["calls"] == 0 for r in runs)
    return Row("3. cached re-run", f"the judge pass again, warm cache ({judgments} judgments), fresh process",
               wall, "s", None, f"0 calls, < {CACHED_TARGET_S:g} s", ok, s.repeats, walls,
               details={"calls": [r["calls"] for r in runs], "phases_s": mid["phases"], "cache_hits": mid["cache_hits"],
                        "process_s": mid["process_s"], "per_judgment_us": 1e6 * wall / max(1, judgments)})


def phases_text(details: dict[str, Any]) -> str:
    phases = details["phases_s"]
    return ", ".join(f"{name} {seconds:.3f} s" for name, seconds in phases.items())
