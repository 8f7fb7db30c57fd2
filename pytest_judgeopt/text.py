"""The text every surface shares: numbers, intervals, verdict words and their colours, and the tables as rows.

The terminal summary (report.py), the HTML page (html_report.py) and the items' failure messages
show the same measurements, so each table is built here once, as plain data (a :class:`Table`:
heading, columns, rows of cells, a verdict kind per row, lines under it), from the JSON form of
the results; a surface only renders it. Styles live here too, one table of verdict kinds and one
of line kinds, each with its terminal style and its HTML class, so a colour means the same thing
everywhere (the shape of syrupy's ``terminal.py``).

Terminal lines are rendered by rich, imported only when something is rendered; colours only when
asked for (on a terminal, without ``NO_COLOR``), so a CI log or a pipe gets plain text that still
reads as a table and greps as one line per row.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .judge import CriterionResult

PLAIN_WIDTH = 1000  # off a terminal nothing limits a line, and a wrapped row would no longer grep as one

# verdict kind -> (terminal style, HTML class)
VERDICT_STYLES = {"pass": ("green", "pass"), "warn": ("yellow", "warn"), "fail": ("bold red", "fail")}
# line kind -> (terminal style, HTML class); a diff's file lines are "head", its unchanged lines "context"
LINE_STYLES = {"head": ("bold", "head"), "add": ("green", "add"), "del": ("red", "del"), "hunk": ("cyan", "hunk"),
               "context": ("", "head"), "item": ("", ""), "note": ("", "")}


# --------------------------------------------------------------------------------------------
# numbers


def number(value: float | None, digits: int = 3, *, sign: bool = False) -> str:
    """A measured number, or ``-`` where none was measured; ``sign`` for differences, whose sign is the news."""
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def interval(low: float | None, high: float | None, *, sign: bool = False) -> str:
    return f"[{number(low, sign=sign)}, {number(high, sign=sign)}]" if low is not None and high is not None else "-"


def estimate(value: float | None, low: float | None, high: float | None, *, sign: bool = False) -> str:
    """A value with its interval: ``0.812 [0.701, 0.880]``."""
    return f"{number(value, sign=sign)} {interval(low, high, sign=sign)}"


def percent_change(new: int, old: int) -> str:
    return f" ({(new - old) / old:+.0%})" if old else ""


def dollars(cost: float | None, unknown: str = "-") -> str:
    return unknown if cost is None else f"${cost:.4f}"


# --------------------------------------------------------------------------------------------
# tables as data


@dataclass(frozen=True)
class Line:
    """A line under a table; its kind picks its style (an ``item`` is a bullet, diff lines are coloured)."""

    text: str
    kind: str = "note"


@dataclass
class Table:
    """A heading, a table and lines under it. ``verdicts`` holds one kind (a key of VERDICT_STYLES) per row
    when the last column is a verdict, and stays empty when the table has none."""

    heading: str
    columns: Sequence[tuple[str, str]] = ()  # (header, "left" or "right")
    rows: list[list[str]] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    after: list[Line] = field(default_factory=list)

    @property
    def headers(self) -> list[str]:
        return [header for header, _ in self.columns]


def evaluation_verdict(r: Mapping[str, Any]) -> tuple[str, str]:
    """A criterion's verdict word and kind; an undefined estimate fails and says why; a criterion with
    ``min_rho: null`` reports only."""
    if r.get("report_only") and r["passed"]:
        return "report only", "warn"
    if r["passed"]:
        return "pass", "pass"
    return "FAIL" + ("" if r["undefined_reason"] is None else ": " + r["undefined_reason"]), "fail"


def documents_cell(r: Mapping[str, Any]) -> str:
    """The documents a criterion's number rests on, with those skipped at level group; ``-`` without groups."""
    if r.get("documents") is None:
        return "-"
    if r["level"] == "group":
        skipped = r["documents"] - r["groups"]
        return f"{r['groups']}" + (f" ({skipped} skipped)" if skipped else "")
    return str(r["units"])


