"""Benchmarks of pytest-judgeopt: how close to the limit, and how far ahead of TextGrad.

    python benchmarks/run.py                      # everything; writes benchmarks/results.json and results.md
    python benchmarks/run.py --quick --skip-embedded

The work of this tool is waiting on model calls, so each case measures how well calls overlap,
how few there are and how little is added around them, against a local OpenAI-compatible
server (a process of its own, on 127.0.0.1) that answers from a script after a fixed latency.
Each case reports the measured figure, the ideal and their ratio; a missed target gets a note
saying why, with a py-spy profile of that case summarised.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The sibling modules import as top-level modules: Python puts this script's folder first on the path.
import embedded
import example
import judge_pass
import limits
import notes
import profiling
import report
import scale
import startup
import steps
from common import ROOT, Context, Row, Settings, Stopwatch
from server import Server

HERE = Path(__file__).resolve().parent

CASES = ("baseline", "judge", "step", "cached", "startup", "textgrad", "scale", "embedded", "limits", "example")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the benchmarks and write benchmarks/results.json and results.md.")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server waits before each answer (0.1)")
    parser.add_argument("--concurrency", type=int, default=32, help="model calls in flight, C (32)")
    parser.add_argument("--step-concurrency", type=int, default=128,
                        help="C for the optimization steps of case 2, enough that no phase waits for a slot (128)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the table shows medians (3)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and one run each: a smoke test, not a result")
    parser.add_argument("--skip-embedded", action="store_true",
                        help="leave out cases 7 and 9 (the embedded model, and the main job on it; minutes)")
    parser.add_argument("--skip-textgrad", action="store_true", help="leave out TextGrad in case 5 (installs it once)")
    parser.add_argument("--case", action="append", choices=CASES, help="run only these cases (repeatable)")
    parser.add_argument("--no-profile", action="store_true", help="do not profile the cases that miss their target")
    parser.add_argument("--no-write", action="store_true", help="print only; write no results files")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.json and results.md (benchmarks/)")
    return parser.parse_args()


def litellm_alone(ctx: Context, calls: int = 300) -> Row:
    """Case 0: litellm's own CPU per call against the same server, no project code: the floor of every case."""
    from pytest_judgeopt.llm import import_litellm

    litellm = import_litellm()
    ctx.server.set_latency(0.0)

    async def burst(tag: str, n: int) -> None:
        limit = asyncio.Semaphore(ctx.settings.concurrency)

        async def one(i: int) -> None:
            async with limit:
                await litellm.acompletion(model="openai/bench", api_base=ctx.server.base_url, api_key="sk-bench",
                                          max_retries=0, messages=[{"role": "user", "content": f"{tag} {i}"}])

        await asyncio.gather(*[one(i) for i in range(n)])

    async def measure() -> Stopwatch:
        await burst("warm-up", 50)
        with Stopwatch() as watch:
            await burst("measured", calls)
        return watch

    try:
        watch = asyncio.run(measure())
    finally:
        ctx.server.set_latency(ctx.settings.latency)
    ms = 1000 * watch.cpu / calls
    ctx.log(f"  litellm alone: {ms:.2f} ms of CPU per call")
    return Row("0. baseline", f"litellm.acompletion alone: CPU per call ({calls} calls, C={ctx.settings.concurrency}, "
               "no project code)", ms, "ms", None, "", None, 1, details={"calls": calls, "wall_s": watch.wall, "cpu_s": watch.cpu})


def warm_up(ctx: Context) -> None:
    """litellm's and scipy's imports and litellm's first-call set-up are paid once per process, not per pass:
    keep them out of the clock (case 3 measures a fresh process, imports included)."""
    from pytest_judgeopt.llm import LLM
    from pytest_judgeopt.spec import Model

    llm = LLM(concurrency=4)

    async def call() -> None:
        model = Model("openai/bench", (("api_base", ctx.server.base_url), ("api_key", "sk-bench")))
        await llm.complete(model, [{"role": "user", "content": "warm-up"}], role="warm-up")

    llm.run(call())
    llm.close()
    importlib.import_module("scipy.stats")  # scipy's import, which the first evaluate would otherwise pay


