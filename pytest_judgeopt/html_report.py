"""index.html: one self-contained page a person opens from a CI artifact to see whether to trust a judge.

The charts are SVG drawn here, in Python, so the page needs no JavaScript, no network and no
CDN: it opens from a zip, offline, years later. Every text that came from a spec, a dataset
or a model (judged outputs can contain ``<script>``) is escaped; the page references no
outside resource at all.

Per evaluation and criterion: a judge-vs-human scatter (jittered, by a hash of the record id,
so two runs draw the same picture) with the correlation; per optimization and criterion: val
rho over the steps with accepted and rejected updates marked, test rho before and after, and
the instruction diff; the interference tables; the numbers behind all of it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from .optimize_text import instruction_changes, optimization_table, study_table, usage_text, val_words
from .text import (
    COMPARISON_TITLES,
    LINE_STYLES,
    VERDICT_STYLES,
    Line,
    Table,
    by_spec,
    cases_table,
    comparison_table,
    comparison_verdict,
    dollars,
    estimate,
    evaluation_table,
    humans_lines,
    interference_table,
    interval,
    number,
    probes_table,
)

JITTER = 0.18  # in score units: spreads tied integer scores without moving a point past the next score
REPLY_CHARS = 160  # of a raw reply shown in a point's tooltip

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 14px 24px; }
header h1 { font-size: 20px; margin: 0; }
header p { margin: 4px 0 0; color: #d0d7de; }
main { padding: 8px 24px 32px; max-width: 1400px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 12px 16px; margin: 16px 0; }
h2 { font-size: 17px; margin: 4px 0 8px; }
h3 { font-size: 15px; margin: 12px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eaeef2; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; font-weight: 600; }
td:first-child, th:first-child, td.text { text-align: left; }
table.text td, table.text th { text-align: left; white-space: normal; max-width: 900px; }
.pass { color: #1a7f37; font-weight: 600; }
.fail { color: #cf222e; font-weight: 600; }
.warn { color: #9a6700; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #eaeef2; border-radius: 6px; padding: 6px; background: #fff; }
figcaption { font-size: 12px; color: #57606a; max-width: 320px; }
pre.diff { background: #f6f8fa; padding: 8px; border-radius: 6px; overflow-x: auto; white-space: pre-wrap; }
pre.diff .add { color: #1a7f37; background: #dafbe1; display: block; }
pre.diff .del { color: #cf222e; background: #ffebe9; display: block; }
pre.diff .hunk { color: #8250df; display: block; }
pre.diff .head { color: #57606a; display: block; }
.muted { color: #57606a; }
ul.notes li { margin: 2px 0; }
svg text { font: 11px system-ui, sans-serif; fill: #57606a; }
svg .title { font-size: 12px; fill: #1f2328; font-weight: 600; }
"""


