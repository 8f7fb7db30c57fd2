"""Cases 2 and 5: one optimization step of this project (SSS, CCC, ST), and TextGrad's step beside ST.

A step is timed alone: the run's first gate (the val split judged with the initial
instructions) happens before the clock starts, as it does once per run, not per step.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import HERE, Context, Row, Stopwatch, median
from workload import documents_by_systems, write_jsonl, write_spec

PHASES = ("judge", "loss", "gradient", "optimizer", "gate")
SEED = 0
# outside the work tree: a virtualenv is hundreds of megabytes that must never be committed
VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-judgeopt-benchmarks" / "textgrad-venv"
TEXTGRAD = "textgrad==0.1.8"


def build(ctx: Context, criteria: list[str] | None = None, name: str = "steps") -> Path:
    """The example spec over 100 documents x 4 summaries: 25 train documents, 25 val (100 samples), 50 test."""
    folder = ctx.scratch / name
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data.jsonl"
    if not data.exists():
        write_jsonl(data, documents_by_systems(100, 4))
    return write_spec(folder, data, ctx.server.base_url, split={"train": 0.25, "val": 0.25, "test": 0.5},
                      criteria=criteria, batch_size=3, name=name)


def ideal_seconds(planned: dict[str, int], concurrency: int, latency: float) -> float:
    """Each dependent phase takes one latency per round of ``concurrency`` calls."""
    return sum(math.ceil(planned[p] / concurrency) for p in PHASES) * latency


def one_step(ctx: Context, spec: Path, mode_name: str, concurrency: int, run: int) -> dict[str, Any]:
    """One step of ``mode_name`` on a fresh cache: time, server calls, the step's own count per role, the plan."""
    from pytest_judgeopt.cache import Cache
    from pytest_judgeopt.judge import render_inputs
    from pytest_judgeopt.llm import LLM
    from pytest_judgeopt.optimize.loop import Optimization, State, run_key
    from pytest_judgeopt.optimize.modes import get_mode, plan_text
    from pytest_judgeopt.optimize.roles import MODEL_ROLES
    from pytest_judgeopt.session import Session

    folder = spec.parent / f"{mode_name}-{run}"
    session = Session(LLM(cache=Cache(folder / "cache"), concurrency=concurrency), state_dir=folder / "state")
    loaded = session.load(spec)
    the_spec, mode = loaded.spec, get_mode(mode_name)
    models = {role: session.model_for(the_spec, role) for role in MODEL_ROLES}
    train, val = session.records(loaded, "train"), session.records(loaded, "val")
    key = run_key(the_spec, loaded.dataset.digest, mode, models, None, SEED)
    optimization = Optimization(session.llm, the_spec, mode, models, train=train, val=val,
                                checkpoint=folder / "checkpoint.json", key=key, seed=SEED, steps=1)
    planned = optimization.planned()
    plan = plan_text(the_spec, mode, planned, 1, len(train), len(val), models["judge"])
    initial = {c: criterion.instruction for c, criterion in the_spec.criteria.items()}
    first_gate = session.llm.run(optimization.judge(optimization.val, initial, "gate"))
    state = State(key, mode.name, initial, dict(initial), {}, random.Random(SEED).getstate())
    state.set_initial(optimization.measure(first_gate))
    hits_before = session.llm.total().cache_hits
    ctx.server.reset()
    with Stopwatch() as watch:
        record = session.llm.run(optimization.step(state, 1))
    stats = ctx.server.stats()
    hits = session.llm.total().cache_hits - hits_before
    session.close()
    by_id = {r.id: r for r in train}
    batch = [{"text": render_inputs(by_id[i]), "human": by_id[i].human} for i in record.batch]
    return {"wall_s": watch.wall, "cpu_s": watch.cpu, "calls": stats["calls"], "max_in_flight": stats["max_in_flight"],
            "per_role": record.calls, "planned": planned, "plan": plan, "proposed": [c for c, p in record.proposals.items() if p],
            "kept": record.accepted, "failures": record.failures, "cache_hits": hits, "batch": batch,
            # a merged prompt holding only some rewrites is judged once more (gate +V): the formula's stated extra
            "expected": {**planned, "gate": planned["gate"] + (len(val) if record.val_kept is not None else 0)},
            "val": [{"text": render_inputs(r), "human": r.human} for r in val], "instructions": initial}


