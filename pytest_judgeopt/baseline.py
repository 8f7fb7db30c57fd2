"""An earlier run as a baseline: the folder ``--judge-report`` wrote, read back for ``--judge-baseline``.

A baseline is what a judge scored before (main's nightly report, kept as a CI artifact): its
``results.json`` says per spec which instructions, prompt shape, model and scoring were judged,
and ``predictions.jsonl`` holds every judgment. The judge's scores are read from the predictions,
never recomputed, so the comparison is with what the earlier run really answered. Anything missing
or malformed is an error naming the file (and the line or field) and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compare import Configuration
from .judge import Judgment

READABLE_VERSIONS = (1, 2)  # results.json versions whose evaluations and predictions this reads
FIX = "pass --judge-baseline a folder written by an earlier run's --judge-report (results.json and predictions.jsonl)"


class BaselineError(Exception):
    """A baseline folder that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class BaselineSpec:
    """One spec's judgments in the baseline: the evaluation of its items (test split, every criterion)."""

    name: str
    path: str  # relative to the rootdir of the run that wrote it
    split: str
    configuration: Configuration
    judgments: dict[str, list[Judgment]]
    records: int


@dataclass(frozen=True)
class BaselineRun:
    folder: Path
    version: int
    generator: str
    specs: tuple[BaselineSpec, ...]

    def find(self, path: str, name: str) -> BaselineSpec | None:
        """The baseline of a spec: by its path relative to the rootdir, else by its name when that is unique."""
        by_path = [s for s in self.specs if s.path == path]
        if by_path:
            return by_path[0]
        by_name = [s for s in self.specs if s.name == name]
        return by_name[0] if len(by_name) == 1 else None


def read_baseline(folder: Path) -> BaselineRun:
    """Read and check a report folder; raises BaselineError naming the file, the line or field, and the fix."""
    if not folder.is_dir():
        raise BaselineError(f"{folder}: no such folder. Fix: {FIX}")
    results_path, predictions_path = folder / "results.json", folder / "predictions.jsonl"
    for path in (results_path, predictions_path):
        if not path.is_file():
            raise BaselineError(f"{path}: not found. Fix: {FIX}")
    try:
        document = json.loads(results_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise BaselineError(f"{results_path}{f':{line}' if line else ''}: not JSON ({exc}). Fix: {FIX}") from None
    if not isinstance(document, dict):
        raise BaselineError(f"{results_path}: expected a JSON object. Fix: {FIX}")
    version = document.get("version")
    if version not in READABLE_VERSIONS:
        raise BaselineError(f"{results_path}: version: {version!r} is not one this pytest-judgeopt reads "
                            f"({', '.join(map(str, READABLE_VERSIONS))}). Fix: make the baseline with this version's "
                            "--judge-report")
    evaluations = document.get("evaluations")
    if not isinstance(evaluations, list):
        raise BaselineError(f"{results_path}: evaluations: missing or not a list. Fix: {FIX}")
    rows = read_predictions(predictions_path)
    specs = []
    for index, entry in chosen_evaluations(results_path, evaluations):
        specs.append(baseline_spec(results_path, predictions_path, index, entry, rows.get(index, [])))
    return BaselineRun(folder, version, str(document.get("generator", "")), tuple(specs))


def read_predictions(path: Path) -> dict[int, list[dict[str, Any]]]:
    """predictions.jsonl's rows of evaluations, by the index of their entry in results.json."""
    out: dict[int, list[dict[str, Any]]] = {}
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BaselineError(f"{path}:{number}: not JSON ({exc.msg}). Fix: {FIX}") from None
            if not isinstance(row, dict):
                raise BaselineError(f"{path}:{number}: expected a JSON object. Fix: {FIX}")
            if row.get("source") != "evaluation":
                continue
            for key in ("index", "criterion", "record_id", "human"):
                if key not in row:
                    raise BaselineError(f"{path}:{number}: {key}: missing. Fix: {FIX}")
            score = row.get("judge")
            if score is not None and not isinstance(score, (int, float)):
                raise BaselineError(f"{path}:{number}: judge: {score!r} is not a number or null. Fix: {FIX}")
            out.setdefault(int(row["index"]), []).append(row)
    return out


def chosen_evaluations(path: Path, evaluations: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    """Per spec, the evaluation of its items: the test split, the instructions in force (not a fixture's
    ``instruction=`` argument), as many criteria as any; the first such entry."""
    best: dict[str, tuple[int, dict[str, Any]]] = {}
    for index, entry in enumerate(evaluations):
        where = f"{path}: evaluations[{index}]"
        if not isinstance(entry, dict):
            raise BaselineError(f"{where}: expected an object. Fix: {FIX}")
        for key in ("spec", "path", "split", "shape", "model", "results"):
            if key not in entry:
                raise BaselineError(f"{where}.{key}: missing. Fix: {FIX}")
        if not isinstance(entry["results"], list) or not all(isinstance(r, dict) and "criterion" in r and "instruction" in r
                                                             for r in entry["results"]):
            raise BaselineError(f"{where}.results: expected a list of criterion results (criterion, instruction). "
                                f"Fix: {FIX}")
        if entry["split"] != "test" or any(r.get("instruction_source") == "argument" for r in entry["results"]):
            continue
        held = best.get(entry["path"])
        if held is None or len(entry["results"]) > len(held[1]["results"]):
            best[entry["path"]] = (index, entry)
    return sorted(best.values(), key=lambda pair: pair[0])


def reply_counts(row: dict[str, Any]) -> dict[str, Any]:
    """judge.n's replies and the kinds of those that failed, as an earlier run wrote them (rows written before
    they were recorded count as one reply each)."""
    replies, failed = row.get("replies"), row.get("failed_replies")
    if not isinstance(replies, int) or isinstance(replies, bool) or replies < 1:
        return {}
    kinds = tuple(str(kind) for kind in failed) if isinstance(failed, list) else ()
    return {"replies": replies, "failed_replies": kinds}


def baseline_spec(results_path: Path, predictions_path: Path, index: int, entry: dict[str, Any],
                  rows: list[dict[str, Any]]) -> BaselineSpec:
    criteria = [r["criterion"] for r in entry["results"]]
    judgments: dict[str, list[Judgment]] = {c: [] for c in criteria}
    for row in rows:
        if row["criterion"] in judgments:
            judgments[row["criterion"]].append(Judgment(
                record_id=str(row["record_id"]), group=str(row.get("group", row["record_id"])), criterion=row["criterion"],
                human=float(row["human"]), score=None if row.get("judge") is None else float(row["judge"]),
                failure=row.get("failure"), detail="", reply=row.get("reply"), scoring=row.get("scoring"),
                outside=None if row.get("outside") is None else float(row["outside"]), **reply_counts(row)))
    empty = [c for c, found in judgments.items() if not found]
    if empty:
        raise BaselineError(f"{predictions_path}: no judgments of {', '.join(empty)} for evaluations[{index}] of "
                            f"{results_path.name} (spec {entry['spec']}). Fix: keep the folder's results.json and "
                            "predictions.jsonl together, from one run")
    configuration = Configuration(label="baseline", instructions={r["criterion"]: r["instruction"] for r in entry["results"]},
                                  shape=entry["shape"], model=str(entry["model"]), scoring=str(entry.get("scoring", "unknown")),
                                  data_hash=entry.get("data_hash"))
    return BaselineSpec(name=entry["spec"], path=entry["path"], split=entry["split"], configuration=configuration,
                        judgments=judgments, records=int(entry.get("records", 0)))
