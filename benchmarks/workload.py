"""The benchmarks' inputs: SummEval-shaped datasets and copies of the example spec that point at them.

Every case judges the example's own spec (its criteria, judge settings and optimizer
settings), changed only where the case needs it: the data file, the split, the model (the
benchmark server) and, for the steps, the batch size.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SPEC = ROOT / "examples" / "summeval" / "summeval.judge.yaml"
SUMMEVAL = ROOT.parent / "shared" / "data" / "summeval" / "summeval.jsonl"
EXAMPLE_DATA = ROOT / "examples" / "summeval" / "data" / "summeval_subset.jsonl"


def summeval_records() -> list[dict[str, Any]]:
    """The 1,600 SummEval records when the shared copy is there, else the example's 192 (same fields)."""
    if SUMMEVAL.is_file():
        rows = [json.loads(line) for line in SUMMEVAL.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [{"id": r["id"], "group": r["group"], "source": r["source"], "output": r["output"], "scores": r["scores"]}
                for r in rows]
    rows = [json.loads(line) for line in EXAMPLE_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"id": r["id"], "group": r["group"], "source": r["source"], "output": r["summary"], "scores": r["scores"]}
            for r in rows]


def by_document(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    return groups


def distinct_summaries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per distinct summary: two systems that wrote the same summary would make the same prompt,
    which the client asks once, and the benchmark would count fewer calls than judgments."""
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["output"] not in seen:
            seen.add(r["output"])
            out.append(r)
    return out


def documents_by_systems(documents: int, per_document: int) -> list[dict[str, Any]]:
    """``documents`` x ``per_document`` real records; with only the example's data, documents are reused under new ids."""
    groups = [distinct_summaries(rows) for rows in by_document(summeval_records()).values()]
    out = []
    for d in range(documents):
        rows = groups[d % len(groups)]
        for s in range(per_document):
            r = dict(rows[s % len(rows)])
            if d >= len(groups) or s >= len(rows):  # a repeat: a new id and group, the same texts
                r.update(id=f"{r['id']}#{d}-{s}", group=f"{r['group']}#{d}")
            out.append(r)
    return out


def synthetic_records(n: int, per_document: int = 8, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``n`` records with SummEval's field shapes and lengths (about 2,000 and 350 characters), made up."""
    rng = random.Random(seed)
    words = ("the", "council", "said", "on", "monday", "that", "a", "new", "report", "shows", "police", "found",
             "two", "men", "after", "storm", "city", "officials", "will", "review", "plans", "for", "school")
    source = ""
    for i in range(n):
        if i % per_document == 0:
            source = " ".join(rng.choice(words) for _ in range(380)) + "."
        summary = " ".join(rng.choice(words) for _ in range(65)) + "."
        scores = {c: float(rng.randint(1, 5)) for c in ("coherence", "consistency", "fluency", "relevance")}
        yield {"id": f"s{i}", "group": f"d{i // per_document}", "source": source, "output": summary, "scores": scores}


def write_jsonl(path: Path, records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for r in records:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_spec(folder: Path, data: Path | str, base_url: str | None, *, split: dict[str, float], criteria: list[str] | None = None,
               batch_size: int | None = None, name: str = "bench", summary_field: str = "output") -> Path:
    """A copy of the example spec judging ``data`` (a path, or one relative to the spec) on the benchmark server,
    or with the embedded model when ``base_url`` is None."""
    spec = yaml.safe_load(EXAMPLE_SPEC.read_text(encoding="utf-8"))
    spec["name"] = name
    # the example's cases name its own records and its probe adds calls: the benchmarks time the judge pass alone
    spec.pop("cases", None)
    spec.pop("probes", None)
    if base_url is None:  # the embedded model
        spec.pop("model", None)
    else:
        spec["model"] = {"name": "openai/bench", "api_base": base_url, "api_key": "sk-bench"}
    spec["dataset"] = {**spec["dataset"], "path": str(data), "inputs": {"source": "source", "summary": summary_field}}
    spec["split"] = {**split, "seed": spec["split"].get("seed", 0)}
    if criteria is not None:
        spec["criteria"] = {c: spec["criteria"][c] for c in criteria}
    if batch_size is not None:
        spec["optimize"] = {**spec.get("optimize", {}), "batch_size": batch_size}
    path = folder / f"{name}.judge.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def example_criteria() -> list[str]:
    return list(yaml.safe_load(EXAMPLE_SPEC.read_text(encoding="utf-8"))["criteria"])
