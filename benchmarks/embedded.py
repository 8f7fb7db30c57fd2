"""Case 7: the embedded SmolLM2 on this machine: judgments per second, and test rho before and after one SSS step.

Small on purpose: throughput on 2 documents of the test split (16 samples x 4 criteria), and the
optimization on 1 document per split (8 samples each), 1 step, batch 2, since the loss, gradient
and optimizer replies take the model several seconds each on two cores. The numbers are what it
is, a weak judge on a handful of samples, not what a real one does.
"""

from __future__ import annotations

import time

from common import Context, Row
from workload import EXAMPLE_DATA, write_spec

DOCUMENTS = 2  # test documents judged for the throughput
OPTIMIZE_DOCUMENTS = 1  # documents per split for the optimization


def rho(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def embedded_rows(ctx: Context) -> list[Row]:
    from pytest_judgeopt.cache import Cache
    from pytest_judgeopt.llm import LLM
    from pytest_judgeopt.session import Session

    folder = ctx.scratch / "embedded"
    folder.mkdir(parents=True, exist_ok=True)
    spec = write_spec(folder, EXAMPLE_DATA, None, split={"train": 0.25, "val": 0.25, "test": 0.5}, batch_size=2,
                      name="summeval", summary_field="summary")
    session = Session(LLM(cache=Cache(folder / "cache"), concurrency=4), sample=DOCUMENTS, state_dir=folder / "state")
    t0 = time.perf_counter()
    session.load(spec)
    results = session.evaluate(spec)
    judging = time.perf_counter() - t0
    samples = len(next(iter(results.values())).judgments)
    judgments = sum(len(r.judgments) for r in results.values())
    calls = session.llm.total().calls
    ctx.log(f"  embedded: {judgments} judgments in {judging:.1f} s ({calls} model calls)")
    session.close()
    session = Session(LLM(cache=Cache(folder / "cache"), concurrency=4), sample=OPTIMIZE_DOCUMENTS,
                      state_dir=folder / "state")
    t0 = time.perf_counter()
    optimized = session.optimize(spec, "SSS", steps=1)
    optimizing = time.perf_counter() - t0
    optimize_calls = session.llm.total().calls
    session.close()
    ctx.log(f"  embedded: one SSS step with its gates and test evaluations in {optimizing:.1f} s")
    rows = [Row("7. embedded model", f"SmolLM2-135M in-process: the example's prompts, {samples} test samples x "
                f"{len(results)} criteria (separate)", samples / judging, "samples/s", None, "an honest number", None, 1,
                details={"judgments_per_s": judgments / judging, "seconds_per_judgment": judging / judgments,
                         "judge_pass_s": judging, "calls": calls, "documents": DOCUMENTS})]
    for name, outcome in optimized.outcomes.items():
        before, after = outcome.test_before.value, outcome.test_after.value
        rows.append(Row("7. embedded model", f"test rho, {name}: before -> after one SSS step (merged prompts, "
                        f"n={outcome.test_before.n})", after, "rho", None, "", None, 1, shown=f"{rho(before)} -> {rho(after)}",
                        details={"before": before, "after": after, "separate_prompt_rho": results[name].rho,
                                 "accepted_steps": outcome.accepted_steps, "final_instruction": outcome.final}))
    rows[0].details.update(optimize_s=optimizing, optimize_calls=optimize_calls,
                           split_sizes=optimized.split_sizes, usage=optimized.usage)
    return rows