def step_rows(ctx: Context) -> list[Row]:
    """Case 2: SSS and CCC with K=4, B=3, V=100, at a concurrency no phase fills."""
    s = ctx.settings
    spec = build(ctx)
    rows = []
    for mode in ("SSS", "CCC"):
        runs = []
        for i in range(s.repeats):
            out = one_step(ctx, spec, mode, s.step_concurrency, i)
            runs.append(out)
            ctx.log(f"  {mode} step {i + 1}/{s.repeats}: {out['wall_s']:.3f} s, {out['calls']} calls "
                    f"(planned {sum(out['planned'].values())}), CPU {out['cpu_s']:.2f} s")
        walls = [r["wall_s"] for r in runs]
        wall = median(walls)
        planned = runs[0]["planned"]
        ideal = ideal_seconds(planned, s.step_concurrency, s.latency)
        equal = all(r["calls"] == sum(r["expected"].values()) and r["per_role"] == r["expected"] and r["cache_hits"] == 0
                    for r in runs)
        rows.append(Row("2. optimization step", f"one {mode} step, K=4, B=3, V=100, C={s.step_concurrency}", wall, "s", ideal,
                        "<= 1.25 x ideal; calls = formula", wall <= 1.25 * ideal and equal, s.repeats, walls,
                        details={"calls": [r["calls"] for r in runs], "per_role": runs[0]["per_role"], "planned": planned,
                                 "calls_equal_formula": equal, "plan": runs[0]["plan"], "cpu_s": [r["cpu_s"] for r in runs],
                                 "max_in_flight": [r["max_in_flight"] for r in runs], "kept": runs[0]["kept"],
                                 "failures": runs[0]["failures"]}))
    return rows


# ---------------------------------------------------------------------------------------------
# TextGrad