def evaluation_notes(r: Mapping[str, Any]) -> list[str]:
    """What a verdict's reader must know besides the row: a point gate that passed while the interval does not
    exclude min_rho, or with no interval at all; a report-only criterion and what would have failed it."""
    name = r["criterion"]
    if r.get("report_only"):
        would = "; ".join(r["reasons"])
        return [f"{name}: reports only (min_rho: null), so this item never fails"
                + (f"; a gate would fail it: {would}" if would and r["passed"] else "")]
    if r["passed"] and r.get("gate", "point") == "point" and r["value"] is not None and r.get("max_error") is not None:
        if r["high"] is None:
            return [f"{name}: passes on the estimate; there is no interval ({r.get('interval_reason')})"]
        if r["high"] > r["max_error"]:
            return [f"{name}: passes on the estimate; the interval {interval(r['low'], r['high'])} does not exclude "
                    f"max_error {number(r['max_error'], 2)}"]
        return []
    if not r["passed"] or r.get("gate", "point") != "point" or r["value"] is None or r["min_rho"] is None:
        return []
    if r["low"] is None:
        return [f"{name}: passes on the estimate; there is no interval ({r.get('interval_reason')})"]
    if r["low"] < r["min_rho"]:
        return [f"{name}: passes on the estimate; the interval {interval(r['low'], r['high'])} does not exclude "
                f"min_rho {number(r['min_rho'], 2)}"]
    return []


def evaluation_table(ev: Mapping[str, Any]) -> Table:
    """Per criterion: metric, rho with its interval, threshold, the pairs rho used (of the judgments asked for,
    and those failed), the documents it rests on, verdict; under it what the verdicts' reader must know."""
    results = ev["results"]
    passed = sum(r["passed"] and not r.get("report_only") for r in results)
    gated = sum(not r.get("report_only") for r in results)
    table = Table(f"{ev['spec']} ({ev['split']} split, {ev['records']} samples, {ev['shape']} prompts, {ev['model']}): "
                  f"{passed}/{gated} criteria pass" + (f", {len(results) - gated} report only" if gated < len(results) else ""),
                  [("criterion", "left"), ("metric", "right"), ("value", "right"), ("interval", "right"), ("min", "right"),
                   ("n", "right"), ("judged", "right"), ("failed", "right"), ("docs", "right"), ("verdict", "left")])
    for r in results:
        verdict, kind = evaluation_verdict(r)
        table.rows.append([r["criterion"], r["method"], number(r["value"]), interval(r["low"], r["high"]),
                           threshold_cell(r), str(r["pairs"]), str(r["n"]), failed_cell(r["parse_failures"], r["n"], r.get("replies")),
                           documents_cell(r), verdict])
        table.verdicts.append(kind)
    table.after += [Line(note, "item") for r in results for note in evaluation_notes(r)]
    table.after += [Line(line, "item") for r in results for line in confusion_lines(r) + humans_lines(r)]
    return table


def failed_cell(failures: Mapping[str, int], judged: int, replies: int | None) -> str:
    """Failed judgments; with ``judge.n > 1``, failed replies of all replies asked ("12/40"), each counted."""
    failed = sum(failures.values())
    return str(failed) if replies is None or replies == judged else f"{failed}/{replies}"


def threshold_cell(r: Mapping[str, Any]) -> str:
    """min_rho, or the largest error allowed (``<= 0.80``: lower is better), or the humans' bar."""
    if r.get("max_error") is not None:
        return f"<= {number(r['max_error'], 2)}"
    humans = r.get("humans")
    if r["min_rho"] is None and humans is not None and r.get("humans_margin") is not None:
        return "humans" if humans["human"] is None else number(humans["human"] + r["humans_margin"], 2)
    if r["min_rho"] is None and r.get("gate") == "alt_test":
        return "alt_test"
    return number(r["min_rho"], 2)


def confusion_lines(r: Mapping[str, Any]) -> list[str]:
    """The confusion matrix in one line: per human label, the judge's labels' counts."""
    found = r.get("confusion")
    if not found:
        return []
    rows = "; ".join(f"{label}: [{', '.join(str(c) for c in row)}]" for label, row in zip(found["labels"], found["matrix"],
                                                                                            strict=True))
    labels = ", ".join(str(label) for label in found["labels"])
    return [f"{r['criterion']}: confusion, rows human, columns judge ({labels}): {rows}"]


