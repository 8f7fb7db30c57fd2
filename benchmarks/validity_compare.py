"""Validity cases of the paired comparison (compare.py), the ::merged check's verdicts in simulated worlds.

    python benchmarks/validity_compare.py [--quick] [--out DIR]

Synthetic data with a known truth, clustered by document, judged by nobody: the two judges' scores are
drawn, and the package's own functions (compare.compare on Judgment lists, with a spec loaded from a
spec file) give the verdicts. Seeded; writes ``DIR/validity_compare.json`` as
``{"cases": [{"name", "target", "value", "met"}]}`` and ``DIR/validity_compare.md``. Cases:

- false-fail rate with no true drop (both judges drawn alike): at most 5%;
- false-pass rate at a true drop of 2 x max_drop, at the sample size the tool itself says would settle
  an inconclusive verdict (the median of its ``required_n`` over pilot runs): at most 20%;
- the constant-judge world at ``level: group``: judge b agrees as well as a where it varies and answers
  a constant 3 in half the documents; it must never pass.

``CASES`` lists the case functions (each ``case(quick) -> dict``); ``benchmarks/validity.py`` runs them
with the interval cases, so one command gives the whole table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_judgeopt.compare import Configuration, Rules, Side, compare
from pytest_judgeopt.judge import Judgment
from pytest_judgeopt.spec import load_spec

MAX_DROP = 0.05
PER_DOC = 8
SHARED = 0.3  # how much of the two judges' noise is shared (what a paired interval cancels)


def make_spec(folder: Path, level: str) -> Any:
    (folder / "data.jsonl").write_text(json.dumps({"id": "x", "group": "g", "t": "a", "scores": {"c": 1}}) + "\n")
    (folder / f"{level}.judge.yaml").write_text(
        "dataset: {path: data.jsonl, group: group, inputs: {t: t}, scores: scores}\n"
        f"correlation: {{level: {level}}}\n"
        "criteria:\n  c: {instruction: Rate it., scale: [1, 5], min_rho: 0.1}\n")
    return load_spec(folder / f"{level}.judge.yaml")


def draw(rng: np.random.Generator, docs: int, rho_a: float, rho_b: float) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Human latent scores with a document effect; two judges correlated with them at rho_a and rho_b, whose
    noises share SHARED of their variance."""
    n = docs * PER_DOC
    groups = [f"d{k}" for k in range(docs) for _ in range(PER_DOC)]
    human = np.repeat(rng.normal(0, 0.7, docs), PER_DOC) + rng.normal(0, 1, n)
    human = (human - human.mean()) / human.std()
    shared = rng.normal(0, 1, n)
    noise_a = math.sqrt(SHARED) * shared + math.sqrt(1 - SHARED) * rng.normal(0, 1, n)
    noise_b = math.sqrt(SHARED) * shared + math.sqrt(1 - SHARED) * rng.normal(0, 1, n)
    a = rho_a * human + math.sqrt(1 - rho_a ** 2) * noise_a
    b = rho_b * human + math.sqrt(1 - rho_b ** 2) * noise_b
    return groups, human, a, b


def population_drop(rho_a: float, rho_b: float) -> float:
    """The true difference of pooled Spearman rho (a minus b), on one very large draw."""
    from scipy.stats import spearmanr

    _, human, a, b = draw(np.random.default_rng(12345), 25_000, rho_a, rho_b)
    return float(spearmanr(a, human).statistic - spearmanr(b, human).statistic)


def rho_b_for_drop(rho_a: float, drop: float) -> float:
    low, high = 0.0, rho_a
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (low, mid) if population_drop(rho_a, mid) > drop else (mid, high)
    return (low + high) / 2


def verdict(spec: Any, groups: list[str], human: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int,
            rules: Rules) -> tuple[str, int | None]:
    def judged(scores: np.ndarray) -> list[Judgment]:
        return [Judgment(f"r{i}", g, "c", float(h), float(s), None, "", None)
                for i, (g, h, s) in enumerate(zip(groups, human, scores, strict=False))]

    def side(label: str, scores: np.ndarray) -> Side:
        return Side(Configuration(label, {"c": "x"}, label, "m", "parsed"), {"c": judged(scores)})

    result = compare(spec, side("separate", a), side("merged", b), kind="merged", split="test", rules=rules,
                     records=len(groups), seed=seed)
    c = result.criteria["c"]
    return c.verdict, c.required_n


def rate(verdicts: list[str], kind: str) -> float:
    return sum(v == kind for v in verdicts) / len(verdicts)


