"""The optimizer's results as text: a run's heading and table, the instruction diffs sentence by sentence,
what it cost, the mode study's table (rendered by the terminal summary, the HTML page and the failures).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .text import Line, Table, dollars, estimate, number, relative


def optimization_heading(o: Mapping[str, Any], root: Path | None = None) -> str:
    """The line that says what ran and where the lock went (relative to ``root``, where pytest was started)."""
    stopped = "; stopped by the budget, keeping the best instructions so far" if o["stopped"] == "budget" else ""
    resumed = f"; resumed after step {o['resumed_from']}" if o["resumed_from"] and not o["reused"] else ""
    reused = "; this run had finished before: its result is reused, not repeated" if o["reused"] else ""
    where = f"; wrote {relative(o['lock_path'], root)}" if o.get("lock_path") else ""
    if o.get("lock_refused"):
        fell = [name for name, c in o["criteria"].items()
                if c["test_diff"]["high"] is not None and c["test_diff"]["value"] is not None and c["test_diff"]["high"] < 0]
        where = f"; no lock written: the test agreement of {', '.join(fell)} fell significantly"
    sizes = o["split_sizes"]
    shapes = o["shapes"]
    shape = (f"; val with {shapes['optimized']} prompts, test with {shapes['test']} prompts (the items' shape)"
             if shapes["optimized"] != shapes["test"] else f"; {shapes['test']} prompts")
    return (f"{o['spec']}: mode {o['mode']}, {o['steps_run']} steps, seed {o['seed']} "
            f"(train {sizes['train']}, val {sizes['val']}, test {sizes['test']}){shape}; {val_words(o['val'])}"
            f"{stopped}{resumed}{reused}{where}")


def val_words(val: Mapping[str, str]) -> str:
    """What the val numbers are: the gate's metric at its level (at group level, compared on shared documents)."""
    if val["level"] == "group":
        return f"val {val['metric']} at level group (mean over documents; before and after on the documents both have)"
    return f"val {val['metric']} pooled"


def optimization_table(o: Mapping[str, Any], root: Path | None = None) -> Table:
    """Per criterion: val rho before and after (the gate's split), test rho before and after with intervals and
    their paired difference (the untouched split), and the steps whose update was accepted."""
    table = Table(optimization_heading(o, root),
                  [("criterion", "left"), ("val before", "right"), ("val after", "right"), ("test before", "right"),
                   ("test after", "right"), ("difference", "right"), ("accepted steps", "left")])
    for name, c in o["criteria"].items():
        b, a, d = c["test_before"], c["test_after"], c["test_diff"]
        table.rows.append([name, number(c["val_before"]), number(c["val_after"]), estimate(b["value"], b["low"], b["high"]),
                           estimate(a["value"], a["low"], a["high"]), estimate(d["value"], d["low"], d["high"], sign=True),
                           ", ".join(map(str, c["accepted_steps"])) or "none"])
    return table


def instruction_diff(criterion: str, old: str, new: str) -> list[Line]:
    """A unified diff of two instructions, one sentence a line, each line with its kind.

    Sentences, not a fixed width: wrapped at a width, one changed word re-flows the rest of its
    paragraph and the diff shows every later line as changed; a sentence changes alone.
    """
    lines = difflib.unified_diff(sentences(old), sentences(new), fromfile=f"{criterion} (before)",
                                 tofile=f"{criterion} (after)", lineterm="")
    return [Line(line, diff_kind(line)) for line in lines]


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def sentences(text: str) -> list[str]:
    """The instruction's own lines, each cut after every sentence's end."""
    return [part for line in text.splitlines() for part in (SENTENCE_END.split(line.strip()) if line.strip() else [""])]


def diff_kind(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "head"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "context")


def instruction_changes(o: Mapping[str, Any]) -> dict[str, list[Line]]:
    """Per criterion, the diff of its instruction, or one line saying why it is unchanged."""
    out = {}
    for name, c in o["criteria"].items():
        if c["final"] != c["initial"]:
            out[name] = instruction_diff(name, c["initial"], c["final"])
        else:
            reasons = sorted({h["rejected_reasons"][name] for h in o["history"] if h["rejected_reasons"].get(name)})
            out[name] = [Line(f"{name}: unchanged ({'; '.join(reasons) or 'no step proposed a change'})")]
    return out


def usage_text(usage: Mapping[str, Mapping[str, Any]], seconds: float | None) -> str:
    """An optimization's cost: requests (calls made, the rest from cache or shared), per role, tokens, dollars, time."""
    requests = sum(u["requests"] for u in usage.values())
    made = sum(u["calls"] for u in usage.values())
    costs = [u["cost_usd"] for u in usage.values()]
    cost = "unknown" if any(c is None for c in costs) else dollars(sum(costs))
    per_role = ", ".join(f"{role} {u['requests']}" for role, u in usage.items())
    tokens_in = sum(u.get("prompt_tokens", 0) for u in usage.values())
    tokens_out = sum(u.get("completion_tokens", 0) for u in usage.values())
    wall = "" if seconds is None else f"; wall time {seconds:.1f} s"
    return (f"calls: {requests} ({made} made, {requests - made} from cache or shared; {per_role}); "
            f"tokens {tokens_in:,} in, {tokens_out:,} out; cost {cost}{wall}")


def study_table(study: Mapping[str, Any]) -> Table:
    """The paper's table: per mode and criterion, val agreement before and after (the selection numbers, to choose
    a mode by), test before and after over runs (held out), and what it cost."""
    table = Table(f"{study['spec']}: {study['runs']} runs per mode, {study['steps']} steps each, val split of "
                  f"{study['val_size']} samples, test split of {study['test_size']} samples (test {study['level']} "
                  f"{study['method']}; {val_words(study['val'])}; val in each mode's prompt shape, test with "
                  f"{study['test_shape']} prompts)",
                  [("mode", "left"), ("criterion", "left"), ("val before", "right"), ("val after (mean ± sd)", "right"),
                   ("test before (held out)", "right"), ("test after (held out)", "right"), ("improved steps", "right"),
                   ("specificity", "right"), ("calls/run made", "right"), ("cached", "right"), ("cost/run", "right")])
    reused = {}
    for row in study["rows"]:
        table.rows.append([row["mode"], row["criterion"], number(row["val_before"]),
                           number(row["val_after_mean"]) + spread_text(row["val_after_sd"]), number(row["test_before"]),
                           number(row["test_after_mean"]) + spread_text(row["test_after_sd"]),
                           f"{row['improved_steps']:.1f}", number(row["specificity"], 1),
                           f"{row.get('calls_made', row['calls']):.0f}", f"{row.get('calls_cached', 0):.0f}",
                           dollars(row["cost"])])
        if row.get("reused_runs"):
            reused[row["mode"]] = row["reused_runs"]
    table.after.append(Line("choose a mode on val (the numbers the gate selected by); test is held out: read it once, "
                            "for the mode chosen, since picking the best test number makes it a selection number too"))
    if reused:
        counts = ", ".join(f"{m}: {n}" for m, n in reused.items())
        table.after.append(Line(f"runs finished before were reused from their checkpoints ({counts}): their optimization "
                                "steps were neither asked again nor counted, only the test split's judgments"))
    return table


def spread_text(sd: float | None) -> str:
    return f" ± {sd:.3f}" if sd is not None else ""