def humans_lines(r: Mapping[str, Any]) -> list[str]:
    """The annotators' own leave-one-out agreement beside the judge's with the same references, and the
    alternative annotator test per annotator."""
    humans = r.get("humans")
    if not humans:
        return []
    name, method = r["criterion"], humans["method"]
    if humans["human"] is None:
        out = [f"{name}: the humans' leave-one-out {method} is undefined ({humans['reason']})"]
    else:
        out = [f"{name}: humans' leave-one-out {method} {number(humans['human'])} "
               f"{interval(humans['human_low'], humans['human_high'])} ({humans['annotators']} annotators, "
               f"{humans['items']} items, {humans['units']} documents, each annotator against the {humans['aggregate']} "
               f"of the others); the judge against the same references {number(humans['judge'])} "
               f"{interval(humans['judge_low'], humans['judge_high'])}"]
    test = humans.get("alt_test")
    if test:
        head = (f"{name}: alternative annotator test (epsilon {test['epsilon']:g}, {test['scoring']} alignment, "
                f"Benjamini-Yekutieli at {test['alpha']:g}): ")
        if test["winning_rate"] is None:
            out.append(head + f"not possible: {test['reason']}")
        else:
            out.append(head + f"winning rate {test['winning_rate']:.2f} ({'pass' if test['passed'] else 'FAIL'}, needs 0.5), "
                       f"advantage probability {number(test['advantage'])}")
        units = "documents" if r.get("documents") is not None else "items"
        for a in humans["per_annotator"]:
            if a["p_adjusted"] is not None:
                out.append(f"{name}: annotator {a['annotator']}: the judge represents the others at least as well on "
                           f"{a['judge_rate']:.0%} of {a['units']} {units}, the annotator on {a['human_rate']:.0%}; adjusted p "
                           f"{a['p_adjusted']:.3g}: " + ("judge wins" if a["won"] else "judge does not win"))
            elif a["test_reason"]:
                out.append(f"{name}: annotator {a['annotator']}: {a['test_reason']}")
    return out


def instruction_sources(ev: Mapping[str, Any]) -> str | None:
    """Which criteria were tested with instructions not from the spec (a lock file, an argument)."""
    results = ev["results"]
    sources = sorted({r["instruction_source"] for r in results} - {"spec"})
    if not sources:
        return None
    return "instructions from " + ", ".join(
        f"{source}: {', '.join(r['criterion'] for r in results if r['instruction_source'] == source)}" for source in sources)


def comparison_verdict(c: Mapping[str, Any]) -> tuple[str, str]:
    """A compared criterion's word in the table (failing verdicts in capitals) and its kind; an inconclusive
    one says how many judged samples would settle it, in a warning's colour when it passes."""
    verdict = c["verdict"]
    if verdict == "inconclusive":
        settle = f" (about {c['required_n']} judged samples would settle it)" if c.get("required_n") else ""
        return ("inconclusive" + settle, "warn") if c["passed"] else ("INCONCLUSIVE" + settle, "fail")
    return (verdict, "pass") if c["passed"] else (verdict.upper(), "fail")


def interference_heading(check: Mapping[str, Any]) -> str:
    held = sum(c["passed"] for c in check["criteria"])
    return (f"{check['spec']} merged vs separate prompts ({check['split']} split, {check['records']} samples, "
            f"{check['method']} {check['level']}, {check['confidence']:.0%} paired jackknife, "
            f"max_drop {check['max_drop']:g}, {check['model']}): {held}/{len(check['criteria'])} criteria hold")


def savings_line(usage: Mapping[str, Mapping[str, int]]) -> str:
    s, m = usage["separate"], usage["merged"]
    return (f"merging would use {m['calls']} calls instead of {s['calls']}{percent_change(m['calls'], s['calls'])}, "
            f"{m['prompt_tokens']:,} prompt tokens instead of {s['prompt_tokens']:,}"
            f"{percent_change(m['prompt_tokens'], s['prompt_tokens'])}, "
            f"{m['completion_tokens']:,} completion tokens instead of {s['completion_tokens']:,}")


def missing_answers(c: Mapping[str, Any]) -> int:
    """Merged answers a replay cache lacked: with judge.n > 1 each missing answer counts its n replies as failed."""
    replies, judged = c.get("replies_merged") or c["judged"], c["judged"]
    return c["failures_merged"].get("call_replay_miss", 0) * judged // replies if replies else 0


