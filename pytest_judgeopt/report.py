"""What a run measured: tables for the terminal, ``results.json`` and ``predictions.jsonl`` for machines.

Everything here works on the JSON form of the results (plain dicts), never on live objects:
under pytest-xdist the workers measure and the controller reports, so what a worker ships is
exactly what a serial run would report from. Merging sorts and deduplicates, so the summary
and the files do not depend on which worker ran which item, nor in what order.

The terminal tables are rich tables; colours only on a terminal and without ``NO_COLOR``, so
a CI log or a pipe gets plain text that still reads as a table (and greps as one line per row).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .llm import Usage

SCHEMA_VERSION = 1  # of results.json; schemas/results.schema.json describes it
PLAIN_WIDTH = 1000  # off a terminal nothing limits a line, and a wrapped row would no longer grep as one


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def interval_text(low: float | None, high: float | None) -> str:
    return f"[{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else "-"


def prediction_rows(results: Iterable[Any]) -> list[dict[str, Any]]:
    """Every judgment of some criterion results as plain rows (predictions.jsonl, the HTML scatter plots):
    kept with the evaluation they belong to, so pytest-xdist workers ship them with it."""
    return [{"criterion": j.criterion, "record_id": j.record_id, "group": j.group, "human": j.human, "judge": j.score,
             "failure": j.failure, "reply": j.reply, "scoring": j.scoring, "outside": j.outside}
            for result in results for j in result.judgments]


def optimization_json(result: Any, seconds: float | None = None) -> dict[str, Any]:
    """An optimization's result as plain data, with where its lock went and how long it took (seconds are
    kept apart in results.json: they are the one thing that differs between two identical runs)."""
    lock = getattr(result, "lock_path", None)
    return {**result.to_json(), "path": str(result.spec.path), "lock_path": None if lock is None else str(lock),
            "wall_seconds": seconds}


# --------------------------------------------------------------------------------------------
# merging what each process measured


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def unique_sorted(items: Iterable[dict[str, Any]], key: Any) -> list[dict[str, Any]]:
    """Identical entries once (two xdist workers judging one spec measure the same thing), in a fixed order."""
    seen: dict[str, dict[str, Any]] = {}
    for item in items:
        seen.setdefault(canonical(item), item)
    return sorted(seen.values(), key=lambda item: (key(item), canonical(item)))


def evaluation_key(ev: dict[str, Any]) -> tuple[Any, ...]:
    return (ev["path"], ev["split"], ev["shape"], [r["criterion"] for r in ev["results"]],
            [r["instruction"] for r in ev["results"]])


def merge(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The measurements of several processes (a serial run is one part; under xdist, the workers and the
    controller) as one: lists deduplicated and sorted, usage counters added up."""
    usage: dict[str, Usage] = {}
    for part in parts:
        for role, state in part.get("usage", {}).items():
            usage.setdefault(role, Usage()).add(state if isinstance(state, Usage) else Usage.from_state(state))

    def every(name: str) -> list[Any]:
        return [item for part in parts for item in part.get(name, [])]

    return {
        "evaluations": unique_sorted(every("evaluations"), evaluation_key),
        "interference": unique_sorted(every("interference"), lambda c: (c["path"], c["split"])),
        "optimizations": unique_sorted(every("optimizations"), lambda o: (o["path"], o["mode"], o["seed"])),
        "studies": unique_sorted(every("studies"), lambda s: (s["spec"],)),
        "notes": sorted(set(every("notes"))),
        "usage": dict(sorted(usage.items())),
    }


# --------------------------------------------------------------------------------------------
# the files


def relative(path: str, root: Path | None) -> str:
    """Paths in the report relative to the rootdir, so two checkouts report alike."""
    if root is None:
        return path
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-judgeopt")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def results_document(found: Mapping[str, Any], *, root: Path | None = None, run_seconds: float | None = None) -> dict[str, Any]:
    """results.json: everything measured, in the layout of schemas/results.schema.json. Per-sample rows go to
    predictions.jsonl instead; wall times are gathered under ``timing``, the only part two identical runs differ in."""
    def without(entry: dict[str, Any], *keys: str) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k not in keys}

    evaluations = [{**without(ev, "predictions"), "path": relative(ev["path"], root)} for ev in found["evaluations"]]
    interference = [{**without(c, "predictions"), "path": relative(c["path"], root)} for c in found["interference"]]
    optimizations = []
    for o in found["optimizations"]:
        lock = o.get("lock_path")
        optimizations.append({**without(o, "wall_seconds"), "path": relative(o["path"], root),
                              "lock_path": None if lock is None else relative(lock, root)})
    return {
        "version": SCHEMA_VERSION,
        "generator": f"pytest-judgeopt {package_version()}",
        "evaluations": evaluations,
        "interference": interference,
        "optimizations": optimizations,
        "studies": list(found["studies"]),
        "notes": list(found["notes"]),
        "usage": {role: usage.to_json() for role, usage in found["usage"].items()},
        "timing": {"run_seconds": None if run_seconds is None else round(run_seconds, 3),
                   "optimizations": [{"spec": o["spec"], "mode": o["mode"], "seed": o["seed"],
                                      "seconds": None if o.get("wall_seconds") is None else round(o["wall_seconds"], 3)}
                                     for o in found["optimizations"]]},
    }


