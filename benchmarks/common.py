"""What every case shares: the run's settings, the server, a scratch folder, timing and a result row."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server import Server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Settings:
    latency: float = 0.1
    concurrency: int = 32
    step_concurrency: int = 128
    repeats: int = 3
    quick: bool = False
    embedded: bool = True
    textgrad: bool = True
    profile: bool = True


@dataclass
class Context:
    settings: Settings
    server: Server
    scratch: Path
    log: Callable[[str], None] = print


@dataclass
class Row:
    """One line of the table: a measured figure, its ideal, their ratio and whether the target holds."""

    case: str
    measure: str
    value: float | None
    unit: str
    ideal: float | None = None
    target: str = ""
    met: bool | None = None
    repeats: int = 1
    runs: list[float] = field(default_factory=list)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    shown: str = ""  # how the table shows the figure, where a number alone would not say it (before -> after)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ideal:
            return None
        return self.value / self.ideal

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "measure": self.measure, "value": self.value, "unit": self.unit, "ideal": self.ideal,
                "ratio": self.ratio, "target": self.target, "met": self.met, "repeats": self.repeats, "runs": self.runs,
                "shown": self.shown, "note": self.note, "details": self.details}


def median(values: list[float]) -> float:
    return statistics.median(values)


class Stopwatch:
    """Wall and CPU time of a block: CPU over wall tells a CPU-bound run from one waiting on the model."""

    def __enter__(self) -> Stopwatch:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def run_worker(args: list[str], *, python: str = sys.executable, env: dict[str, str] | None = None,
               timeout: float = 900) -> dict[str, Any]:
    """Run a benchmark worker in a fresh interpreter; it prints one JSON object as its last line."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([python, *args], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])
