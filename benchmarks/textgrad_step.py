"""TextGrad doing the same single-criterion step as the project's ST step; run with TextGrad's own interpreter.

The step is TextGrad's reference prompt-optimization loop (its ``evaluation/prompt_optimization.py``)
applied to a judge: for each of the batch's texts a forward call (the judge, with the
instruction as its system prompt) and a loss call (a critique comparing the judge's answer
with the human score); one backward pass over the summed losses; one update; then the same
val texts judged with the new instruction on ``threads`` threads, and the rewrite kept only
if Spearman's rho does not fall. The parent resets the server's call count between "ready"
and "go", so the calls and time counted are the step's alone.

    python textgrad_step.py INPUT.json     # prints "ready", waits for a line, runs, prints JSON
"""

from __future__ import annotations

import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

LOSS_INSTRUCTION = ("Compare the judge's answer with the human score for the same text. Say in two or three sentences "
                    "what the judge most likely got wrong about the criterion in this text, or what it got right.")
SCORE = re.compile(r"(\d+(?:\.\d+)?)")


def spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def main(path: str) -> None:
    task = json.loads(Path(path).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    import textgrad as tg
    from openai import OpenAI
    from textgrad.engine.local_model_openai_api import ChatExternalClient

    imported = time.perf_counter() - t0
    engine = ChatExternalClient(client=OpenAI(base_url=task["base_url"], api_key="sk-bench", max_retries=0),
                                model_string="bench")
    tg.set_backward_engine(engine, override=True)
    instruction = tg.Variable(task["instruction"], requires_grad=True,
                              role_description="instruction to a judge that rates summaries on one criterion")
    judge = tg.BlackboxLLM(engine, system_prompt=instruction)
    loss = tg.loss.MultiFieldEvaluation(
        tg.Variable(LOSS_INSTRUCTION, requires_grad=False, role_description="evaluation instruction"),
        role_descriptions=["text the judge rated", "the judge's answer", "human score"], engine=engine)
    optimizer = tg.TGD(parameters=[instruction], engine=engine)

    def judged(record: dict[str, Any]) -> float | None:
        text = tg.Variable(record["text"], requires_grad=False, role_description="text for the judge to rate")
        found = SCORE.search(judge(text).value or "")
        return float(found.group(1)) if found else None

    def gate(threads: int) -> float | None:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            scores = list(pool.map(judged, task["val"]))
        pairs = [(s, r["human"]) for s, r in zip(scores, task["val"], strict=True) if s is not None]
        return spearman([p[0] for p in pairs], [p[1] for p in pairs])

    before = gate(task["threads"])
    print("ready", flush=True)
    sys.stdin.readline()
    phases: dict[str, float] = {}
    t_step = time.perf_counter()
    optimizer.zero_grad()
    losses = []
    for record in task["batch"]:
        text = tg.Variable(record["text"], requires_grad=False, role_description="text for the judge to rate")
        human = tg.Variable(f"{record['human']:g}", requires_grad=False, role_description="human score")
        answer = judge(text)
        losses.append(loss([text, answer, human]))
    phases["forward and loss (3 x 2, in a loop)"] = time.perf_counter() - t_step
    t = time.perf_counter()
    tg.sum(losses).backward()
    phases["backward"] = time.perf_counter() - t
    t = time.perf_counter()
    old = instruction.value
    optimizer.step()
    phases["update"] = time.perf_counter() - t
    t = time.perf_counter()
    after = gate(task["threads"])
    kept = after is not None and (before is None or after >= before)
    if not kept:
        instruction.set_value(old)
    phases[f"gate ({len(task['val'])} texts, {task['threads']} threads)"] = time.perf_counter() - t
    wall = time.perf_counter() - t_step
    print(json.dumps({"wall_s": wall, "phases": phases, "import_s": imported, "kept": kept, "val_before": before,
                      "val_after": after, "changed": instruction.value != task["instruction"],
                      "textgrad_version": getattr(tg, "__version__", "?")}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