def run_cases(ctx: Context, wanted: set[str]) -> tuple[list[Row], dict[str, Any]]:
    """The cases in order; what a later case needs from an earlier one (the warm cache) is passed along."""
    rows: list[Row] = []
    keep: dict[str, Any] = {}
    s = ctx.settings
    if "baseline" in wanted:
        rows.append(litellm_alone(ctx))
    if wanted & {"judge", "cached"}:
        ctx.log("case 1: judge pass")
        spec = judge_pass.build(ctx)
        row, cache = judge_pass.cold(ctx, spec)
        keep.update(judge_spec=spec, judge_cache=cache)
        if "judge" in wanted:
            rows.append(row)
        if "cached" in wanted:
            ctx.log("case 3: cached re-run")
            rows.append(judge_pass.warm(ctx, spec, cache))
    if "step" in wanted:
        ctx.log("case 2: optimization steps")
        rows += steps.step_rows(ctx)
    if "startup" in wanted:
        ctx.log("case 4: start-up")
        rows += startup.startup_rows(ctx)
    if "textgrad" in wanted:
        ctx.log("case 5: side by side with TextGrad")
        rows += steps.versus_textgrad(ctx)
    if "scale" in wanted:
        ctx.log("case 6: scale")
        rows += scale.scale_rows(ctx)
        keep["scale_largest"] = scale.largest(ctx)
    if "limits" in wanted:
        ctx.log("case 8: limits")
        rows += limits.limit_rows(ctx)
    if "embedded" in wanted and s.embedded:
        ctx.log("case 7: embedded model (slow)")
        rows += embedded.embedded_rows(ctx)
    if "example" in wanted and s.embedded:
        ctx.log("case 9: the main job, pytest examples/summeval, empty answer cache (minutes)")
        rows += example.example_rows(ctx)
    return rows, keep


def profile_misses(ctx: Context, rows: list[Row], keep: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """py-spy on a fresh run of each case that missed its target; the summaries go into the notes."""
    common = ["--latency", str(args.latency), "--concurrency", str(args.concurrency),
              "--step-concurrency", str(args.step_concurrency)]
    # the quick sizes: the same code paths in a third of the time, and the shares are what the summary reports
    run = [sys.executable, str(HERE / "run.py"), "--repeats", "1", "--no-write", "--no-profile", "--quick", *common]
    commands = {
        "1. judge pass": [*run, "--case", "judge"],
        "2. optimization step": [*run, "--case", "step"],
        "5. vs TextGrad": [*run, "--case", "textgrad", "--skip-textgrad"],
    }
    if "judge_spec" in keep:
        commands["3. cached re-run"] = [sys.executable, str(HERE / "workers.py"), "cached", str(keep["judge_spec"]),
                                        str(keep["judge_cache"])]
    if "scale_largest" in keep:
        spec, cache = keep["scale_largest"]
        commands["6. scale"] = [sys.executable, str(HERE / "workers.py"), "scale", str(spec), str(cache)]
    missed = {row.case for row in rows if row.met is False}
    out = {}
    for case, command in commands.items():
        if case in missed:
            ctx.log(f"profiling {case} (py-spy)")
            # a fresh run.py pays litellm's and scipy's imports first: left out, as the measured passes never pay them
            summary = profiling.profile(command, ctx.scratch / f"profile-{case.split('.')[0]}.txt",
                                        imports=command[1].endswith("workers.py"))
            if summary is not None:
                out[case] = summary
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT))  # this tree's package, in-process, whatever else is installed
    args = parse()
    settings = Settings(latency=args.latency, concurrency=args.concurrency, step_concurrency=args.step_concurrency,
                        repeats=1 if args.quick else args.repeats, quick=args.quick, embedded=not args.skip_embedded,
                        textgrad=not args.skip_textgrad, profile=not args.no_profile)
    wanted = set(args.case) if args.case else set(CASES)
    load_start = list(os.getloadavg())
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="judgeopt-bench-"))
    try:
        with Server(settings.latency) as server:
            ctx = Context(settings, server, scratch)
            warm_up(ctx)
            rows, keep = run_cases(ctx, wanted)
            profiles = profile_misses(ctx, rows, keep, args) if settings.profile else {}
        notes.annotate(rows, profiles, settings)
        meta = {"command": "python benchmarks/run.py " + shlex.join(sys.argv[1:]), "machine": report.machine(),
                "versions": report.versions(steps.textgrad_versions()), "settings": report.settings_json(settings),
                "load_start": load_start, "load_end": list(os.getloadavg()), "total_s": time.perf_counter() - started,
                "profiles": profiles}
        meta["command"] = meta["command"].strip()
        if args.no_write:
            print(report.markdown(rows, meta))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            for path in report.write(args.out, rows, meta):
                print(f"wrote {path}")
            print(report.markdown(rows, meta))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