def interference_table(check: Mapping[str, Any]) -> Table:
    """Per criterion: rho separate and merged, their difference with its interval, paired n, documents skipped for
    both shapes (level group; as in compare_table), failed judgments (separate/merged), verdict; under it what
    merging saves, the reasons, and the kinds of failed merged judgments."""
    table = Table(interference_heading(check),
                  [("criterion", "left"), ("separate", "right"), ("merged", "right"), ("diff", "right"),
                   ("interval", "right"), ("n", "right"), ("skipped docs", "right"), ("failed s/m", "right"),
                   ("verdict", "left")])
    for c in check["criteria"]:
        verdict, kind = comparison_verdict(c)
        failed = f"{sum(c['failures_separate'].values())}/{sum(c['failures_merged'].values())}"
        if c.get("replies_merged") not in (None, c["judged"]):  # judge.n > 1: failed replies, each counted
            failed += f" of {c['replies_merged']} replies"
        table.rows.append([c["criterion"], number(c["separate"]), number(c["merged"]), number(c["diff"], sign=True),
                           interval(c["low"], c["high"], sign=True), str(c["n"]), str(c["documents_skipped"]),
                           failed, verdict])
        table.verdicts.append(kind)
    table.after.append(Line(savings_line(check["usage"])))
    for c in check["criteria"]:
        table.after += [Line(f"{c['criterion']}: {reason}", "item") for reason in c["reasons"]]
        if c["failures_merged"]:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(c["failures_merged"].items(), key=lambda kv: -kv[1]))
            asked = c.get("replies_merged") or c["judged"]
            what = "judgments" if asked == c["judged"] else "replies"
            table.after.append(Line(f"{c['criterion']}: failed merged {what} {sum(c['failures_merged'].values())}/"
                                    f"{asked} ({kinds})", "item"))
    return table