SEEDS = {"quick": 60, "full": 300}
RULES = Rules(max_drop=MAX_DROP, confidence=0.95, change="merging")


def seed_count(quick: bool) -> int:
    return SEEDS["quick" if quick else "full"]


def no_drop_false_fail(quick: bool = False) -> dict[str, Any]:
    """No true drop: the two judges are drawn alike; how often does the check fail?"""
    seeds = seed_count(quick)
    with tempfile.TemporaryDirectory() as tmp:
        pooled = make_spec(Path(tmp), "pooled")
        verdicts = [verdict(pooled, *draw(np.random.default_rng(s), 12, 0.6, 0.6), s, RULES)[0] for s in range(seeds)]
    value = rate(verdicts, "fail")
    return {"name": f"merged check: false-fail rate with no true drop (12 documents x {PER_DOC}, rho 0.6, "
                    f"max_drop {MAX_DROP:g}, {seeds} seeds; pass {rate(verdicts, 'pass'):.0%}, inconclusive "
                    f"{rate(verdicts, 'inconclusive'):.0%})", "target": "<= 5%", "value": round(value, 4),
            "met": value <= 0.05}


def drop_false_pass(quick: bool = False) -> dict[str, Any]:
    """A true drop of 2 x max_drop, at the size the tool says would settle it: how often does the check pass?"""
    seeds = seed_count(quick)
    rho_b = rho_b_for_drop(0.6, 2 * MAX_DROP)
    with tempfile.TemporaryDirectory() as tmp:
        pooled = make_spec(Path(tmp), "pooled")
        pilot = [verdict(pooled, *draw(np.random.default_rng(10_000 + s), 8, 0.6, rho_b), s, RULES)
                 for s in range(max(20, seeds // 3))]
        needed = [n for kind, n in pilot if kind == "inconclusive" and n is not None]
        suffices = int(statistics.median(needed)) if needed else 12 * PER_DOC
        docs = max(12, math.ceil(suffices / PER_DOC))
        verdicts = [verdict(pooled, *draw(np.random.default_rng(20_000 + s), docs, 0.6, rho_b), s, RULES)[0]
                    for s in range(seeds)]
    value = rate(verdicts, "pass")
    return {"name": f"merged check: false-pass rate at a true drop of 2 x max_drop ({2 * MAX_DROP:g}), at the "
                    f"size the tool says settles it (median required_n {suffices} judged samples over "
                    f"{len(needed)} inconclusive pilots: {docs} documents x {PER_DOC}; {seeds} seeds; fail "
                    f"{rate(verdicts, 'fail'):.0%}, inconclusive {rate(verdicts, 'inconclusive'):.0%})",
            "target": "<= 20%", "value": round(value, 4), "met": value <= 0.20}


def likert(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(3 + 1.2 * x), 1, 5)


def constant_judge(quick: bool = False) -> dict[str, Any]:
    """Level group: judge b is a where it varies, and a constant 3 in half the documents; it must never pass."""
    seeds = seed_count(quick)
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        grouped = make_spec(Path(tmp), "group")
        for s in range(seeds):
            groups, human, a, b = draw(np.random.default_rng(30_000 + s), 24, 0.6, 0.6)
            human, a = likert(human), likert(a)
            b = a.copy()
            constant = np.array([int(g[1:]) % 2 == 1 for g in groups])
            b[constant] = 3.0
            verdicts.append(verdict(grouped, groups, human, a, b, s, RULES)[0])
    passes = sum(v == "pass" for v in verdicts)
    return {"name": f"merged check: constant-judge world at level group (24 documents x {PER_DOC}, judge b "
                    f"constant in 12; {seeds} seeds): passes", "target": "0 (no false pass)",
            "value": passes, "met": passes == 0}


CASES: list[Callable[[bool], dict[str, Any]]] = [no_drop_false_fail, drop_false_pass, constant_judge]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{SEEDS['quick']} seeds per case instead of {SEEDS['full']}")
    parser.add_argument("--out", default=str(Path(__file__).parent), help="folder of validity_compare.json and .md")
    args = parser.parse_args()
    started = time.monotonic()
    cases = [case(args.quick) for case in CASES]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validity_compare.json").write_text(json.dumps({"cases": cases, "seconds": round(time.monotonic() - started, 1),
                                                           "quick": args.quick}, indent=2) + "\n")
    table = ["| case | target | value | met |", "|---|---|---|---|"]
    table += [f"| {c['name']} | {c['target']} | {c['value']} | {'yes' if c['met'] else '**no**'} |" for c in cases]
    (out / "validity_compare.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
