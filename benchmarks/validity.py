"""The validity benchmark (issue 11): are the verdicts' statistical claims true where the truth is known?

    python benchmarks/validity.py [--quick] [--out DIR]

Synthetic data with a known true correlation, clustered by document, judged by nobody: human and judge
scores are drawn, seeded, and the package's own functions give the numbers (``stats.agreement`` and
``stats.paired_difference`` with the settings of a loaded spec, ``judge.assess`` for the verdict of a
``lower_bound`` gate). One command gives the whole table: the interval cases here, then the ``::merged``
check's cases (``validity_compare.CASES``) and the optimizer gate's (``validity_optimizer.CASES``), each
of which also runs on its own. Writes ``DIR/validity.json`` as ``{"cases": [{"name", "target", "value",
"met"}]}`` and ``DIR/validity.md`` (the table, how it was run, the machine's load average).

The world: a document has 8 samples. Human score = document effect + within-document noise; the judge's
score has a document effect of its own (correlated with the human one, rho 0.6) and within-document noise
correlated with the human noise at a rate that differs between documents (Fisher z spread 0.3 around
0.5), so documents differ in how hard they are, and samples of one document are not independent. Human
scores are averages of three 1-5 ratings (steps of 1/3), the judge answers whole numbers 1-5, so there
are ties as in real data. The true value of each estimate (pooled Spearman over samples; the mean of
per-document Spearman at level group; a difference of two judges) is the same estimate on one draw of
250,000 documents from the same world (its sampling error is below 0.001).

Coverage is the share of the intervals given that hold the truth. A draw gets no interval when fewer than
``min_groups`` of its documents are usable (at level group a document whose scores are constant on one
side has no correlation of its own and is skipped): such a draw claims nothing, and the row under its
coverage row checks that each was refused for that reason, said so, and (for one judge) failed its
``lower_bound`` gate. The coverage row's name also gives the share of all draws covered, refusals counted
as misses.

The comparison rows measure the percentile document bootstrap the jackknife replaced (1000 resamples of
whole documents, undefined resamples dropped, as ``stats.py`` did before issue 11), written here as the
baseline, on the same draws.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import validity_compare  # noqa: E402  (sibling benchmark modules; the package path is set above)
import validity_optimizer  # noqa: E402

from pytest_judgeopt.compare import shared_documents  # noqa: E402
from pytest_judgeopt.judge import Judgment, assess  # noqa: E402
from pytest_judgeopt.spec import Spec, load_spec  # noqa: E402
from pytest_judgeopt.stats import agreement, paired_difference  # noqa: E402

PER_DOC = 8
DOCUMENTS = (8, 12, 30)
SEEDS = {"quick": 500, "full": 2000}
TRUTH_DOCUMENTS = 250_000
MIN_RHO = 0.3
COVERAGE_TARGET = 0.93
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class Judge:
    """How a judge agrees with the humans: between documents (its document effect's correlation with theirs)
    and within them (the centre, on Fisher's z scale, of a per-document correlation)."""

    between: float = 0.6
    within: float = 0.5


@dataclass(frozen=True)
class Draw:
    groups: list[str]
    human: np.ndarray
    judges: np.ndarray  # (judges, samples)


DOC_SD = 0.8  # the document effect's standard deviation; the within-document noise has 1
SPREAD = 0.3  # how much the within-document agreement varies between documents (sd on Fisher's z)
SHARED = 0.3  # the share of their within-document noise two judges have in common


def draw(rng: np.random.Generator, docs: int, judges: tuple[Judge, ...]) -> Draw:
    """One dataset of ``docs`` documents x PER_DOC samples, scored by the humans and by each judge."""
    n = docs * PER_DOC
    u = np.repeat(rng.normal(0, 1, docs), PER_DOC)  # the human document effect (standardised)
    e = rng.normal(0, 1, n)  # the human within-document noise
    hardness = np.repeat(rng.normal(0, SPREAD, docs), PER_DOC)  # shared by the judges: some documents are hard
    common_doc, common = np.repeat(rng.normal(0, 1, docs), PER_DOC), rng.normal(0, 1, n)
    human_latent = DOC_SD * u + e
    scores = []
    for judge in judges:
        own_doc = math.sqrt(SHARED) * common_doc + math.sqrt(1 - SHARED) * np.repeat(rng.normal(0, 1, docs), PER_DOC)
        v = judge.between * u + math.sqrt(1 - judge.between ** 2) * own_doc
        within = np.tanh(np.arctanh(judge.within) + hardness)
        own = math.sqrt(SHARED) * common + math.sqrt(1 - SHARED) * rng.normal(0, 1, n)
        f = within * e + np.sqrt(1 - within ** 2) * own
        scores.append(np.clip(np.rint(3 + 0.9 * (DOC_SD * v + f)), 1, 5))
    human = np.clip(np.rint(3 * (3 + 0.9 * human_latent)) / 3, 1, 5)
    groups = [f"d{k}" for k in range(docs) for _ in range(PER_DOC)]
    return Draw(groups, human, np.array(scores))


# --------------------------------------------------------------------------
# the truth, on one very large draw


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlations of (rows, n) arrays; NaN where a row is constant."""
    xc, yc = x - x.mean(axis=-1, keepdims=True), y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((xc ** 2).sum(axis=-1) * (yc ** 2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (xc * yc).sum(axis=-1) / denominator, np.nan)


def per_document_spearman(judge: np.ndarray, human: np.ndarray) -> np.ndarray:
    """Each document's Spearman rho (rows of PER_DOC samples), NaN where either side is constant (skipped)."""
    return _row_pearson(_ranks(judge.reshape(-1, PER_DOC)), _ranks(human.reshape(-1, PER_DOC)))


@functools.cache
def truth(judges: tuple[Judge, ...], seed: int = 2 ** 31 - 1) -> dict[str, list[float]]:
    """The estimands of each judge: pooled Spearman over samples; the mean per-document Spearman over the
    documents with varying scores (what level group averages); and that mean over the documents where every
    judge's and the humans' scores vary (what the paired difference at level group compares: the ::merged
    check skips a document for both sides together, compare.shared_documents)."""
    from scipy.stats import spearmanr

    big = draw(np.random.default_rng(seed), TRUTH_DOCUMENTS, judges)
    pooled = [float(spearmanr(scores, big.human).statistic) for scores in big.judges]
    per_document = [per_document_spearman(scores, big.human) for scores in big.judges]
    group = [float(np.nanmean(values)) for values in per_document]
    shared = np.logical_and.reduce([np.isfinite(values) for values in per_document])
    return {"pooled": pooled, "group": group, "group_shared": [float(values[shared].mean()) for values in per_document]}


# --------------------------------------------------------------------------
# the baseline: the percentile document bootstrap of stats.py before issue 11


def bootstrap_interval(judge: np.ndarray, human: np.ndarray, level: str, confidence: float,
                       rng: np.random.Generator) -> tuple[float | None, float | None]:
    """Resample whole documents with replacement, recompute the estimate, take the percentiles of the defined
    resamples (none when more than half are undefined), as the replaced ``stats._interval`` did."""
    docs = len(judge) // PER_DOC
    idx = rng.integers(0, docs, size=(BOOTSTRAP_RESAMPLES, docs))
    if level == "group":
        values = per_document_spearman(judge, human)[idx]
        defined = np.isfinite(values)
        counts = defined.sum(axis=-1)
        stats = np.where(counts > 0, np.where(defined, values, 0).sum(axis=-1) / np.maximum(counts, 1), np.nan)
    else:
        rows = (idx[:, :, None] * PER_DOC + np.arange(PER_DOC)).reshape(BOOTSTRAP_RESAMPLES, -1)
        stats = _row_pearson(_ranks(judge[rows]), _ranks(human[rows]))
    stats = stats[np.isfinite(stats)]
    if 2 * stats.size < BOOTSTRAP_RESAMPLES:
        return None, None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


# --------------------------------------------------------------------------
# cases


def spec_for(folder: Path, level: str) -> Spec:
    """A spec as a user writes it (defaults for everything else: confidence 0.95, min_groups 8)."""
    (folder / "data.jsonl").write_text(json.dumps({"id": "x", "group": "g", "t": "a", "scores": {"c": 1}}) + "\n")
    path = folder / f"{level}.judge.yaml"
    path.write_text("dataset: {path: data.jsonl, group: group, inputs: {t: t}, scores: scores}\n"
                    f"correlation: {{level: {level}, gate: lower_bound}}\n"
                    f"criteria:\n  c: {{instruction: Rate it., scale: [1, 5], min_rho: {MIN_RHO}}}\n")
    return load_spec(path)


def seeds(quick: bool) -> range:
    return range(SEEDS["quick" if quick else "full"])


def covered(low: float | None, high: float | None, value: float) -> bool:
    return low is not None and high is not None and low <= value <= high


def case(name: str, target: str, value: float | int, met: bool | None) -> dict[str, Any]:
    return {"name": name, "target": target, "value": round(value, 4) if isinstance(value, float) else value, "met": met}


def coverage_cases(spec: Spec, level: str, quick: bool) -> list[dict[str, Any]]:
    """The agreement interval of one judge at 8, 12 and 30 documents, and the old bootstrap's at 8 and 12.

    Coverage is the share of the intervals given that hold the truth (the usual definition: a draw given no
    interval claims nothing that could be wrong). A draw gets none when fewer than min_groups of its
    documents are usable (at level group, a document whose judge or human scores are constant has no
    correlation of its own and is skipped): the refusal row under it checks that every such draw was refused
    for that reason, said so, and failed its gate; the coverage row's name also gives the share of all
    draws covered, counting refusals as misses."""
    corr = spec.correlation
    judge = (Judge(),)
    true = truth(judge)[level][0]
    label = "pooled" if level == "pooled" else "per-document level"
    leveled = spec_at_level(spec, level)
    out = []
    for docs in DOCUMENTS:
        tally = Tally()
        boot_hits = boot_missing = 0
        for seed in seeds(quick):
            d = draw(np.random.default_rng(1_000_000 * docs + seed), docs, judge)
            a = agreement(corr.method, d.judges[0], d.human, groups=d.groups, level=level, confidence=corr.confidence,
                          min_groups=corr.min_groups, seed=seed)
            tally.add(a.low, a.high, true, a.interval_reason, a.units, corr.min_groups,
                      functools.partial(gate_refuses, leveled, d))
            if docs in (8, 12):
                low, high = bootstrap_interval(d.judges[0], d.human, level, corr.confidence,
                                               np.random.default_rng(seed))
                boot_hits += covered(low, high, true)
                boot_missing += low is None
        out.append(case(f"interval coverage, {label}, {docs} documents x {PER_DOC} (true {corr.method} {true:.3f}; "
                        f"nominal {corr.confidence:.0%}; {tally.described()})",
                        f">= {COVERAGE_TARGET:.0%}", tally.rate, tally.rate >= COVERAGE_TARGET))
        if tally.refused:
            out.append(tally.refusal_row(f"{label}, {docs} documents", corr.min_groups, "and its lower_bound gate failed"))
        if docs in (8, 12):
            out.append(case(f"comparison: the percentile document bootstrap it replaced, {label}, {docs} documents "
                            f"(the same draws; {BOOTSTRAP_RESAMPLES} resamples; {boot_missing} without an interval, "
                            "counted as misses)", "none (baseline)", boot_hits / tally.draws, None))
    return out


@dataclass
class Tally:
    """The intervals given and those covering the truth; the draws refused, and whether each refusal was the
    min_groups rule's (fewer usable documents than min_groups, with that reason) with a failing verdict."""

    draws: int = 0
    given: int = 0
    hits: int = 0
    refused: int = 0
    refused_rightly: int = 0

    def add(self, low: float | None, high: float | None, true: float, reason: str | None, units: int,
            min_groups: int, verdict_refuses: Callable[[], bool] | None) -> None:
        self.draws += 1
        if low is None or high is None:
            self.refused += 1
            rule = units < min_groups and (reason or "").startswith("too few documents")
            self.refused_rightly += rule and (verdict_refuses is None or verdict_refuses())
            return
        self.given += 1
        self.hits += low <= true <= high

    @property
    def rate(self) -> float:
        return self.hits / self.given if self.given else 0.0

    def described(self) -> str:
        if not self.refused:
            return f"{self.draws} seeds, an interval in each"
        return (f"{self.draws} seeds; {self.given} intervals given, {self.refused} draws refused for fewer than "
                f"min_groups usable documents; counting those as misses, {self.hits / self.draws:.1%} of all draws")

    def refusal_row(self, where: str, min_groups: int, verdict: str) -> dict[str, Any]:
        return case(f"the draws refused above ({where}, {self.refused} of {self.draws}): fewer than min_groups "
                    f"({min_groups}) documents with varying scores, the reason said, {verdict}",
                    "100% of refusals", self.refused_rightly / self.refused, self.refused_rightly == self.refused)


def spec_at_level(spec: Spec, level: str) -> Spec:
    """The spec with correlation.level set (the gate's verdict follows the spec's level)."""
    if spec.correlation.level == level:
        return spec
    return dataclasses.replace(spec, correlation=dataclasses.replace(spec.correlation, level=level))


def gate_refuses(spec: Spec, d: Draw) -> bool:
    """The package's verdict on the draw (judge.assess, a lower_bound gate) fails saying too few documents."""
    judgments = [Judgment(f"r{i}", g, "c", float(h), float(s), None, "", None)
                 for i, (g, h, s) in enumerate(zip(d.groups, d.human, d.judges[0], strict=True))]
    result = assess(spec, spec.criteria["c"], judgments, split="test", shape="separate", instruction="Rate it.")
    return not result.passed and any("too few documents" in reason for reason in result.reasons)


def shared(d: Draw, level: str) -> Draw:
    """At level group, the documents the ::merged check compares the two judges on (compare.shared_documents:
    where both judges and the humans vary); pooled, the whole draw."""
    if level == "pooled":
        return d
    rows = [(float(a), float(b), float(h), g) for a, b, h, g in zip(d.judges[0], d.judges[1], d.human, d.groups,
                                                                   strict=True)]
    kept, _, _ = shared_documents(rows)
    return Draw([r[3] for r in kept], np.array([r[2] for r in kept]), np.array([[r[0] for r in kept],
                                                                                [r[1] for r in kept]]))


def paired_cases(spec: Spec, level: str, quick: bool) -> list[dict[str, Any]]:
    """The interval of the difference between two judges (b weaker than a, sharing noise) covers the true one,
    on the documents the ::merged check compares them on; coverage counts the intervals given, as in
    ``coverage_cases`` (the merged check's verdict on too few documents has its own row,
    ``merged_refusal_case``)."""
    corr = spec.correlation
    judges = (Judge(0.6, 0.6), Judge(0.5, 0.45))
    true_a, true_b = truth(judges)["pooled" if level == "pooled" else "group_shared"]
    true = true_b - true_a
    label = "pooled" if level == "pooled" else "per-document level"
    out = []
    for docs in DOCUMENTS:
        tally = Tally()
        for seed in seeds(quick):
            d = shared(draw(np.random.default_rng(2_000_000 * docs + seed), docs, judges), level)
            p = paired_difference(corr.method, d.judges[0], d.judges[1], d.human, groups=d.groups, level=level,
                                  confidence=corr.confidence, min_groups=corr.min_groups, seed=seed)
            tally.add(p.low, p.high, true, p.interval_reason, p.units, corr.min_groups, None)
        out.append(case(f"paired-difference coverage, {label}, {docs} documents x {PER_DOC} (true difference "
                        f"{true:+.3f}: {true_b:.3f} - {true_a:.3f}; {tally.described()})",
                        f">= {COVERAGE_TARGET:.0%}", tally.rate, tally.rate >= COVERAGE_TARGET))
        if tally.refused:
            out.append(tally.refusal_row(f"paired, {label}, {docs} documents", corr.min_groups, "no interval given"))
    return out


def refusal_cases(spec: Spec, quick: bool) -> list[dict[str, Any]]:
    """Below min_groups: no interval, and the lower_bound gate (the package's verdict, judge.assess) fails
    saying there are too few documents, even for a judge whose estimate is far above min_rho."""
    corr = spec.correlation
    criterion = spec.criteria["c"]
    strong = (Judge(0.9, 0.85),)
    out = []
    for docs in (corr.min_groups - 1, 4):
        refused = above = n = 0
        for seed in seeds(quick):
            d = draw(np.random.default_rng(3_000_000 * docs + seed), docs, strong)
            a = agreement(corr.method, d.judges[0], d.human, groups=d.groups, level=corr.level,
                          confidence=corr.confidence, min_groups=corr.min_groups, seed=seed)
            judgments = [Judgment(f"r{i}", g, "c", float(h), float(s), None, "", None)
                         for i, (g, h, s) in enumerate(zip(d.groups, d.human, d.judges[0], strict=True))]
            result = assess(spec, criterion, judgments, split="test", shape="separate", instruction="Rate it.")
            said = any("too few documents" in reason for reason in result.reasons)
            no_interval = a.low is None and (a.interval_reason or "").startswith("too few documents")
            refused += no_interval and not result.passed and said
            above += (a.value or -1) >= criterion.min_rho
            n += 1
        rate = refused / n
        out.append(case(f"refusal below min_groups ({corr.min_groups}): {docs} documents, no interval and the "
                        f"lower_bound gate fails saying too few documents ({n} seeds; the estimate was above min_rho "
                        f"{criterion.min_rho:g} in {above / n:.0%})", "100% of seeds", rate, refused == n))
    return out


def merged_refusal_case(quick: bool) -> dict[str, Any]:
    """Below min_groups the ::merged check (compare.compare, through validity_compare's verdict) is inconclusive."""
    rules = validity_compare.Rules(max_drop=validity_compare.MAX_DROP, confidence=0.95, change="merging")
    docs = 7
    with tempfile.TemporaryDirectory() as tmp:
        pooled = validity_compare.make_spec(Path(tmp), "pooled")
        n = len(seeds(quick))
        verdicts = [validity_compare.verdict(pooled, *validity_compare.draw(np.random.default_rng(40_000 + s), docs,
                                                                           0.6, 0.6), s, rules)[0]
                    for s in seeds(quick)]
    rate = sum(v == "inconclusive" for v in verdicts) / n
    return case(f"refusal below min_groups: the merged check on {docs} documents is inconclusive ({n} seeds)",
                "100% of seeds", rate, rate == 1.0)


def interval_cases(quick: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        specs = {level: spec_for(Path(tmp), level) for level in ("pooled", "group")}
        for level in ("pooled", "group"):
            out += coverage_cases(specs[level], level, quick)
        out += refusal_cases(specs["pooled"], quick)
        for level in ("pooled", "group"):
            out += paired_cases(specs[level], level, quick)
    return out


SECTIONS: list[tuple[str, Callable[[bool], list[dict[str, Any]]]]] = [
    ("intervals", interval_cases),
    ("refusal of the merged check", lambda quick: [merged_refusal_case(quick)]),
    ("the ::merged check (validity_compare.py)", lambda quick: [c(quick) for c in validity_compare.CASES]),
    ("the optimizer's gate (validity_optimizer.py)", lambda quick: [c(quick) for c in validity_optimizer.CASES]),
]


def shown(value: float | int) -> str:
    return f"{value:.1%}" if isinstance(value, float) else str(value)


def table(cases: list[dict[str, Any]]) -> str:
    met = {True: "yes", False: "**no**", None: "(comparison)"}
    lines = ["| case | target | value | met |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['target']} | {shown(c['value'])} | {met[c['met']]} |" for c in cases]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer seeds ({SEEDS['quick']} per interval case instead of {SEEDS['full']}, and the quick "
                             "sizes of the other two benchmarks)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of validity.json and validity.md (benchmarks/)")
    args = parser.parse_args()
    started, load_start = time.monotonic(), os.getloadavg()
    cases: list[dict[str, Any]] = []
    seconds = {}
    for title, run in SECTIONS:
        t0 = time.monotonic()
        rows = run(args.quick)
        seconds[title] = round(time.monotonic() - t0, 1)
        print(f"{title}: {seconds[title]} s", file=sys.stderr)
        print(table(rows), end="", file=sys.stderr)
        cases += rows
    wall, load_end = time.monotonic() - started, os.getloadavg()
    missed = [c["name"] for c in cases if c["met"] is False]
    run_info = {"quick": args.quick, "seconds": round(wall, 1), "section_seconds": seconds,
                "load_average_start": [round(x, 2) for x in load_start],
                "load_average_end": [round(x, 2) for x in load_end], "cores": os.cpu_count(),
                "python": platform.python_version(), "numpy": np.__version__, "missed": len(missed)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validity.json").write_text(json.dumps({"cases": cases, "run": run_info}, indent=2) + "\n")
    how = (f"{'--quick' if args.quick else 'full'} run, {wall / 60:.1f} min wall on {os.cpu_count()} cores shared with "
           f"other work: 1-minute load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end "
           f"(Python {platform.python_version()}, numpy {np.__version__}). "
           f"{len(cases) - len(missed) - sum(c['met'] is None for c in cases)} targets met, {len(missed)} missed.")
    (args.out / "validity.md").write_text(f"# Validity benchmark\n\n`python benchmarks/validity.py"
                                          f"{' --quick' if args.quick else ''}`: {how}\n\n{table(cases)}")
    print(table(cases), end="")
    print(how)


if __name__ == "__main__":
    main()