def by_spec(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Cases or probes grouped by their spec file, in order: one table per spec."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        out.setdefault(entry["path"], []).append(entry)
    return out


def case_score(check: Mapping[str, Any]) -> str:
    if check["score"] is None:
        return "-"
    if check["weighted"] is not None:
        return f"{check['score']:.2f}"
    return f"{check['score']:g}"


def cases_table(cases: Sequence[Mapping[str, Any]]) -> Table:
    """One spec's cases: per case and criterion the expectation, the judge's score, the human's (for a record's
    case), the verdict; a failed judgment's verdict names its kind."""
    passed = sum(c["passed"] for c in cases)
    first = cases[0]
    table = Table(f"{first['spec']} cases ({first['shape']} prompts, {first['model']}): {passed}/{len(cases)} pass",
                  [("case", "left"), ("criterion", "left"), ("expect", "right"), ("score", "right"), ("human", "right"),
                   ("verdict", "left")])
    for case in cases:
        for check in case["checks"]:
            verdict = "pass" if check["passed"] else "FAIL" + (f": {check['failure']}" if check["failure"] else "")
            human = "-" if check["human"] is None else f"{check['human']:g}"
            table.rows.append([case["case"], check["criterion"], check["expect"], case_score(check), human, verdict])
            table.verdicts.append("pass" if check["passed"] else "fail")
    return table


def probe_gate(probe: Mapping[str, Any], c: Mapping[str, Any]) -> str:
    """What the probe's gate asks of a criterion, in a few words."""
    settings = probe["settings"]
    if probe["kind"] == "retest":
        return f"{'lower end ' if settings['gate'] == 'bound' else ''}>= {c['threshold']:g}"
    if probe["kind"] == "pad":
        return f"{'upper end ' if settings['gate'] == 'bound' else ''}rise <= {c['threshold']:g}"
    return f"{c['expected']}, interval excludes 0"


def probes_table(probes: Sequence[Mapping[str, Any]]) -> Table:
    """One spec's probes: per probe and criterion the statistic the gate reads, the paired mean change with its
    interval, the pairs, the failed judgments, the gate and the verdict; the reasons under it."""
    held = sum(p["passed"] for p in probes)
    first = probes[0]
    table = Table(f"{first['spec']} probes ({first['split']} split, {first['shape']} prompts, {first['model']}): "
                  f"{held}/{len(probes)} hold",
                  [("probe", "left"), ("criterion", "left"), ("statistic", "left"), ("value", "right"),
                   ("mean change", "right"), ("n", "right"), ("failed", "right"), ("gate", "left"), ("verdict", "left")])
    for probe in probes:
        for c in probe["criteria"]:
            value = estimate(c["value"], c["low"], c["high"]) if probe["kind"] == "retest" else "-"
            change = estimate(c["change"], c["change_low"], c["change_high"], sign=True)
            table.rows.append([probe["probe"], c["criterion"], c["statistic"], value, change, str(c["n"]),
                               f"{c['failed']}/{c['judged']}", probe_gate(probe, c), "pass" if c["passed"] else "FAIL"])
            table.verdicts.append("pass" if c["passed"] else "fail")
    for probe in probes:
        if probe["skipped"]:
            table.after.append(Line(f"{probe['probe']}: {probe['skipped']} records left out (the transform returned "
                                    "None or changed nothing)", "item"))
        for c in probe["criteria"]:
            table.after += [Line(f"{probe['probe']}: {c['criterion']}: {reason}", "item") for reason in c["reasons"]]
    calls = sum(p["calls"] for p in probes)
    cached = sum(p["cache_hits"] for p in probes)
    table.after.append(Line(f"probe judgments: {calls} model calls made, {cached} from cache; intervals "
                            f"{first['criteria'][0]['confidence']:.0%}, documents resampled whole"
                            if first["criteria"] else f"probe judgments: {calls} model calls made, {cached} from cache"))
    return table


def relative(path: str, root: Path | None) -> str:
    """Paths shown relative to the rootdir (or where pytest was started), so two checkouts report alike."""
    if root is None:
        return path
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


# --------------------------------------------------------------------------------------------
# terminal lines


def line_text(line: Line) -> str:
    return f"- {line.text}" if line.kind == "item" else line.text


def render(blocks: Sequence[Table | str], *, color: bool = False, width: int | None = None) -> list[str]:
    """Tables and plain lines as terminal lines: ANSI styles only with ``color``; without a width, lines are
    never wrapped (a log is read with grep as often as by eye)."""
    from rich import box
    from rich.console import Console
    from rich.padding import Padding
    from rich.table import Table as RichTable
    from rich.text import Text

    out = io.StringIO()
    console = Console(file=out, force_terminal=color, no_color=not color, width=width or PLAIN_WIDTH,
                      highlight=False, emoji=False, markup=False, color_system="standard" if color else None)
    for block in blocks:
        if isinstance(block, str):
            console.print(Text(block), soft_wrap=True)
            continue
        console.print(Text(block.heading, style="bold"), soft_wrap=True)
        if block.columns:
            table = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
            for header, justify in block.columns:
                table.add_column(header, justify="right" if justify == "right" else "left", no_wrap=width is None)
            for i, row in enumerate(block.rows):
                verdict = VERDICT_STYLES[block.verdicts[i]][0] if block.verdicts else ""
                table.add_row(*[Text(cell, style=verdict if j == len(row) - 1 else "") for j, cell in enumerate(row)])
            console.print(Padding(table, (0, 0, 0, 2)))
        for line in block.after:
            console.print(Text("  " + line_text(line), style=LINE_STYLES[line.kind][0]), soft_wrap=True)
    text = out.getvalue()
    return [line.rstrip() for line in text.rstrip("\n").split("\n")] if text else []


# --------------------------------------------------------------------------------------------
# the items' failure messages


def criterion_failure(result: CriterionResult) -> str:
    """The failure text of a regression item: by how much, on which samples, and why."""
    from .judge import WORST_SHOWN

    lines = [f"{result.spec_name}::{result.criterion.name} failed on the {result.split} split ({result.shape} prompts):"]
    lines += [f"  - {reason}" for reason in result.reasons]
    lines.append(f"  measured: {measured_line(result)}")
    shown = result.to_json()
    lines += [f"  {line}" for line in confusion_lines(shown) + humans_lines(shown)]
    if result.failures:
        kinds = ", ".join(f"{k} {v}" for k, v in result.failures.most_common())
        what = ("judgments", result.n) if result.replies == result.n else ("replies", result.replies)
        lines.append(f"  failed {what[0]}: {result.failed_count}/{what[1]} ({kinds})")
    worst = result.worst()
    if worst:
        lines.append("  largest disagreements:")
        for j in worst:
            reply = json.dumps((j.reply or "")[:80])
            lines.append(f"    {j.record_id}: human {j.human:g}, judge {j.score:g}, reply {reply}")
    failed = [j for j in result.judgments if j.failure][:WORST_SHOWN]
    if failed:
        lines.append("  failed judgments, for example:")
        for j in failed:
            lines.append(f"    {j.record_id}: {j.failure}: {j.detail[:100]}; the reply: {json.dumps((j.reply or '')[:80])}")
    partly = [j for j in result.judgments if j.failure is None and j.reply_failures][:WORST_SHOWN]
    if partly:  # judge.n > 1: scored from the replies that parsed, the others counted as failed
        lines.append("  judgments scored from some of their replies, for example:")
        for j in partly:
            kinds = ", ".join(f"{k} {v}" for k, v in Counter(j.reply_failures).most_common())
            lines.append(f"    {j.record_id}: {len(j.reply_failures)}/{j.replies} replies failed ({kinds}); "
                         f"the score {j.score:g} is the mean of the others")
    return "\n".join(lines)


def measured_line(result: CriterionResult) -> str:
    """What a criterion's verdict rests on: the estimate, protocol, confidence, the pairs and documents it used,
    threshold, failed judgments."""
    a = result.agreement
    value = "undefined" if a.value is None else number(a.value)
    has_interval = a.low is not None and a.high is not None
    shown = f" {interval(a.low, a.high)}" if has_interval else ""
    confidence = f"{a.confidence:.0%} CI" if has_interval else "no interval"  # a CI level without a CI says nothing
    threshold = (f", min_rho {number(result.criterion.min_rho, 2)}" if result.criterion.min_rho is not None else
                 f", max_error {number(result.criterion.max_error, 2)} (lower is better)"
                 if result.criterion.max_error is not None else "")
    documents = ""
    if result.documents is not None:
        skipped = result.documents - a.groups
        documents = (f" in {a.groups} documents ({skipped} skipped)" if a.level == "group"
                     else f" of {a.units if has_interval else result.documents} documents")
    no_interval = f": {a.interval_reason}" if a.interval_reason else ""
    failed = (f"failed {result.failed_count}/{result.n}" if result.replies == result.n else
              f"failed {result.failed_count}/{result.replies} replies")
    return f"{a.method} {value}{shown} ({a.level}, {confidence}{no_interval}, {a.n} pairs{documents}{threshold}, {failed})"


def interference_failure(check: Mapping[str, Any]) -> str:
    """The failure text of the merged item: which criteria lose, by how much, with what confidence, and the
    savings; below the headline, the same table the terminal summary shows."""
    def failing(verdict: str) -> list[str]:
        return [c["criterion"] for c in check["criteria"] if c["verdict"] == verdict and not c["passed"]]

    lost, unknown, undecided = failing("fail"), failing("undefined"), failing("inconclusive")
    unknown += failing("no baseline")
    parts = ([f"costs agreement on {', '.join(lost)}"] if lost else []) + (
        [f"cannot be measured on {', '.join(unknown)}"] if unknown else []) + (
        [f"is not shown to keep agreement on {', '.join(undecided)} (inconclusive fails unless "
         "interference.inconclusive: pass)"] if undecided else [])
    headline = f"merging the instructions into one prompt {' and '.join(parts)}"
    # in replay mode, answers missing from the cache are the cause: no agreement was lost, none was measured
    missing = max((missing_answers(c) for c in check["criteria"]), default=0)
    if missing:
        from .answers import answers_path

        name = answers_path(Path(check["path"])).name
        headline = (f"{missing} merged answers are not in {name} or the cache (cache mode is replay). Fix: record them "
                    f"with pytest --judge-record (needs the model) and commit {name}")
    return "\n".join([f"{check['spec']}::merged failed: {headline}", *render([interference_table(check)])])


# --------------------------------------------------------------------------------------------
# paired comparisons (compare.py): ::baseline, ::compare, judge.compare, the optimizer's test before/after

COMPARISON_TITLES = {"merged": "merged vs separate prompts", "baseline": "this run against the baseline",
                     "compare": "model comparison", "optimize": "initial vs final instructions"}
# who is compared with whom, in a failure's headline: (side b, side a)
COMPARISON_SUBJECTS = {"baseline": ("this run", "the baseline"), "optimize": ("the final instructions", "the initial ones"),
                       "merged": ("the merged prompt", "separate prompts")}


def comparison_heading(c: Mapping[str, Any]) -> str:
    held = sum(x["passed"] for x in c["criteria"])
    a, b = c["a"], c["b"]
    return (f"{c['spec']} {COMPARISON_TITLES.get(c['kind'], c['kind'])}: {b['label']} ({b['model']}, {b['shape']}) "
            f"against {a['label']} ({a['model']}, {a['shape']}) ({c['split']} split, {c['records']} samples, "
            f"{c['method']} {c['level']}, {c['confidence']:.0%} paired interval, max_drop {c['max_drop']:g}, "
            f"inconclusive {'passes' if c['inconclusive'] == 'pass' else 'fails'}): "
            f"{held}/{len(c['criteria'])} criteria hold")


def unpaired_text(ids: Sequence[str], label: str, shown: int = 5) -> str:
    more = ", ..." if len(ids) > shown else ""
    return f"{len(ids)} {label} samples ({', '.join(ids[:shown])}{more})"


def side_cost(label: str, usage: Mapping[str, Any] | None) -> str:
    if usage is None:
        return f"{label} not spent in this run"
    return (f"{label} {usage['calls']} calls, {usage['prompt_tokens']:,} prompt tokens, "
            f"{usage['completion_tokens']:,} completion tokens, {dollars(usage['cost_usd'], 'cost unknown')}")


def comparison_table(c: Mapping[str, Any]) -> Table:
    """Per criterion: rho of a and b on the samples both scored, the difference with its paired interval, the pairs,
    documents skipped (level group), failed judgments a/b, verdict; under it what differs, the samples that could
    not be paired, what each side cost, and the reasons."""
    a, b = c["a"]["label"], c["b"]["label"]
    table = Table(comparison_heading(c),
                  [("criterion", "left"), (a, "right"), (b, "right"), ("diff", "right"), ("interval", "right"),
                   ("n", "right"), ("skipped docs", "right"), ("failed a/b", "right"), ("verdict", "left")])
    for x in c["criteria"]:
        verdict, kind = comparison_verdict(x)
        failed = f"{sum(x['failures_a'].values())}/{sum(x['failures_b'].values())}"
        table.rows.append([x["criterion"], number(x["a"]), number(x["b"]), number(x["diff"], sign=True),
                           interval(x["low"], x["high"], sign=True), str(x["n"]), str(x["documents_skipped"]), failed,
                           verdict])
        table.verdicts.append(kind)
    table.after += [Line(problem, "item") for problem in c["problems"]]
    differs = "; ".join(c["differs"]) or "nothing (same instructions, model, shape, scoring and data)"
    table.after.append(Line(f"differs: {differs}"))
    unpaired = [unpaired_text(c["unpaired"][side], c[side]["label"]) for side in ("a", "b") if c["unpaired"].get(side)]
    if unpaired:
        table.after.append(Line(f"could not be paired: {'; '.join(unpaired)}"))
    if c["usage"]["a"] is not None or c["usage"]["b"] is not None:
        table.after.append(Line(f"cost: {side_cost(a, c['usage']['a'])}; {side_cost(b, c['usage']['b'])}"))
    table.after += [Line(note) for note in c["notes"]]
    for x in c["criteria"]:
        table.after += [Line(f"{x['criterion']}: {reason}", "item") for reason in x["reasons"]]
    return table


def comparison_failure(c: Mapping[str, Any]) -> str:
    """The failure text of a ::baseline or ::compare item: which criteria got worse and why, then the table."""
    b, a = COMPARISON_SUBJECTS.get(c["kind"], (c["b"]["label"], "the configured judge"))

    def failing(*verdicts: str) -> list[str]:
        return [x["criterion"] for x in c["criteria"] if x["verdict"] in verdicts and not x["passed"]]

    parts = []
    if failing("fail"):
        parts.append(f"{b} is worse than {a} on {', '.join(failing('fail'))}")
    if failing("undefined", "no baseline"):
        parts.append(f"the difference cannot be measured on {', '.join(failing('undefined', 'no baseline'))}")
    if failing("inconclusive"):
        parts.append(f"{b} is not shown to be as good as {a} on {', '.join(failing('inconclusive'))}")
    parts += list(c["problems"])
    return "\n".join([f"{c['spec']}::{c['kind']} failed: {'; '.join(parts)}", *render([comparison_table(c)])])
