"""Case 6: load, split and score 10k, 30k and 100k samples from a warm cache; memory and time must grow linearly.

The cache is warmed once, with the largest size (whose records begin with every smaller size's),
through the project's own client with the model call answered in-process: a server that answers
instantly, without the HTTP and litellm's few milliseconds per call, which would make 100,000
calls take ten minutes. Each size is then judged from the cache in a fresh interpreter, whose
peak resident memory is the figure.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import Context, Row, run_worker
from responder import answer
from workload import synthetic_records, write_jsonl, write_spec

SIZES = (10_000, 30_000, 100_000)
QUICK_SIZES = (1_000, 3_000, 10_000)
CRITERION = "coherence"


def instant_llm(cache_dir: Path, concurrency: int) -> Any:
    """The project's client, its model call replaced by the scripted answer: everything else (cache keys, writes,
    accounting) is the real path."""
    from pytest_judgeopt.cache import Cache
    from pytest_judgeopt.llm import LLM
    from pytest_judgeopt.replies import Choice, Reply

    class InstantLLM(LLM):
        async def _request(self, model: Any, messages: list[dict[str, str]], params: dict[str, Any], n: int,
                           logprobs: int, seed: int | None) -> Reply:
            return Reply((Choice(answer({"messages": messages}), "stop"),), 0, 0, None)

    return InstantLLM(cache=Cache(cache_dir), concurrency=concurrency)


def prepare(ctx: Context, n: int) -> Path:
    """The synthetic data and spec for ``n`` samples; the data of a smaller size is the start of a larger one's."""
    folder = ctx.scratch / "scale" / str(n)
    folder.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(folder / "data.jsonl", synthetic_records(n))
    return write_spec(folder, data, ctx.server.base_url, split={"train": 0, "val": 0, "test": 1}, criteria=[CRITERION])


def warm(spec: Path, cache_dir: Path) -> float:
    """Judge ``spec`` once through the instant client, filling the cache; returns the seconds it took."""
    from pytest_judgeopt.session import Session

    t0 = time.perf_counter()
    session = Session(instant_llm(cache_dir, 256), state_dir=cache_dir / "state")
    session.evaluate(spec)
    session.close()
    return time.perf_counter() - t0


def scale_rows(ctx: Context) -> list[Row]:
    sizes = QUICK_SIZES if ctx.settings.quick else SIZES
    specs = {n: prepare(ctx, n) for n in sizes}
    cache_dir = ctx.scratch / "scale" / "cache"  # the largest size's answers hold every smaller size's
    warming = warm(specs[max(sizes)], cache_dir)
    ctx.log(f"  scale: cache warmed with {max(sizes):,} answers in {warming:.1f} s")
    runs = []
    for n in sizes:
        spec = specs[n]
        out = run_worker(["benchmarks/workers.py", "scale", str(spec), str(cache_dir)])
        out.update(n=n, warm_s=warming)
        runs.append(out)
        ctx.log(f"  scale {n}: {out['evaluate_s']:.2f} s, peak RSS {out['peak_rss_mb']:.0f} MB, {out['calls']} calls")
    small, mid, large = runs
    slope = (large["peak_rss_mb"] - small["peak_rss_mb"]) * 2**20 / (large["n"] - small["n"])  # bytes per sample
    base = small["peak_rss_mb"] - slope * small["n"] / 2**20
    predicted_mid = base + slope * mid["n"] / 2**20
    linear_memory = abs(mid["peak_rss_mb"] - predicted_mid) <= 0.15 * mid["peak_rss_mb"]
    time_ratio = (large["evaluate_s"] / large["n"]) / (small["evaluate_s"] / small["n"])
    linear_time = time_ratio < 2.0  # a quadratic step would make 10x the samples cost ~100x the time
    small_constant = slope < 64 * 1024  # bytes per sample, with its texts (about 2.4 kB each) included
    from_cache = all(r["calls"] == 0 and r["cache_hits"] == r["records"] for r in runs)
    rows = []
    for r in runs:
        rows.append(Row("6. scale", f"{r['n']:,} samples, 1 criterion, warm cache: load + split + score", r["evaluate_s"], "s",
                        details={"peak_rss_mb": r["peak_rss_mb"], "phases_s": r["phases"], "records": r["records"],
                                 "warm_s": r["warm_s"], "cache_hits": r["cache_hits"], "calls": r["calls"]}))
    rows.append(Row("6. scale", "growth 10x samples: memory per sample (slope), time per sample (large / small)", slope / 1024,
                    "kB/sample", None, "linear, small constant; no quadratic step",
                    linear_memory and linear_time and small_constant and from_cache,
                    details={"base_mb": base, "predicted_mid_mb": predicted_mid, "measured_mid_mb": mid["peak_rss_mb"],
                             "time_per_sample_ratio": time_ratio, "linear_memory": linear_memory, "linear_time": linear_time,
                             "all_from_cache": from_cache}))
    return rows


def largest(ctx: Context) -> tuple[Path, Path]:
    """The spec and warm cache of the largest size, for profiling its run."""
    n = max(QUICK_SIZES if ctx.settings.quick else SIZES)
    return ctx.scratch / "scale" / str(n) / "bench.judge.yaml", ctx.scratch / "scale" / "cache"
