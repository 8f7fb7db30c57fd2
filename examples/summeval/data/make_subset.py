"""Build the small SummEval example subset used by the pytest_judgeopt examples.

Why: the full SummEval file (1,600 summaries, ~9 MB) is too big to ship with the
examples and too slow to send through an LLM judge in a demo. This script keeps a
small, document-disjoint subset instead: N whole documents (each with the same M
systems), so that per-document (summary-level) correlations and group-wise
train/test splits still work. The selection is deterministic (seeded
``random.Random``), so anyone can regenerate the exact same file.

Selection:
1. sort the distinct document ids (``group``) and pick N with ``rng.sample``;
2. sort the distinct systems and pick M with the same ``rng``; the sorted list of
   M systems is used for every chosen document (N x M records).

Each output record holds exactly ``id``, ``group``, ``system``, ``source``,
``summary`` (the source file's ``output`` field) and ``scores`` (the mean of the 3
expert ratings for coherence, consistency, fluency, relevance, on 1-5, kept as
they are). Records are sorted by (group, system).

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SEED = 2021
CRITERIA = ("coherence", "consistency", "fluency", "relevance")
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]  # <repo>/examples/summeval/data -> <repo>
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "summeval" / "summeval.jsonl"
DEFAULT_OUT = HERE / "summeval_subset.jsonl"


def load(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file into a list of dicts."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def select(
    records: list[dict[str, Any]], n_documents: int, n_systems: int, seed: int = SEED
) -> tuple[list[str], list[str]]:
    """Pick documents, then systems, with one seeded rng; return both sorted."""
    rng = random.Random(seed)
    groups = sorted({r["group"] for r in records})
    systems = sorted({r["system"] for r in records})
    chosen_groups = sorted(rng.sample(groups, n_documents))
    chosen_systems = sorted(rng.sample(systems, n_systems))
    return chosen_groups, chosen_systems


def to_subset_record(r: dict[str, Any]) -> dict[str, Any]:
    """Keep only the fields the examples need (drops references and meta)."""
    scores = {c: r["scores"][c] for c in CRITERIA}
    for c, v in scores.items():
        if not 1.0 <= v <= 5.0:
            raise ValueError(f"{r['id']}: {c}={v} outside [1, 5]")
    return {
        "id": r["id"],
        "group": r["group"],
        "system": r["system"],
        "source": r["source"],
        "summary": r["output"],
        "scores": scores,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="full summeval.jsonl (default: %(default)s)")
    parser.add_argument("--documents", type=int, default=24, help="number of documents (default: 24)")
    parser.add_argument("--systems", type=int, default=8, help="systems per document (default: 8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSONL (default: %(default)s)")
    args = parser.parse_args(argv)

    records = load(args.source)
    groups, systems = select(records, args.documents, args.systems)
    wanted_groups, wanted_systems = set(groups), set(systems)
    subset = sorted(
        (to_subset_record(r) for r in records
         if r["group"] in wanted_groups and r["system"] in wanted_systems),
        key=lambda r: (r["group"], r["system"]),
    )
    expected = len(groups) * len(systems)
    if len(subset) != expected:
        raise SystemExit(f"expected {expected} records, got {len(subset)}")
    if len({r["id"] for r in subset}) != len(subset):
        raise SystemExit("duplicate ids in subset")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        for r in subset:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {len(subset)} records, {len(groups)} documents, "
          f"{len(systems)} systems ({', '.join(systems)}), {size} bytes")


if __name__ == "__main__":
    main()