def predictions(found: Mapping[str, Any], *, root: Path | None = None) -> Iterator[dict[str, Any]]:
    """predictions.jsonl's rows: per sample and criterion the human and judge scores, the raw reply, the split,
    for the criterion items' judgments and the merged prompt's of each interference check. ``source`` and
    ``index`` name the entry of results.json's ``evaluations`` or ``interference`` a row belongs to."""
    sources = [("evaluation", i, ev, ev["shape"]) for i, ev in enumerate(found["evaluations"])]
    sources += [("interference", i, c, "merged") for i, c in enumerate(found["interference"])]
    for kind, index, entry, shape in sources:
        for row in entry.get("predictions", []):
            yield {"spec": entry["spec"], "path": relative(entry["path"], root), "source": kind, "index": index,
                   "split": entry["split"], "shape": shape, **row}


def write_report(folder: Path, found: Mapping[str, Any], *, root: Path | None = None,
                 run_seconds: float | None = None) -> list[Path]:
    """results.json, predictions.jsonl and index.html, each written whole or not at all."""
    from .files import write_atomic
    from .html_report import render_html

    folder.mkdir(parents=True, exist_ok=True)
    document = results_document(found, root=root, run_seconds=run_seconds)
    rows = list(predictions(found, root=root))
    written = []
    mode = 0o666 & ~current_umask()  # a CI artifact for people to open: the umask's mode, not a temp file's 0600
    for name, text in (("results.json", json.dumps(document, indent=2, sort_keys=True) + "\n"),
                       ("predictions.jsonl", "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)),
                       ("index.html", render_html(document, rows))):
        write_atomic(folder / name, text)
        (folder / name).chmod(mode)
        written.append(folder / name)
    return written


def current_umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------
# the terminal summary: blocks of a heading, a table and lines under it, rendered by rich


@dataclass
class Block:
    heading: str
    columns: Sequence[tuple[str, str]] = ()  # (header, "left" or "right")
    rows: list[list[str]] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


def verdict_style(text: str) -> str | None:
    if text.startswith(("pass", "no baseline")):
        return "green"
    if text.startswith("inconclusive"):
        return "yellow"
    if text[:4].isupper() or text.startswith("undefined"):
        return "bold red"
    return None


def line_style(text: str) -> str | None:
    stripped = text.lstrip()
    if stripped.startswith(("+++", "---")):
        return "bold"
    if stripped.startswith("+"):
        return "green"
    if stripped.startswith("-") and not stripped.startswith("- "):
        return "red"
    if stripped.startswith("@@"):
        return "cyan"
    return None


def render(blocks: Sequence[Block | str], *, color: bool = False, width: int | None = None) -> list[str]:
    """Blocks and plain lines as terminal lines: ANSI styles only with ``color``; without a width, lines are
    never wrapped (a log is read with grep as often as by eye)."""
    from rich import box
    from rich.console import Console
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    console = Console(file=io.StringIO(), force_terminal=color, no_color=not color, width=width or PLAIN_WIDTH,
                      highlight=False, emoji=False, markup=False, color_system="standard" if color else None)
    for block in blocks:
        if isinstance(block, str):
            console.print(Text(block), soft_wrap=True)
            continue
        console.print(Text(block.heading, style="bold"), soft_wrap=True)
        if block.columns:
            table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
            for header, justify in block.columns:
                table.add_column(header, justify="right" if justify == "right" else "left", no_wrap=width is None)
            for row in block.rows:
                table.add_row(*[Text(cell, style=(verdict_style(cell) or "") if i == len(row) - 1 else "")
                                for i, cell in enumerate(row)])
            console.print(Padding(table, (0, 0, 0, 2)))
        for line in block.after:
            console.print(Text("  " + line, style=line_style(line) or ""), soft_wrap=True)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return [line.rstrip() for line in text.rstrip("\n").split("\n")] if text else []


def evaluation_block(ev: dict[str, Any]) -> Block:
    results = ev["results"]
    passed = sum(r["passed"] for r in results)
    block = Block(f"{ev['spec']} ({ev['split']} split, {ev['records']} samples, {ev['shape']} prompts, {ev['model']}): "
                  f"{passed}/{len(results)} criteria pass",
                  [("criterion", "left"), ("metric", "right"), ("rho", "right"), ("interval", "right"), ("min", "right"),
                   ("n", "right"), ("failed", "right"), ("verdict", "left")])
    for r in results:
        verdict = "pass" if r["passed"] else "FAIL" + ("" if r["undefined_reason"] is None else ": " + r["undefined_reason"])
        block.rows.append([r["criterion"], r["method"], fmt(r["value"]), interval_text(r["low"], r["high"]),
                           fmt(r["min_rho"], 2), str(r["n"]), str(sum(r["parse_failures"].values())), verdict])
    sources = sorted({r["instruction_source"] for r in results} - {"spec"})
    if sources:
        block.after.append("instructions from " + ", ".join(
            f"{source}: {', '.join(r['criterion'] for r in results if r['instruction_source'] == source)}" for source in sources))
    return block


def interference_block(check: dict[str, Any]) -> Block:
    from .interference import detail_lines, fmt as signed, heading, savings_line, verdict_text

    block = Block(heading(check), [("criterion", "left"), ("separate", "right"), ("merged", "right"), ("diff", "right"),
                                   ("interval", "right"), ("n", "right"), ("failed s/m", "right"), ("verdict", "left")])
    for c in check["criteria"]:
        interval = (f"[{signed(c['low'], sign=True)}, {signed(c['high'], sign=True)}]" if c["low"] is not None
                    and c["high"] is not None else "-")
        failed = f"{sum(c['failures_separate'].values())}/{sum(c['failures_merged'].values())}"
        block.rows.append([c["criterion"], signed(c["separate"]), signed(c["merged"]), signed(c["diff"], sign=True),
                           interval, str(c["n"]), failed, verdict_text(c)])
    block.after = [savings_line(check["usage"])] + [line.removeprefix("  ") for line in detail_lines(check)]
    return block


def usage_text(usage: Mapping[str, Mapping[str, Any]], seconds: float | None) -> str:
    """An optimization's cost: requests (calls made, the rest from cache or shared), per role, tokens, dollars, time."""
    requests = sum(u["requests"] for u in usage.values())
    made = sum(u["calls"] for u in usage.values())
    costs = [u["cost_usd"] for u in usage.values()]
    cost = "unknown" if any(c is None for c in costs) else f"${sum(costs):.4f}"
    per_role = ", ".join(f"{role} {u['requests']}" for role, u in usage.items())
    tokens_in = sum(u.get("prompt_tokens", 0) for u in usage.values())
    tokens_out = sum(u.get("completion_tokens", 0) for u in usage.values())
    wall = "" if seconds is None else f"; wall time {seconds:.1f} s"
    return (f"calls: {requests} ({made} made, {requests - made} from cache or shared; {per_role}); "
            f"tokens {tokens_in:,} in, {tokens_out:,} out; cost {cost}{wall}")


def optimization_heading(o: dict[str, Any], root: Path | None = None) -> str:
    """The line that says what ran and where the lock went (relative to ``root``, where pytest was started)."""
    stopped = "; stopped by the budget, keeping the best instructions so far" if o["stopped"] == "budget" else ""
    resumed = f"; resumed after step {o['resumed_from']}" if o["resumed_from"] and not o["reused"] else ""
    reused = "; this run had finished before: its result is reused, not repeated" if o["reused"] else ""
    where = f"; wrote {relative(o['lock_path'], root)}" if o.get("lock_path") else ""
    sizes = o["split_sizes"]
    return (f"{o['spec']}: mode {o['mode']}, {o['steps_run']} steps, seed {o['seed']} "
            f"(train {sizes['train']}, val {sizes['val']}, test {sizes['test']}){stopped}{resumed}{reused}{where}")


def optimization_block(o: dict[str, Any], root: Path | None = None) -> Block:
    """Before/after on the untouched test split, the instruction diffs, and what the run cost."""
    from .lockfile import instruction_diff

    block = Block(optimization_heading(o, root), [("criterion", "left"), ("val before", "right"), ("val after", "right"),
                                            ("test before", "right"), ("test after", "right"), ("difference", "right"),
                                            ("accepted steps", "left")])
    for name, c in o["criteria"].items():
        b, a, d = c["test_before"], c["test_after"], c["test_diff"]
        block.rows.append([name, fmt(c["val_before"]), fmt(c["val_after"]),
                           f"{fmt(b['value'])} {interval_text(b['low'], b['high'])}",
                           f"{fmt(a['value'])} {interval_text(a['low'], a['high'])}",
                           f"{fmt(d['value'])} {interval_text(d['low'], d['high'])}",
                           ", ".join(map(str, c["accepted_steps"])) or "none"])
    for name, c in o["criteria"].items():
        if c["final"] != c["initial"]:
            block.after += instruction_diff(name, c["initial"], c["final"]).splitlines()
        else:
            reasons = sorted({h["rejected_reasons"][name] for h in o["history"] if h["rejected_reasons"].get(name)})
            block.after.append(f"{name}: unchanged ({'; '.join(reasons) or 'no step proposed a change'})")
    block.after.append(usage_text(o["usage"], o.get("wall_seconds")))
    block.after.append(f"planned per step: {', '.join(f'{k} {v}' for k, v in o['planned_calls_per_step'].items())}")
    return block


def study_block(study: dict[str, Any]) -> Block:
    """The paper's table: per mode and criterion, test rho before and after over runs, and what it cost."""
    block = Block(f"{study['spec']}: {study['runs']} runs per mode, {study['steps']} steps each, test split of "
                  f"{study['test_size']} samples ({study['level']} {study['method']})",
                  [("mode", "left"), ("criterion", "left"), ("before", "right"), ("after (mean ± sd)", "right"),
                   ("improved steps", "right"), ("specificity", "right"), ("calls/run", "right"), ("cost/run", "right")])
    for row in study["rows"]:
        sd = f" ± {row['after_sd']:.3f}" if row["after_sd"] is not None else ""
        block.rows.append([row["mode"], row["criterion"], fmt(row["before"]), fmt(row["after_mean"]) + sd,
                           f"{row['improved_steps']:.1f}", fmt(row["specificity"], 1), f"{row['calls']:.0f}",
                           "-" if row["cost"] is None else f"${row['cost']:.4f}"])
    return block


def calls_line(total: Usage) -> str:
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(total.errors.items()) if count)
    return (f"model calls: {total.calls} made, {total.cache_hits} from cache, {total.retries} retries, "
            f"{sum(total.errors.values())} failed{f' ({kinds})' if kinds else ''}; "
            f"tokens {total.prompt_tokens} in, {total.completion_tokens} out"
            + ("" if total.cost_unknown and not total.cost else f"; cost ${total.cost:.4f}"))


