"""index.html: self-contained, escaped, and rendered by a real browser (headless Chromium).

The browser test loads the page a real run wrote (an optimization, criterion items, the merged
check, against the scripted server) and checks what Chromium made of it: one scatter point per
scored judgment, a step chart per optimized criterion with its accepted and rejected updates, and a
screenshot that actually shows the charts' colours. It is skipped only where Chromium is not
installed (``.ci/run`` installs Debian's ``chromium``).

``python tests/test_html.py REPORT/index.html docs/report.png`` takes the README's screenshot with
the same browser settings.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.html_report import JITTER, jitter, render_html
from pytest_judgeopt.report import merge, predictions, results_document
from tests.world import report_run

WINDOW = (1200, 1600)
SCATTER_BLUE = (0x09, 0x69, 0xDA)
ACCEPTED_GREEN = (0x1A, 0x7F, 0x37)
REJECTED_RED = (0xCF, 0x22, 0x2E)


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Headless Chromium, offline and without a profile of its own: nothing but the page is loaded."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                               "--force-device-scale-factor=1", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, check=True)


def screenshot(page: Path, png: Path, window: tuple[int, int] = WINDOW) -> None:
    chromium(f"--screenshot={png.resolve()}", f"--window-size={window[0]},{window[1]}", page.resolve().as_uri())


def rendered_dom(page: Path) -> str:
    return chromium("--dump-dom", page.resolve().as_uri()).stdout


def png_pixels(png: Path) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB(A) PNG: enough of a decoder to see what Chromium drew."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    channels = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(line)
        previous = line
    pixels = [(row[x * channels], row[x * channels + 1], row[x * channels + 2]) for row in rows for x in range(width)]
    return width, height, pixels


def near(pixels: list[tuple[int, int, int]], color: tuple[int, int, int], tolerance: int = 40) -> int:
    """How many pixels are (about) this colour: antialiased and translucent marks are not exact."""
    counts = Counter(pixels)
    return sum(n for pixel, n in counts.items() if sum(abs(a - b) for a, b in zip(pixel, color, strict=True)) <= tolerance)


def document(reply: str, instruction: str, spec: str = "toy") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A small results document and its prediction rows, built the way the plugin builds them."""
    results = [{"criterion": "coherence", "split": "test", "shape": "separate", "instruction": instruction,
                "instruction_source": "spec", "method": "spearman", "level": "pooled", "value": 0.5, "low": 0.1,
                "high": 0.8, "confidence": 0.95, "pairs": 3, "groups": 0, "groups_skipped": 0, "undefined_reason": None,
                "n": 4, "min_rho": 0.3, "parse_failures": {"refusal": 1}, "passed": True, "reasons": []}]
    rows = [{"criterion": "coherence", "record_id": f"r{i}", "group": "g", "human": float(i % 5 + 1),
             "judge": None if i == 3 else float((i + 1) % 5 + 1), "failure": "refusal" if i == 3 else None,
             "reply": reply} for i in range(4)]
    ev = {"spec": spec, "path": "/p/toy.judge.yaml", "split": "test", "shape": "separate", "model": "m", "records": 4,
          "split_ids": {"train": [], "val": [], "test": [f"r{i}" for i in range(4)]}, "results": results,
          "usage": {"calls": 4, "prompt_tokens": 1, "completion_tokens": 1}, "logprobs_missing": 0, "predictions": rows}
    found = merge([{"evaluations": [ev], "notes": [f"a note about <{spec}>"]}])
    return results_document(found), list(predictions(found))


def test_everything_from_a_spec_or_a_model_is_escaped_and_nothing_is_fetched() -> None:
    hostile = "<script>alert('reply')</script>"
    doc, rows = document(hostile, "Rate <img src=x onerror=alert(1)> coherence", spec="<b>toy</b>")
    page = render_html(doc, rows)
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<b>toy</b>" not in page
    assert "&lt;script&gt;alert(&#x27;reply&#x27;)&lt;/script&gt;" in page  # shown as text, in the points' tooltips
    assert "Rate &lt;img src=x onerror=alert(1)&gt; coherence" in page
    assert not re.search(r"https?:|(src|href)\s*=|url\(|@import", page.replace("src=x", ""))
    assert page.count("<circle") == 3  # four judgments, one failed: not plotted
    assert "1 failed judgments are not plotted" in page


def test_jitter_is_fixed_by_the_record_and_small() -> None:
    offsets = [jitter(f"coherence/r{i}") for i in range(200)]
    assert offsets == [jitter(f"coherence/r{i}") for i in range(200)]
    assert all(abs(dx) <= JITTER and abs(dy) <= JITTER for dx, dy in offsets)
    assert len(set(offsets)) == 200


def scored(rows: list[dict[str, Any]]) -> int:
    return sum(r["source"] == "evaluation" and r["judge"] is not None for r in rows)


def test_chromium_renders_every_chart_of_a_real_run(pytester: pytest.Pytester, fake_llm: Any, tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    report_run(pytester, fake_llm, "out").assert_outcomes(passed=4)
    folder = pytester.path / "out"
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    results = json.loads((folder / "results.json").read_text())

    dom = rendered_dom(folder / "index.html")
    scatters = re.findall(r'<svg class="scatter".*?</svg>', dom, re.S)
    assert len(scatters) == 2  # one per criterion of the one evaluation
    assert sum(s.count("<circle") for s in scatters) == scored(rows) == 2 * 18
    steps = re.findall(r'<svg class="steps".*?</svg>', dom, re.S)
    assert len(steps) == 2  # one per optimized criterion
    coherence, fluency = steps
    assert coherence.count('class="accepted"') == 1 and coherence.count('class="rejected"') == 0
    assert fluency.count('class="accepted"') == 0 and fluency.count('class="rejected"') == 2
    assert all(s.count('class="test"') == 2 for s in steps)  # test rho before and after
    (opt,) = results["optimizations"]
    assert len(re.findall(r'class="val-point"', coherence)) == opt["steps_run"] + 1
    assert '<span class="add">+Count the facts</span>' in dom
    assert re.search(r"<td>fluency</td><td>1\.000</td><td>1\.000</td><td>\+0\.000</td>", dom)  # interference table

    png = tmp_path / "report.png"
    screenshot(folder / "index.html", png, (1200, 2600))  # tall enough for the whole page
    width, height, pixels = png_pixels(png)
    assert (width, height) == (1200, 2600)
    assert near(pixels, SCATTER_BLUE) > 500  # the points and lines were painted, not just put in the DOM
    assert near(pixels, ACCEPTED_GREEN) > 20 and near(pixels, REJECTED_RED) > 20


if __name__ == "__main__":  # the README's screenshot: python tests/test_html.py REPORT/index.html docs/report.png
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
