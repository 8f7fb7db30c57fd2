"""What a run measured: the terminal summary, and ``results.json`` and ``predictions.jsonl`` for machines.

Everything here works on the JSON form of the results (plain dicts), never on live objects:
under pytest-xdist the workers measure and the controller reports, so what a worker ships is
exactly what a serial run would report from. Merging sorts and deduplicates, so the summary
and the files do not depend on which worker ran which item, nor in what order.

The tables themselves, their numbers and colours, come from text.py, which the HTML page and the
items' failure messages share; here they are arranged into the summary's sections.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .optimize_text import instruction_changes, optimization_heading, optimization_table, study_table, usage_text
from .replies import Usage
from .text import (
    Line,
    Table,
    by_spec,
    cases_table,
    comparison_table,
    evaluation_table,
    instruction_sources,
    interference_table,
    probes_table,
    relative,
    render,
)

SCHEMA_VERSION = 2  # of results.json; schemas/results.schema.json describes it (2: comparisons, data_hash, scoring)


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
        "comparisons": unique_sorted(every("comparisons"), lambda c: (c["path"], c["kind"], c["b"]["label"])),
        "cases": unique_sorted(every("cases"), lambda c: (c["path"], c["case"])),
        "probes": unique_sorted(every("probes"), lambda p: (p["path"], p["line"], p["probe"])),
        "optimizations": unique_sorted(every("optimizations"), lambda o: (o["path"], o["mode"], o["seed"])),
        "studies": unique_sorted(every("studies"), lambda s: (s["spec"],)),
        "notes": sorted(set(every("notes"))),
        "usage": dict(sorted(usage.items())),
    }


# --------------------------------------------------------------------------------------------
# the files


def package_version() -> str:
    from . import __version__

    return __version__


def results_document(found: Mapping[str, Any], *, root: Path | None = None, run_seconds: float | None = None) -> dict[str, Any]:
    """results.json: everything measured, in the layout of schemas/results.schema.json. Per-sample rows go to
    predictions.jsonl instead; wall times are gathered under ``timing``, the only part two identical runs differ in."""
    def without(entry: dict[str, Any], *keys: str) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k not in keys}

    evaluations = [{**without(ev, "predictions"), "path": relative(ev["path"], root)} for ev in found["evaluations"]]
    interference = [{**without(c, "predictions", "comparison"), "path": relative(c["path"], root)}
                    for c in found["interference"]]
    cases = [{**c, "path": relative(c["path"], root), "file": relative(c["file"], root)} for c in found.get("cases", [])]
    probes = [{**p, "path": relative(p["path"], root)} for p in found.get("probes", [])]
    optimizations = []
    for o in found["optimizations"]:
        lock = o.get("lock_path")
        optimizations.append({**without(o, "wall_seconds", "comparison"), "path": relative(o["path"], root),
                              "lock_path": None if lock is None else relative(lock, root)})
    # every paired comparison, each with its two configurations: this run's baseline and model comparisons
    # (first, in the order predictions.jsonl's "comparison" rows index), then the merged checks, the optimizations
    compared = [without(c, "predictions") for c in found["comparisons"]]
    compared += [c["comparison"] for c in found["interference"] if c.get("comparison")]
    compared += [o["comparison"] for o in found["optimizations"] if o.get("comparison")]
    comparisons = [{**c, "path": relative(c["path"], root)} for c in compared]
    return {
        "version": SCHEMA_VERSION,
        "generator": f"pytest-judgeopt {package_version()}",
        "evaluations": evaluations,
        "interference": interference,
        "cases": cases,
        "probes": probes,
        "comparisons": comparisons,
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
    sources += [("comparison", i, c, c["b"]["shape"]) for i, c in enumerate(found["comparisons"])]
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
    for name, text in (("results.json", json.dumps(document, indent=2, sort_keys=True) + "\n"),
                       ("predictions.jsonl", "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)),
                       ("index.html", render_html(document, rows))):
        write_atomic(folder / name, text)  # a CI artifact for people to open: the umask's mode
        written.append(folder / name)
    return written


# --------------------------------------------------------------------------------------------
# the terminal summary: tables and lines from text.py, rendered by rich


def optimization_block(o: dict[str, Any], root: Path | None = None) -> Table:
    """Before/after on the untouched test split, the instruction diffs, and what the run cost."""
    table = optimization_table(o, root)
    for lines in instruction_changes(o).values():
        table.after += lines
    table.after.append(Line(usage_text(o["usage"], o.get("wall_seconds"))))
    table.after.append(Line(f"planned per step: {', '.join(f'{k} {v}' for k, v in o['planned_calls_per_step'].items())}"))
    return table


def evaluation_block(ev: dict[str, Any]) -> Table:
    table = evaluation_table(ev)
    sources = instruction_sources(ev)
    if sources:
        table.after.append(Line(sources))
    return table


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
                     root: Path | None = None) -> list[tuple[str, list[Table | str]]]:
    """The sections of the terminal summary, as blocks: the optimizations, the mode studies, agreement (one
    table per spec and per interference check, then the calls), notes. ``-q`` keeps one line per spec.
    Paths are shown relative to ``root`` (where pytest was started)."""
    quiet = verbosity < 0
    optimizations: list[Table | str] = [optimization_heading(o, root) if quiet else optimization_block(o, root)
                                        for o in found["optimizations"]]
    studies: list[Table | str] = [study_table(s).heading if quiet else study_table(s) for s in found["studies"]]
    agreement: list[Table | str] = []
    if quiet:
        specs = dict.fromkeys([ev["spec"] for ev in found["evaluations"]] + [c["spec"] for c in found["interference"]])
        agreement = [spec_line(spec, [ev for ev in found["evaluations"] if ev["spec"] == spec],
                               [c for c in found["interference"] if c["spec"] == spec]) for spec in specs]
    elif found["evaluations"] or found["interference"] or found["comparisons"]:
        agreement = [evaluation_block(ev) for ev in found["evaluations"]]
        agreement += [interference_table(c) for c in found["interference"]]
        agreement += [comparison_table(c) for c in found["comparisons"]]
        total = Usage()
        for usage in found["usage"].values():
            total.add(usage)
        agreement.append(calls_line(total))
    case_tables = [cases_table(group) for group in by_spec(found.get("cases", [])).values()]
    probe_tables = [probes_table(group) for group in by_spec(found.get("probes", [])).values()]
    cases: list[Table | str] = [t.heading for t in case_tables] if quiet else list(case_tables)
    probes: list[Table | str] = [t.heading for t in probe_tables] if quiet else list(probe_tables)
    return [("judge optimization", optimizations), ("judge mode study", studies), ("judge agreement", agreement),
            ("judge cases", cases), ("judge probes", probes), ("judge notes", [f"- {note}" for note in found["notes"]])]


# --------------------------------------------------------------------------------------------
# plain lines, for callers that hold a live result


def optimization_lines(result: Any, verbose: bool = True) -> Iterator[str]:
    """An optimization's summary as plain text: from its JSON form, or from an OptimizationResult."""
    data = result if isinstance(result, dict) else optimization_json(result)
    yield from render([optimization_block(data) if verbose else optimization_heading(data)])