def spec_line(spec: str, evaluations: Sequence[dict[str, Any]], interference: Sequence[dict[str, Any]]) -> str:
    """``-q``: one line per spec, its criteria's verdicts and its merged check's."""
    parts = []
    for ev in evaluations:
        results = ev["results"]
        parts.append(f"{sum(r['passed'] for r in results)}/{len(results)} criteria pass ({ev['split']} split, "
                     f"{ev['records']} samples, {ev['shape']} prompts, {ev['model']})")
        failed = [r["criterion"] for r in results if not r["passed"]]
        if failed:
            parts[-1] += f", failing: {', '.join(failed)}"
    for check in interference:
        held = sum(c["passed"] for c in check["criteria"])
        parts.append(f"merged prompt: {held}/{len(check['criteria'])} criteria hold")
    return f"{spec}: {'; '.join(parts)}"


def summary_sections(found: Mapping[str, Any], *, verbosity: int = 0,
                     root: Path | None = None) -> list[tuple[str, list[Block | str]]]:
    """The sections of the terminal summary, as blocks: the optimizations, the mode studies, agreement (one
    table per spec and per interference check, then the calls), notes. ``-q`` keeps one line per spec.
    Paths are shown relative to ``root`` (where pytest was started)."""
    quiet = verbosity < 0
    optimizations: list[Block | str] = [optimization_heading(o, root) if quiet else optimization_block(o, root)
                                        for o in found["optimizations"]]
    studies: list[Block | str] = [study_block(s).heading if quiet else study_block(s) for s in found["studies"]]
    agreement: list[Block | str] = []
    if quiet:
        specs = dict.fromkeys([ev["spec"] for ev in found["evaluations"]] + [c["spec"] for c in found["interference"]])
        agreement = [spec_line(spec, [ev for ev in found["evaluations"] if ev["spec"] == spec],
                               [c for c in found["interference"] if c["spec"] == spec]) for spec in specs]
    elif found["evaluations"] or found["interference"]:
        agreement = [evaluation_block(ev) for ev in found["evaluations"]]
        agreement += [interference_block(c) for c in found["interference"]]
        total = Usage()
        for usage in found["usage"].values():
            total.add(usage)
        agreement.append(calls_line(total))
    return [("judge optimization", optimizations), ("judge mode study", studies), ("judge agreement", agreement),
            ("judge notes", [f"- {note}" for note in found["notes"]])]


# --------------------------------------------------------------------------------------------
# plain lines, for callers that hold a live result


def optimization_lines(result: Any, verbose: bool = True) -> Iterator[str]:
    """An optimization's summary as plain text: from its JSON form, or from an OptimizationResult."""
    data = result if isinstance(result, dict) else optimization_json(result)
    yield from render([optimization_block(data) if verbose else optimization_heading(data)])
