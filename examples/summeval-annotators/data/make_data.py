"""Build expert_consistency.jsonl for the annotators example from the shared SummEval files.

Standard library only. Joins each of the 100 summaries that carry the three experts' individual
consistency ratings (``expert_consistency.jsonl``) with its article and summary text
(``summeval.jsonl``, matched on ``id``), and adds the binary form used by binary.judge.yaml:
``all_five.consistency`` is 1 when all three experts rated the summary 5, else 0.

    python examples/summeval-annotators/data/make_data.py [--shared DIR]

The output is sorted by id and written with sorted keys, so running it again gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parents[3] / "shared" / "data" / "summeval"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="folder holding summeval.jsonl and "
                        "expert_consistency.jsonl (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "expert_consistency.jsonl")
    args = parser.parse_args()
    experts = [json.loads(line) for line in (args.shared / "expert_consistency.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    wanted = {e["id"] for e in experts}
    texts = {}
    with (args.shared / "summeval.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["id"] in wanted:
                texts[record["id"]] = record
    missing = wanted - set(texts)
    if missing:
        raise SystemExit(f"{len(missing)} ids of expert_consistency.jsonl are not in summeval.jsonl, e.g. {sorted(missing)[0]}")
    rows = []
    for e in sorted(experts, key=lambda e: e["id"]):
        record = texts[e["id"]]
        ratings = e["annotators"]["consistency"]
        mean = sum(ratings) / len(ratings)
        if abs(mean - record["scores"]["consistency"]) > 1e-9:
            raise SystemExit(f"{e['id']}: the experts' mean {mean} is not summeval.jsonl's {record['scores']['consistency']}")
        rows.append({"id": e["id"], "group": e["group"], "system": record["system"], "source": record["source"],
                     "summary": record["output"], "experts": {"consistency": ratings},
                     "all_five": {"consistency": int(all(r == 5 for r in ratings))}})
    args.out.write_text("".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} records to {args.out} ({sum(r['all_five']['consistency'] for r in rows)} rated 5 by all three)")


if __name__ == "__main__":
    main()