def textgrad_python(ctx: Context) -> str:
    """TextGrad in a virtualenv of its own (it sees this interpreter's packages but installs beside them, changing none)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        ctx.log(f"  installing {TEXTGRAD} into {VENV} (PyPI, once)")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    probe = subprocess.run([str(python), "-c", "import textgrad"], capture_output=True, text=True,
                           env={**os.environ, "TEXTGRAD_LOG_DIR": str(ctx.scratch / "textgrad-logs")})
    if probe.returncode != 0:
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", TEXTGRAD], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip install {TEXTGRAD} failed:\n{done.stderr[-2000:]}")
    return str(python)


def textgrad_step(ctx: Context, python: str, task: dict[str, Any], run: int) -> dict[str, Any]:
    folder = ctx.scratch / "textgrad" / str(run)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "task.json"
    path.write_text(json.dumps(task), encoding="utf-8")
    # its disk cache (under XDG_CACHE_HOME) and logs go to a fresh folder, so no answer comes from a cache
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache"), "TEXTGRAD_LOG_DIR": str(folder / "logs"),
           "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": ctx.server.base_url}
    child = subprocess.Popen([python, str(HERE / "textgrad_step.py"), str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder, env=env)
    assert child.stdin is not None and child.stdout is not None
    ready = child.stdout.readline()
    if ready.strip() != "ready":
        raise RuntimeError(f"TextGrad did not start: {ready}{child.communicate(timeout=60)[1][-3000:]}")
    ctx.server.reset()
    child.stdin.write("go\n")
    child.stdin.flush()
    out, err = child.communicate(timeout=600)
    if child.returncode != 0:
        raise RuntimeError(f"TextGrad step failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["calls"] = ctx.server.calls()
    return result


def versus_textgrad(ctx: Context) -> list[Row]:
    """Case 5: this project's ST step and TextGrad's step on one criterion, the same batch and val texts, same concurrency."""
    s = ctx.settings
    spec = build(ctx, criteria=["coherence"], name="single")
    ours = []
    for i in range(s.repeats):
        ours.append(one_step(ctx, spec, "ST", s.concurrency, i))
        ctx.log(f"  ST step {i + 1}/{s.repeats}: {ours[-1]['wall_s']:.3f} s, {ours[-1]['calls']} calls")
    first = ours[0]
    instruction = (f"{first['instructions']['coherence']}\nAnswer in this format and nothing else:\n"
                   "coherence: <score from 1 to 5>")
    task = {"base_url": ctx.server.base_url, "instruction": instruction, "threads": s.concurrency,
            "batch": [{"text": b["text"], "human": b["human"]["coherence"]} for b in first["batch"]],
            "val": [{"text": v["text"], "human": v["human"]["coherence"]} for v in first["val"]]}
    our_wall = median([r["wall_s"] for r in ours])
    our_calls = int(median([r["calls"] for r in ours]))
    rows = [Row("5. vs TextGrad", f"this project: one ST step, 1 criterion, B=3, V=100, C={s.concurrency}", our_wall, "s",
                ideal_seconds(first["planned"], s.concurrency, s.latency), "", None, s.repeats, [r["wall_s"] for r in ours],
                details={"calls": [r["calls"] for r in ours], "per_role": first["per_role"], "planned": first["planned"]})]
    if not s.textgrad:
        return rows
    try:
        python = textgrad_python(ctx)
        theirs = []
        for i in range(s.repeats):
            theirs.append(textgrad_step(ctx, python, task, i))
            ctx.log(f"  TextGrad step {i + 1}/{s.repeats}: {theirs[-1]['wall_s']:.3f} s, {theirs[-1]['calls']} calls")
    except Exception as exc:  # reported in the table, never replaced by made-up numbers
        rows.append(Row("5. vs TextGrad", "TextGrad: could not be run", None, "s", None, ">= 10 x faster, no more calls",
                        False, 0, note=f"TextGrad did not run here: {exc}"[:1500]))
        return rows
    their_wall = median([r["wall_s"] for r in theirs])
    their_calls = int(median([r["calls"] for r in theirs]))
    batch = len(task["batch"])
    rows.append(Row("5. vs TextGrad", f"TextGrad {theirs[0]['textgrad_version']}: the same step (4B+1 calls, then the gate on "
                    f"{s.concurrency} threads)", their_wall, "s", (4 * batch + 1 + math.ceil(len(task["val"]) / s.concurrency))
                    * s.latency, "", None, s.repeats, [r["wall_s"] for r in theirs],
                    details={"calls": [r["calls"] for r in theirs], "phases_s": theirs[len(theirs) // 2]["phases"],
                             "kept": [r["kept"] for r in theirs]}))
    if not s.quick:  # for scale: the same TextGrad step with its gate judged one text at a time
        serial = textgrad_step(ctx, python, {**task, "threads": 1}, s.repeats)
        ctx.log(f"  TextGrad step, gate in a plain loop: {serial['wall_s']:.3f} s, {serial['calls']} calls")
        rows.append(Row("5. vs TextGrad", "TextGrad, the same step with its gate in a plain loop (1 thread); for "
                        "comparison only", serial["wall_s"], "s", (4 * batch + 1 + len(task["val"])) * s.latency, "", None,
                        1, [serial["wall_s"]], details={"calls": serial["calls"], "phases_s": serial["phases"],
                                                        "speedup_vs_ours": serial["wall_s"] / our_wall}))
    speedup = their_wall / our_wall
    rows.append(Row("5. vs TextGrad", "speed-up per step (TextGrad time / ours); calls ours vs TextGrad", speedup, "x", None,
                    ">= 10 x faster, no more calls", speedup >= 10 and our_calls <= their_calls, s.repeats,
                    details={"our_calls": our_calls, "textgrad_calls": their_calls}))
    return rows


def textgrad_versions() -> dict[str, str]:
    """TextGrad's version, when its virtualenv exists (for the table's versions line)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        return {}
    done = subprocess.run([str(python), "-c", "from importlib.metadata import version; print(version('textgrad'))"],
                          capture_output=True, text=True)
    return {"textgrad": done.stdout.strip()} if done.returncode == 0 and done.stdout.strip() else {}
