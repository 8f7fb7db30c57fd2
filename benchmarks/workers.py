"""Benchmark work that must start from a fresh interpreter: the cached re-run and the scale runs.

Each prints one JSON object on its last line for the parent to read.

    python benchmarks/workers.py cached SPEC CACHE_DIR
    python benchmarks/workers.py scale SPEC CACHE_DIR
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

START = time.perf_counter()


class Timed:
    """Wraps a callable to add up the time spent in it (the session's model runs, the agreement statistics)."""

    def __init__(self, function: Any):
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage: Linux carries ru_maxrss over from the
    parent across fork and exec, so a child of a large benchmark process would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def judge_from_cache(spec: Path, cache_dir: Path) -> dict[str, Any]:
    """Load, split and judge every criterion of ``spec`` on its test split; report where the time went."""
    t0 = time.perf_counter()
    import pytest_judgeopt.session as session_module
    from pytest_judgeopt.cache import Cache
    from pytest_judgeopt.llm import LLM

    imported = time.perf_counter() - t0
    session = session_module.Session(LLM(cache=Cache(cache_dir), concurrency=32), state_dir=cache_dir / "state")
    judging = Timed(session.llm.run)
    session.llm.run = judging
    assessing = Timed(session_module.assess)
    session_module.assess = assessing
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    loaded = session.load(spec)
    loading = time.perf_counter() - t0
    t1 = time.perf_counter()
    results = session.evaluate(spec)
    evaluate = time.perf_counter() - t1
    usage = session.llm.total()
    session.close()
    judgments = sum(len(r.judgments) for r in results.values())
    return {
        "evaluate_s": loading + evaluate,
        "phases": {"import the package": imported, "load and split the data": loading, "judge (cache lookups)": judging.seconds,
                   "agreement (rho + interval)": assessing.seconds,
                   "the rest of evaluate": evaluate - judging.seconds - assessing.seconds},
        "process_s": time.perf_counter() - START, "judgments": judgments, "records": len(loaded.dataset.records),
        "cache_hits": usage.cache_hits, "calls": usage.calls, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss_before,
    }


if __name__ == "__main__":
    kind, spec_path, cache_path = sys.argv[1:4]
    if kind not in ("cached", "scale"):
        raise SystemExit(f"unknown worker {kind!r}")
    print(json.dumps(judge_from_cache(Path(spec_path), Path(cache_path))))
