"""Case 4: what the plugin adds to ``pytest --collect-only -q`` in a project with 50 spec files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import Context, Row, median
from workload import EXAMPLE_DATA, write_spec

SPECS = 50
TARGET_MS = 100.0


def build(ctx: Context) -> Path:
    """50 copies of the example spec (each its own name) over the example's 192 records, and a pytest.ini
    so this project, not the repository, is the rootdir."""
    project = ctx.scratch / "startup"
    (project / "judges").mkdir(parents=True, exist_ok=True)
    data = project / "judges" / "data.jsonl"
    shutil.copy(EXAMPLE_DATA, data)
    for i in range(SPECS):
        write_spec(project / "judges", "data.jsonl", ctx.server.base_url, split={"train": 0.25, "val": 0.25, "test": 0.5},
                   name=f"judge{i:02d}", summary_field="summary")
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_plain.py").write_text("def test_nothing():\n    pass\n")
    return project


def collect(project: Path, *, plugin: bool) -> tuple[float, str]:
    """One ``pytest --collect-only -q``, with or without this plugin and no other installed plugin: the others
    (Hypothesis imports itself at every session's end) add half a second of noise to both sides alike."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    which = ["-p", "pytest_judgeopt.plugin"] if plugin else ["-p", "no:judgeopt"]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *which],
                          cwd=project, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"pytest --collect-only failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall, done.stdout.strip().splitlines()[-1]


def plugin_import_ms() -> float:
    """The plugin module's own import time, from ``python -X importtime`` (pytest itself already imported)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pytest; import pytest_judgeopt.plugin"],
                          capture_output=True, text=True)
    for line in done.stderr.splitlines():
        if line.rstrip().endswith("| pytest_judgeopt.plugin"):
            return int(line.split("|")[1]) / 1000
    return float("nan")


BREAKDOWN = """
import glob, json, time
t = time.perf_counter(); import pytest; pytest_s = time.perf_counter() - t
t = time.perf_counter(); import pytest_judgeopt.plugin; plugin_s = time.perf_counter() - t
t = time.perf_counter(); import pytest_judgeopt.defaults; configure_s = time.perf_counter() - t
t = time.perf_counter(); from pytest_judgeopt.session import Session; session = Session(); session_s = time.perf_counter() - t
specs = sorted(glob.glob("judges/*.judge.yaml"))
t = time.perf_counter(); session.load(specs[0]); first_s = time.perf_counter() - t
t = time.perf_counter()
for spec in specs[1:]:
    session.load(spec)
rest_s = (time.perf_counter() - t) / (len(specs) - 1)
print(json.dumps({"import the plugin module": plugin_s, "pytest_configure (registers the defaults)": configure_s,
                  "import the session (judge, llm, ...)": session_s, "first spec (imports jsonschema)": first_s,
                  "each further spec (YAML, schema, 192 records)": rest_s}))
"""


def breakdown(project: Path) -> dict[str, float]:
    """Where the plugin's time goes, measured in one process: imports, the first spec, each further spec (ms)."""
    done = subprocess.run([sys.executable, "-c", BREAKDOWN], cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        return {}
    return {name: 1000 * seconds for name, seconds in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def added(project: Path, rounds: int) -> tuple[float, list[float], list[float], str]:
    """Median time the plugin adds to collection in ``project``, with both series of wall times (s)."""
    collect(project, plugin=True)  # the first run writes bytecode caches: not what a developer's next run pays
    with_plugin, without = [], []
    summary = ""
    for _ in range(rounds):  # alternated, so a change in the machine's load hits both alike
        wall, summary = collect(project, plugin=True)
        with_plugin.append(wall)
        without.append(collect(project, plugin=False)[0])
    return 1000 * (median(with_plugin) - median(without)), with_plugin, without, summary


def startup_rows(ctx: Context) -> list[Row]:
    s = ctx.settings
    rounds = max(3, 2 * s.repeats + 1)
    project = build(ctx)
    added_ms, with_plugin, without, summary = added(project, rounds)
    ctx.log(f"  collect-only, {SPECS} specs: with plugin {median(with_plugin):.3f} s, without {median(without):.3f} s ({summary})")
    plain = ctx.scratch / "startup-plain"
    plain.mkdir(parents=True, exist_ok=True)
    (plain / "pytest.ini").write_text("[pytest]\n")
    (plain / "test_plain.py").write_text("def test_nothing():\n    pass\n")
    plain_ms, plain_with, plain_without, _ = added(plain, rounds)
    ctx.log(f"  collect-only, no spec: the plugin adds {plain_ms:.0f} ms")
    return [Row("4. start-up", f"pytest --collect-only -q, {SPECS} spec files: time the plugin adds (other plugins off)",
                added_ms, "ms", None,
                f"< {TARGET_MS:g} ms", added_ms < TARGET_MS, rounds,
                [1000 * (a - b) for a, b in zip(with_plugin, without, strict=True)],
                details={"with_plugin_s": with_plugin, "without_plugin_s": without, "collected": summary,
                         "plugin_import_ms": plugin_import_ms(), "per_spec_ms": added_ms / SPECS,
                         "breakdown": breakdown(project)}),
            Row("4. start-up", "the same, a project with no spec files (what every other project pays)", plain_ms, "ms",
                None, f"< {TARGET_MS:g} ms", plain_ms < TARGET_MS, rounds,
                [1000 * (a - b) for a, b in zip(plain_with, plain_without, strict=True)],
                details={"with_plugin_s": plain_with, "without_plugin_s": plain_without})]