def table(t: Table, *, cls: str = "") -> str:
    """A table of escaped cells; a verdict column is coloured by the kind of each row's verdict."""
    out = [f'<table class="{cls}"><thead><tr>' if cls else "<table><thead><tr>",
           *(f"<th>{escape(h)}</th>" for h in t.headers), "</tr></thead><tbody>"]
    for i, row in enumerate(t.rows):
        cells = []
        for j, cell in enumerate(row):
            verdict = f' class="{VERDICT_STYLES[t.verdicts[i]][1]} text"' if t.verdicts and j == len(row) - 1 else ""
            cells.append(f"<td{verdict}>{escape(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def plain_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "") -> str:
    """A table of the page alone (the instructions, the model calls), with no verdict column."""
    return table(Table("", [(h, "left") for h in headers], [list(row) for row in rows]), cls=cls)


def jitter(key: str) -> tuple[float, float]:
    """Two offsets in [-JITTER, JITTER] from a hash of the key: the same record lands on the same spot every run."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    a, b = int.from_bytes(digest[:4], "big") / 2**32, int.from_bytes(digest[4:8], "big") / 2**32
    return (a * 2 - 1) * JITTER, (b * 2 - 1) * JITTER


def axis_range(values: Iterable[float]) -> tuple[float, float]:
    values = list(values)
    if not values:
        return 0.0, 1.0
    low, high = math.floor(min(values)), math.ceil(max(values))
    return (low, high) if high > low else (low - 1, high + 1)


def ticks(low: float, high: float) -> list[float]:
    span = high - low
    step = 1.0 if span <= 10 else 10 ** math.floor(math.log10(span)) * (2 if span / 10 ** math.floor(math.log10(span)) > 4 else 1)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 6) for i in range(int((high - first) / step + 1e-9) + 1)]


SIZE, PAD = 300, 40  # px: a square chart and its margin for the axes


def scatter_svg(rows: Sequence[Mapping[str, Any]], title: str, subtitle: str = "") -> str:
    """Judge score against human score, one circle per scored judgment, jittered; the diagonal is agreement."""
    scored = [r for r in rows if r["judge"] is not None]
    low, high = axis_range([r["human"] for r in scored] + [r["judge"] for r in scored])
    low, high = low - 0.5, high + 0.5
    inner = SIZE - 2 * PAD

    def x(v: float) -> float:
        return PAD + (v - low) / (high - low) * inner

    def y(v: float) -> float:
        return SIZE - PAD - (v - low) / (high - low) * inner

    parts = [f'<svg class="scatter" width="{SIZE}" height="{SIZE}" '
             f'viewBox="0 0 {SIZE} {SIZE}" role="img" aria-label="{escape(title)}">',
             f'<text class="title" x="{PAD}" y="13">{escape(title)}</text>',
             f'<text x="{PAD}" y="27">{escape(subtitle)}</text>',
             f'<rect x="{PAD}" y="{PAD}" width="{inner}" height="{inner}" fill="#fbfcfd" stroke="#d0d7de"/>',
             f'<line x1="{x(low):.1f}" y1="{y(low):.1f}" x2="{x(high):.1f}" y2="{y(high):.1f}" stroke="#8c959f" '
             'stroke-dasharray="4 3"/>']
    for t in ticks(low + 0.5, high - 0.5):
        parts.append(f'<text x="{x(t):.1f}" y="{SIZE - PAD + 14}" text-anchor="middle">{t:g}</text>')
        parts.append(f'<text x="{PAD - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    parts.append(f'<text x="{SIZE / 2}" y="{SIZE - 6}" text-anchor="middle">human score</text>')
    parts.append(f'<text x="12" y="{SIZE / 2}" text-anchor="middle" transform="rotate(-90 12 {SIZE / 2})">judge score</text>')
    for r in scored:
        dx, dy = jitter(f"{r['criterion']}/{r['record_id']}")
        tip = f"{r['record_id']}: human {r['human']:g}, judge {r['judge']:g}\n{(r.get('reply') or '')[:REPLY_CHARS]}"
        parts.append(f'<circle cx="{x(r["human"] + dx):.1f}" cy="{y(r["judge"] + dy):.1f}" r="3.5" fill="#0969da" '
                     f'fill-opacity="0.55"><title>{escape(tip)}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


WIDTH, HEIGHT = 470, 260


def steps_svg(o: Mapping[str, Any], name: str) -> str:
    """Val rho of the instruction in force after each step (a line), each step's candidate marked accepted (a
    filled dot) or rejected (a cross), and test rho before and after the whole run (squares with intervals)."""
    c = o["criteria"][name]
    history = o["history"]
    steps = len(history)
    # after a step that kept something, the values measured of the combination kept (every criterion's)
    in_force = [c["val_before"]] + [(h["val_kept"] or h["val_after"])[name] if h["accepted"] else h["val_before"][name]
                                    for h in history]
    candidates = [(h["step"], h["val_after"].get(name), name in h["accepted"]) for h in history
                  if h["proposals"].get(name)]
    before, after = c["test_before"], c["test_after"]
    values = [v for v in in_force if v is not None] + [v for _, v, _ in candidates if v is not None]
    values += [v for a in (before, after) for v in (a["value"], a["low"], a["high"]) if v is not None]
    low, high = (min([*values, 0.0]), max([*values, 1.0])) if values else (0.0, 1.0)
    low, high = math.floor(low * 10) / 10, math.ceil(high * 10) / 10
    if high - low < 0.2:
        low, high = low - 0.1, high + 0.1
    left, right, top, bottom = 44, 130, 24, 34
    inner_w, inner_h = WIDTH - left - right, HEIGHT - top - bottom
    first, last = -0.35, max(steps, 1) + 0.35  # room inside the frame for the test markers beside steps 0 and N

    def x(step: float) -> float:
        return left + (step - first) / (last - first) * inner_w

    def y(v: float) -> float:
        return top + (high - v) / (high - low) * inner_h

    title = f"{name}: rho over {steps} step{'' if steps == 1 else 's'}"
    parts = [f'<svg class="steps" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f'<text class="title" x="{left}" y="14">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="#fbfcfd" stroke="#d0d7de"/>']
    tick = 0.1 if high - low <= 0.6 else 0.2 if high - low <= 1.2 else 0.5
    for i in range(math.ceil(low / tick - 1e-9), math.floor(high / tick + 1e-9) + 1):
        v = i * tick
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        parts.append(f'<line x1="{left}" x2="{left + inner_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eaeef2"/>')
    for s in range(steps + 1):
        parts.append(f'<text x="{x(s):.1f}" y="{HEIGHT - bottom + 14}" text-anchor="middle">{s}</text>')
    parts.append(f'<text x="{left + inner_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">step</text>')
    points = [(s, v) for s, v in enumerate(in_force) if v is not None]
    if len(points) > 1:
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(s):.1f},{y(v):.1f}" for i, (s, v) in enumerate(points))
        parts.append(f'<path class="val" d="{path}" fill="none" stroke="#0969da" stroke-width="2"/>')
    for s, v in points:
        parts.append(f'<rect class="val-point" x="{x(s) - 2.5:.1f}" y="{y(v) - 2.5:.1f}" width="5" height="5" fill="#0969da">'
                     f'<title>val rho in force after step {s}: {v:.3f}</title></rect>')
    for step, v, kept in candidates:
        if v is None:
            continue
        label = f"step {step}: candidate val rho {v:.3f}, {'accepted' if kept else 'rejected'}"
        if kept:
            parts.append(f'<circle class="accepted" cx="{x(step):.1f}" cy="{y(v):.1f}" r="6" fill="#1a7f37" '
                         f'fill-opacity="0.8"><title>{escape(label)}</title></circle>')
        else:
            cx, cy = x(step), y(v)
            parts.append(f'<path class="rejected" d="M{cx - 5:.1f},{cy - 5:.1f}L{cx + 5:.1f},{cy + 5:.1f}'
                         f'M{cx - 5:.1f},{cy + 5:.1f}L{cx + 5:.1f},{cy - 5:.1f}" stroke="#cf222e" stroke-width="2.5">'
                         f'<title>{escape(label)}</title></path>')
    for where, a, label in ((0, before, "before"), (steps, after, "after")):
        if a["value"] is None:
            continue
        cx = x(where) + (-9 if label == "before" else 9)
        if a["low"] is not None and a["high"] is not None:
            parts.append(f'<line class="test-interval" x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(a["low"]):.1f}" '
                         f'y2="{y(a["high"]):.1f}" stroke="#bf8700" stroke-width="1.5"/>')
        parts.append(f'<rect class="test" x="{cx - 4:.1f}" y="{y(a["value"]) - 4:.1f}" width="8" height="8" fill="#bf8700">'
                     f'<title>test rho {label}: {a["value"]:.3f} {escape(interval(a["low"], a["high"]))}</title></rect>')
    legend = [("#0969da", "val rho in force", "line"), ("#1a7f37", "accepted update", "dot"),
              ("#cf222e", "rejected update", "cross"), ("#bf8700", "test rho (95% CI)", "square")]
    for i, (color, text, shape) in enumerate(legend):
        lx, ly = WIDTH - right + 10, top + 10 + i * 18
        if shape == "line":
            parts.append(f'<line x1="{lx}" x2="{lx + 12}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/>')
        elif shape == "dot":
            parts.append(f'<circle class="legend" cx="{lx + 6}" cy="{ly}" r="5" fill="{color}"/>')
        elif shape == "cross":
            parts.append(f'<path d="M{lx + 2},{ly - 4}L{lx + 10},{ly + 4}M{lx + 2},{ly + 4}L{lx + 10},{ly - 4}" '
                         f'stroke="{color}" stroke-width="2"/>')
        else:
            parts.append(f'<rect x="{lx + 2}" y="{ly - 4}" width="8" height="8" fill="{color}"/>')
        parts.append(f'<text x="{lx + 16}" y="{ly + 4}">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def lines_html(lines: Sequence[Line]) -> str:
    """An instruction's diff as a coloured block; any other lines as paragraphs."""
    if lines and lines[0].kind == "head":
        spans = "".join(f'<span class="{LINE_STYLES[line.kind][1]}">{escape(line.text)}</span>' for line in lines)
        return f'<pre class="diff">{spans}</pre>'
    return "".join(f"<p>{escape(line.text)}</p>" for line in lines)


