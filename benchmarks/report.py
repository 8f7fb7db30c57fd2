"""results.json and the Markdown table the README quotes: machine, versions, settings, load, medians."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from common import ROOT, Row, Settings

PACKAGES = ("pytest-judgeopt", "litellm", "openai", "aiohttp", "httpx", "scipy", "numpy", "pytest", "llama_cpp_python")


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")))
        memory = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "os": platform.platform(), "python": platform.python_version()}


def versions(extra: dict[str, str]) -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out.update(extra)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pytest_judgeopt"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        out["commit"] = commit + (" (+ uncommitted changes in pytest_judgeopt/)" if dirty else "")
    except OSError:
        pass
    return out


def number(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("s",):
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.1f} ms" if abs(value) < 20 else f"{value:.0f} ms"
    if unit == "x":
        return f"{value:.2f} x"
    if unit == "rho":
        return f"{value:.3f}"
    return f"{value:.3g} {unit}"


def verdict(row: Row) -> str:
    if row.met is None:
        return ""
    return "met" if row.met else "**missed**"


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    s = meta["settings"]
    m = meta["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}; {m['os']}; Python {m['python']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".  ",
        f"Settings: latency {1000 * s['latency']:.0f} ms per call, concurrency C={s['concurrency']} "
        f"(optimization steps of case 2: C={s['step_concurrency']}), medians of {s['repeats']} runs unless the runs "
        f"column says otherwise{', QUICK (reduced sizes)' if s['quick'] else ''}.  ",
        f"Load average (1, 5, 15 min) at the start {fmt_load(meta['load_start'])}, at the end {fmt_load(meta['load_end'])} "
        f"(2 cores: above 2 means other work competed for the CPU). Total run {meta['total_s'] / 60:.1f} min.  ",
        f"Command: `{meta['command']}`",
        "",
        "| case | measure | median | ideal | ratio | target | result | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else ""
        ideal = number(row.ideal, row.unit) if row.ideal is not None else ""
        lines.append(f"| {row.case} | {row.measure} | {row.shown or number(row.value, row.unit)} | {ideal} | {ratio} | "
                     f"{row.target} | {verdict(row)} | {row.repeats} |")
    notes = [(row.case, row.note) for row in rows if row.note]
    if notes:
        lines += ["", "## Notes", ""]
        seen = set()
        for case, note in notes:
            if note in seen:
                continue
            seen.add(note)
            lines.append(f"- **{case}.** {note}")
    return "\n".join(lines) + "\n"


def fmt_load(load: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def write(out_dir: Path, rows: list[Row], meta: dict[str, Any]) -> tuple[Path, Path]:
    results = out_dir / "results.json"
    table = out_dir / "results.md"
    results.write_text(json.dumps({**meta, "rows": [r.to_json() for r in rows]}, indent=1, default=str) + "\n")
    table.write_text(markdown(rows, meta))
    return results, table


def settings_json(settings: Settings) -> dict[str, Any]:
    return dict(vars(settings))
