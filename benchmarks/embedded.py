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
    judging_session = Session(LLM(cache=Cache(folder / "cache"), concurrency=4), sample=DOCUMENTS,
                              state_dir=folder / "state")
    t0 = time.perf_counter()
    loaded = judging_session.load(spec)
    before = judging_session.evaluate(spec)
    judging = time.perf_counter() - t0
    samples = len(next(iter(before.values())).judgments)
    judgments = sum(len(r.judgments) for r in before.values())
    calls = judging_session.llm.total().calls
    ctx.log(f"  embedded: {judgments} judgments in {judging:.1f} s ({calls} model calls)")

    optimizing_session = Session(LLM(cache=Cache(folder / "cache"), concurrency=4), sample=OPTIMIZE_DOCUMENTS,
                                 state_dir=folder / "state")
    t0 = time.perf_counter()
    optimized = optimizing_session.optimize(spec, "SSS", steps=1)
    optimizing = time.perf_counter() - t0
    optimize_calls = optimizing_session.llm.total().calls
    optimizing_session.close()
    ctx.log(f"  embedded: one SSS step with its gates and test evaluations in {optimizing:.1f} s")

    # the regression items' own protocol (separate prompts) on the same test samples, with the final instructions;
    # an instruction the step did not change is answered from the memo, not judged again
    names = list(before)
    after = judging_session.evaluate_instructions(loaded, optimized.instructions, names, split="test", shape="separate",
                                                  sources=dict.fromkeys(names, "optimization"))
    judging_session.close()

    rows = [Row("7. embedded model", f"SmolLM2-135M in-process: the example's prompts, {samples} test samples x "
                f"{len(before)} criteria (separate)", samples / judging, "samples/s", None, "an honest number", None, 1,
                details={"judgments_per_s": judgments / judging, "seconds_per_judgment": judging / judgments,
                         "judge_pass_s": judging, "calls": calls, "documents": DOCUMENTS, "optimize_s": optimizing,
                         "optimize_calls": optimize_calls, "split_sizes": optimized.split_sizes, "usage": optimized.usage})]
    for name in names:
        outcome = optimized.outcomes[name]
        b, a = before[name], after[name]
        rows.append(Row("7. embedded model", f"test rho, {name}, separate prompts ({b.n - b.failed_count}/{b.n} parsed before, "
                        f"{a.n - a.failed_count}/{a.n} after): before -> after one SSS step", a.rho, "rho", None, "", None, 1,
                        shown=f"{rho(b.rho)} -> {rho(a.rho)}",
                        details={"before": b.rho, "after": a.rho, "failures_before": dict(b.failures),
                                 "failures_after": dict(a.failures), "optimizer_test_before_merged": outcome.test_before.value,
                                 "optimizer_test_after_merged": outcome.test_after.value,
                                 "merged_pairs": outcome.test_before.n, "accepted_steps": outcome.accepted_steps,
                                 "final_instruction": outcome.final}))
    return rows
