"""Where a missed target's time goes: py-spy samples a fresh run of that one case, and the stacks are
summarised by who owns the time (litellm and its HTTP stack, the answer cache, statistics, imports,
this project's own code). py-spy samples only the thread holding the GIL (--gil), so the shares are
shares of the CPU the measured process used; the benchmark server's process is left out."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from common import HERE, ROOT

# the first frame, from the root of the stack down, that belongs to one of these owns the sample
LITELLM = "litellm + OpenAI/HTTP client"
LIBRARIES = (
    (LITELLM, re.compile(r"\((litellm|openai|httpx\d?|aiohttp|httpcore)[/_]|litellm")),
    ("answer cache (sqlite, json)", re.compile(r"\(pytest_judgeopt/cache\.py")),
    ("statistics (scipy, numpy)", re.compile(r"\((scipy|numpy)/|\(pytest_judgeopt/stats\.py")),
)
PROJECT = re.compile(r"\(pytest_judgeopt/")
SERVER = re.compile(r"fake_llm\.py|socketserver\.py|http/server\.py|\(server\.py|server\.py --latency")


def owner(frames: list[str]) -> str:
    if not any("(" in f for f in frames):
        return "native code (no Python frame: sqlite, json, sockets, the interpreter)"
    for frame in frames:
        if "_find_and_load" in frame:
            return "import (module loading)"
        if frame.startswith("LLM._request (") and not any(f.startswith("to_reply (") for f in frames):
            return LITELLM  # everything below our one call into litellm is litellm's
        for name, pattern in LIBRARIES:
            if pattern.search(frame):
                return name
    if any(PROJECT.search(f) for f in frames):
        return "this project's code (and the asyncio work it schedules)"
    if frames and "asyncio/" in frames[-1]:
        return "asyncio event loop"
    return "other (interpreter, threads, benchmark harness)"


def summarise(raw: Path, top: int = 6, *, imports: bool = True) -> dict[str, Any]:
    """Shares of the samples by owner; ``imports=False`` leaves out module loading (once per process, not per pass)."""
    owners: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = skipped = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        if SERVER.search(stack):
            continue  # the benchmark's own server process: not the code under test
        if not imports and ("_find_and_load" in stack or "import_litellm" in stack):
            skipped += n
            continue
        frames = [f for f in stack.split(";") if "threading.py" not in f and not f.startswith("process ")]
        total += n
        owners[owner(frames)] += n
        mine = [f for f in frames if PROJECT.search(f)]
        if mine:
            ours[re.sub(r":\d+\)", ")", mine[-1])] += n  # the deepest of our frames: where our code handed off
    return {"samples": total, "import_samples_left_out": skipped,
            "owners": {name: round(n / total, 3) for name, n in owners.most_common()} if total else {},
            "deepest_project_frames": {name: round(n / total, 3) for name, n in ours.most_common(top)} if total else {}}


def profile(command: list[str], raw: Path, *, imports: bool = True) -> dict[str, Any] | None:
    """Run ``command`` (and its child processes) under py-spy and summarise; None when py-spy is not installed."""
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    done = subprocess.run([spy, "record", "--gil", "--subprocesses", "--rate", "250", "--format", "raw",
                           "--output", str(raw), "--", *command], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])})
    if done.returncode != 0 or not raw.exists():
        return {"error": (done.stderr or done.stdout)[-500:]}
    return summarise(raw, imports=imports)