def evaluation_section(ev: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    results = ev["results"]
    passed = sum(r["passed"] for r in results)
    out = [f'<section class="evaluation"><h2>{escape(ev["spec"])}: {passed}/{len(results)} criteria pass</h2>',
           f'<p class="muted">{escape(ev["path"])}: {escape(ev["split"])} split, {ev["records"]} samples, '
           f'{escape(ev["shape"])} prompts, model {escape(ev["model"])}</p>', table(evaluation_table(ev))]
    for r in results:
        if r["reasons"]:
            out.append(f'<p class="fail">{escape(r["criterion"])}: {escape("; ".join(r["reasons"]))}</p>')
    out += [agreement_details(r) for r in results if r.get("confusion") or r.get("humans")]
    out.append('<div class="charts">')
    for r in results:
        mine = [row for row in rows if row["criterion"] == r["criterion"]]
        failed = sum(row["judge"] is None for row in mine)
        title = r["criterion"]
        measured = estimate(r["value"], r["low"], r["high"]) if r["value"] is not None else "undefined"
        subtitle = f"{r['method']} {measured}, n={r['pairs']}"
        caption = (f"{len(mine) - failed} judgments, jittered; the dashed line is exact agreement."
                   + (f" {failed} failed judgments are not plotted." if failed else ""))
        out.append(f'<figure>{scatter_svg(mine, title, subtitle)}<figcaption>{escape(caption)}</figcaption></figure>')
    out.append("</div>")
    out.append("<h3>Instructions</h3>" + plain_table(["criterion", "source", "instruction"],
                                                      [[r["criterion"], r["instruction_source"], r["instruction"]]
                                                       for r in results], cls="text"))
    out.append("</section>")
    return "".join(out)


def agreement_details(r: Mapping[str, Any]) -> str:
    """A label metric's confusion matrix (rows the humans' label, columns the judge's), and the annotators' own
    agreement beside the judge's, with the alternative annotator test per annotator."""
    out = [f'<div class="agreement"><h3>{escape(r["criterion"])}: {escape(r["method"])}</h3>']
    found = r.get("confusion")
    if found:
        labels = [str(label) for label in found["labels"]]
        rows = [[f"human {label}", *(str(c) for c in row)] for label, row in zip(labels, found["matrix"], strict=True)]
        out.append('<p class="muted">Confusion matrix: rows the humans\' label, columns the judge\'s.</p>'
                   + plain_table(["", *(f"judge {label}" for label in labels)], rows, cls="confusion"))
    humans = r.get("humans")
    if humans:
        out += [f"<p>{escape(line)}</p>" for line in humans_lines(r) if not line.startswith(f"{r['criterion']}: annotator ")]
        per = humans["per_annotator"]
        if per:
            rows = [[str(a["annotator"]), str(a["items"]), number(a["human"]), number(a["judge"]),
                     "-" if a["judge_rate"] is None else f"{a['judge_rate']:.2f}",
                     "-" if a["human_rate"] is None else f"{a['human_rate']:.2f}",
                     "-" if a["p_adjusted"] is None else f"{a['p_adjusted']:.3g}",
                     "-" if a["won"] is None else ("wins" if a["won"] else "does not win"),
                     a["test_reason"] or a["reason"] or ""] for a in per]
            out.append(plain_table(["annotator", "items", f"annotator vs others ({humans['method']})",
                                    "judge vs the same", "judge aligns (rho_f)", "annotator aligns (rho_h)",
                                    "adjusted p", "alt-test", "note"], rows, cls="annotators"))
    out.append("</div>")
    return "".join(out)


def interference_section(check: Mapping[str, Any], compared: Mapping[str, Any] | None = None) -> str:
    t = interference_table(check)
    plot = f'<div class="charts"><figure>{paired_svg(compared)}</figure></div>' if compared else ""
    return (f'<section class="interference"><h2>{escape(check["spec"])}: merged vs separate prompts</h2>'
            f'<p class="muted">{escape(t.heading)}</p>' + plot + table(t) + lines_html(t.after) + "</section>")


def cases_section(cases: Sequence[Mapping[str, Any]]) -> str:
    """One spec's cases: the pass/fail table with the scores, then each judgment's reply and the case's note."""
    t = cases_table(cases)
    replies = [[case["case"], check["criterion"], check["expect"], check["reply"] or "", case["note"] or ""]
               for case in cases for check in case["checks"]]
    return (f'<section class="cases"><h2>{escape(cases[0]["spec"])}: cases</h2><p class="muted">{escape(t.heading)}</p>'
            + table(t) + "<h3>Replies</h3>" + plain_table(["case", "criterion", "expect", "reply", "note"], replies,
                                                           cls="text") + "</section>")


def probes_section(probes: Sequence[Mapping[str, Any]]) -> str:
    """One spec's probes: each probe's statistic and mean change with its interval, the reasons, the worst examples."""
    t = probes_table(probes)
    worst = [[p["probe"], c["criterion"], w["record_id"], f"{w['before']:g}", f"{w['after']:g}",
              f"{w['change']:+g}", w["reply_before"], w["reply_after"]]
             for p in probes for c in p["criteria"] for w in c["worst"]]
    return (f'<section class="probes"><h2>{escape(probes[0]["spec"])}: probes</h2><p class="muted">{escape(t.heading)}</p>'
            + table(t) + lines_html(t.after) + "<h3>Largest changes</h3>"
            + plain_table(["probe", "criterion", "record", "before", "after", "change", "reply before", "reply after"],
                          worst, cls="text") + "</section>")


def optimization_section(o: Mapping[str, Any], seconds: float | None = None) -> str:
    t = optimization_table(o)
    out = [f'<section class="optimization"><h2>{escape(o["spec"])}: optimization, mode {escape(o["mode"])}</h2>',
           f'<p class="muted">{escape(t.heading)}</p>', table(t),
           f"<p>{escape(usage_text(o['usage'], seconds))}</p>", '<div class="charts">']
    for name in o["criteria"]:
        out.append(f"<figure>{steps_svg(o, name)}<figcaption>Val rho is measured by the gate on the val split at every "
                   f"step; test rho only before and after the run (the test split is never seen while optimizing)."
                   f"</figcaption></figure>")
    out.append("</div><h3>Instruction changes</h3>")
    out += [lines_html(lines) for lines in instruction_changes(o).values()]
    out.append("</section>")
    return "".join(out)


def study_section(study: Mapping[str, Any]) -> str:
    return (f'<section class="study"><h2>{escape(study["spec"])}: mode study</h2>'
            f'<p class="muted">{study["runs"]} runs per mode, {study["steps"]} steps each, val split of '
            f'{study["val_size"]} samples, test split of {study["test_size"]} samples (test {escape(study["level"])} '
            f'{escape(study["method"])}; {escape(val_words(study["val"]))}). Choose a mode on val; test is held out.</p>'
            + table(study_table(study)) + "</section>")


def usage_section(usage: Mapping[str, Mapping[str, Any]], timing: Mapping[str, Any]) -> str:
    body = [[role, str(u["requests"]), str(u["calls"]), str(u["cache_hits"]), str(u["retries"]),
             str(sum(u["errors"].values())), f"{u['prompt_tokens']:,}", f"{u['completion_tokens']:,}",
             dollars(u["cost_usd"], "unknown")] for role, u in usage.items()]
    seconds = timing.get("run_seconds")
    return ('<section class="usage"><h2>Model calls</h2>'
            + plain_table(["role", "requests", "calls", "from cache", "retries", "failed", "tokens in", "tokens out",
                           "cost"], body)
            + (f'<p class="muted">wall time of the run: {seconds:.1f} s</p>' if seconds is not None else "") + "</section>")


def paired_svg(c: Mapping[str, Any]) -> str:
    """Each criterion's difference (b minus a) with its paired interval, against zero and -max_drop: the picture
    of a comparison's verdicts. Criteria without a difference are listed with a dash."""
    rows = c["criteria"]
    width, left, right, top, step = 460, 120, 20, 28, 24
    height = top + step * max(1, len(rows)) + 28
    values = [v for x in rows for v in (x["diff"], x["low"], x["high"]) if v is not None] + [0.0, -c["max_drop"]]
    low, high = max(-2.0, min(values)), min(2.0, max(values))
    pad = max(0.05, (high - low) * 0.08)
    low, high = low - pad, high + pad

    def x(v: float) -> float:
        return left + (min(max(v, low), high) - low) / (high - low) * (width - left - right)

    out = [f'<svg class="paired" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{escape(c["b"]["label"])} minus {escape(c["a"]["label"])}, per criterion">',
           f'<text class="title" x="4" y="14">{escape(c["b"]["label"])} minus {escape(c["a"]["label"])} '
           f'({escape(c["method"])}, {c["confidence"]:.0%} paired interval)</text>']
    bottom = top + step * max(1, len(rows))
    for value, dash, label in ((0.0, "", "0"), (-c["max_drop"], ' stroke-dasharray="4 3"', f"-{c['max_drop']:g}")):
        out.append(f'<line x1="{x(value):.1f}" y1="{top - 6}" x2="{x(value):.1f}" y2="{bottom}" stroke="#8c959f"{dash}/>')
        out.append(f'<text x="{x(value):.1f}" y="{bottom + 14}" text-anchor="middle">{escape(label)}</text>')
    colours = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e"}
    for i, row in enumerate(rows):
        y = top + step * i + step / 2
        out.append(f'<text x="4" y="{y + 4:.1f}">{escape(row["criterion"])}</text>')
        if row["diff"] is None:
            out.append(f'<text x="{left}" y="{y + 4:.1f}">- ({escape(row["verdict"])})</text>')
            continue
        colour = colours[comparison_verdict(row)[1]]
        if row["low"] is not None and row["high"] is not None:
            out.append(f'<line x1="{x(row["low"]):.1f}" y1="{y:.1f}" x2="{x(row["high"]):.1f}" y2="{y:.1f}" '
                       f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<circle cx="{x(row["diff"]):.1f}" cy="{y:.1f}" r="4" fill="{colour}">'
                   f'<title>{escape(row["criterion"])}: {row["diff"]:+.3f} '
                   f'{escape(interval(row["low"], row["high"], sign=True))}, {escape(row["verdict"])}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def comparison_section(c: Mapping[str, Any]) -> str:
    t = comparison_table(c)
    title = COMPARISON_TITLES.get(c["kind"], c["kind"])
    return (f'<section class="comparison"><h2>{escape(c["spec"])}: {escape(title)}</h2>'
            f'<p class="muted">{escape(t.heading)}</p><div class="charts"><figure>{paired_svg(c)}</figure></div>'
            f'{table(t)}{lines_html(t.after)}</section>')


def render_html(document: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """The page, from results.json's document and predictions.jsonl's rows."""
    evaluations, checks = document["evaluations"], document["interference"]
    passed = sum(r["passed"] for ev in evaluations for r in ev["results"])
    total = sum(len(ev["results"]) for ev in evaluations)
    held = sum(c["passed"] for check in checks for c in check["criteria"])
    merged = sum(len(check["criteria"]) for check in checks)
    summary = [f"{passed}/{total} criteria pass"] if total else []
    summary += [f"merged prompts: {held}/{merged} criteria hold"] if merged else []
    cases = document.get("cases", [])
    probes = document.get("probes", [])
    summary += [f"cases: {sum(c['passed'] for c in cases)}/{len(cases)} pass"] if cases else []
    summary += [f"probes: {sum(p['passed'] for p in probes)}/{len(probes)} hold"] if probes else []
    summary += [f"{len(document['optimizations'])} optimization{'s' * (len(document['optimizations']) != 1)}"] \
        if document["optimizations"] else []
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>pytest-judgeopt report</title>", f"<style>{CSS}</style></head><body>",
           f"<header><h1>pytest-judgeopt report</h1><p>{escape(' · '.join(summary) or 'nothing was judged')} "
           f"— {escape(document['generator'])}, results.json version {document['version']}</p></header><main>"]
    for i, ev in enumerate(evaluations):
        out.append(evaluation_section(ev, [r for r in rows if r["source"] == "evaluation" and r["index"] == i]))
    comparisons = document.get("comparisons", [])
    for check in checks:
        same = [c for c in comparisons if c["kind"] == "merged" and c["path"] == check["path"] and c["split"] == check["split"]]
        out.append(interference_section(check, same[0] if same else None))
    for compared in comparisons:
        if compared["kind"] != "merged":
            out.append(comparison_section(compared))
    out += [cases_section(group) for group in by_spec(cases).values()]
    out += [probes_section(group) for group in by_spec(probes).values()]
    times = document["timing"]["optimizations"]
    for i, o in enumerate(document["optimizations"]):
        out.append(optimization_section(o, times[i]["seconds"] if i < len(times) else None))
    for study in document["studies"]:
        out.append(study_section(study))
    if document["notes"]:
        out.append('<section class="notes"><h2>Notes</h2><ul class="notes">'
                   + "".join(f"<li>{escape(note)}</li>" for note in document["notes"]) + "</ul></section>")
    if document["usage"]:
        out.append(usage_section(document["usage"], document["timing"]))
    out.append("</main></body></html>\n")
    return "\n".join(out)
