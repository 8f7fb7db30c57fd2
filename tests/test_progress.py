"""Live progress: the status text, its throttling, how it is drawn and erased, and where it is (not) shown.

The terminal tests run pytest in a pseudo-terminal, as a person would, on answers replayed from the
cache (so no model and no litellm import is needed), and check the bytes that reached the screen:
every status drawn is erased before pytest writes again, and what remains is pytest's own layout.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pytest_judgeopt.progress import Progress, TerminalStatus, clock_text, progress_text
from tests.conftest import human_from_prompt, make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer
from tests.terminal import DRAW, in_terminal, screen_lines

RECORDS = make_records()
STATUS = re.compile(r" judge \d+/\d+ \(\d+%\) \| \d+ cached \| \d+ failed \| \d+\.\d calls/s \| \d+:\d\d")


def test_progress_text_counts_against_what_was_announced() -> None:
    assert progress_text({"judge": 120}, {"judge": 384}, hits=40, errors=2, elapsed=10.0) == \
        "judge 120/384 (31%) | 40 cached | 2 failed | 12.0 calls/s | 0:10"
    text = progress_text({"judge": 40, "loss": 8, "gradient": 8}, {"judge": 40, "gate": 16}, hits=0, errors=1,
                         elapsed=75.0, width=200)
    assert text == "judge 40/40 (100%), gate 0/16 (0%), loss 8, gradient 8 | 0 cached | 1 failed | 0.7 calls/s | 1:15"
    assert progress_text({}, {}, hits=0, errors=0, elapsed=0.0) == "0 calls | 0 cached | 0 failed | 0.0 calls/s | 0:00"
    assert progress_text({"judge": 5}, {"judge": 3}, hits=0, errors=0, elapsed=1.0).startswith("judge 5/3 (100%)")
    cut = progress_text({"judge": 120}, {"judge": 384}, hits=40, errors=2, elapsed=10.0, width=30)
    assert cut == "judge 120/384 (31%) | 40 ca..." and len(cut) == 30
    assert clock_text(3723.4) == "1:02:03" and clock_text(59.9) == "0:59"


class Screen:
    """Records what Progress draws, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.log: list[str] = []

    def clock(self) -> float:
        return self.now


def test_redraws_at_most_five_times_a_second_only_while_an_item_runs_and_erases_after() -> None:
    screen, expected = Screen(), {"judge": 10}
    progress = Progress(lambda text: screen.log.append(text), lambda: screen.log.append("<erase>"), expected,
                        clock=screen.clock)
    progress("call", "judge")  # between items pytest may be writing: nothing is drawn
    assert screen.log == []
    progress.begin()
    for _ in range(3):  # three calls in the same instant: one redraw
        progress("hit", "judge")
    assert screen.log == ["judge 2/10 (20%) | 1 cached | 0 failed | 0.0 calls/s | 0:00"]
    screen.now += 0.1
    progress("error", "judge")
    assert len(screen.log) == 1
    screen.now += 0.15
    progress("shared", "judge")
    assert screen.log[-1] == "judge 6/10 (60%) | 3 cached | 1 failed | 24.0 calls/s | 0:00"

    written: list[str] = []
    progress.message(written.append, "judging toy: 10 samples")  # a line that stays: the status steps aside
    assert written == ["judging toy: 10 samples"] and screen.log[-2:] == ["<erase>", screen.log[-1]]
    progress.end()
    assert screen.log[-1] == "<erase>"
    progress.end()  # nothing shown, nothing to erase
    assert screen.log.count("<erase>") == 2
    screen.now += 1
    progress("call", "judge")
    assert screen.log[-1] == "<erase>"


def test_the_status_goes_after_the_cursor_and_the_cursor_back() -> None:
    read, write = os.pipe()
    try:
        status = TerminalStatus(write, column=lambda: 20, width=lambda: 80, dim=False)
        status.show("judge 1/2 (50%)")
        status.hide()
        status.show("x" * 200)  # cut to the room left on the line
        narrow = TerminalStatus(write, column=lambda: 60, width=lambda: 80)
        narrow.show("judge 1/2 (50%)")  # too little room left: nothing drawn
        os.close(write)
        out = os.read(read, 10_000).decode()
    finally:
        os.close(read)
    assert out == ("\x1b[K judge 1/2 (50%)\x1b[16D" + "\x1b[K" + "\x1b[K " + "x" * 57 + "\x1b[58D")


def write_project(folder: Path, server: FakeLLMServer) -> None:
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    # 2 test documents: too few for the merged check's interval, which these display tests do not judge
    (folder / "toy.judge.yaml").write_text(spec_text(server_model(server), extra="interference: {inconclusive: pass}\n"))


def test_no_progress_when_the_output_is_not_a_terminal(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    write_project(pytester.path, fake_llm)
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert "calls/s" not in out and "\x1b" not in out
    # what is being judged is said once per evaluation, and pytest's own lines stay whole around it
    assert result.stdout.lines[result.stdout.lines.index("collected 3 items") + 2:][:3] == [
        "toy.judge.yaml ", "judging toy: 8 samples x 2 criteria (separate, and merged for the ::merged check, each "
        "sample's calls together) on openai/fake-judge", "toy.judge.yaml ..." + " " * 55 + "[100%]"]


@pytest.fixture
def replayable(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> Path:
    """A project whose answers are all in its cache, so a run needs no model (nor litellm)."""
    fake_llm.responder = human_from_prompt(RECORDS)
    write_project(pytester.path, fake_llm)
    pytester.runpytest().assert_outcomes(passed=3)
    fake_llm.stop()
    return pytester.path


@pytest.mark.posix
def test_on_a_terminal_the_status_is_drawn_while_judging_and_leaves_no_trace(replayable: Path) -> None:
    screen = in_terminal(replayable)
    draws = list(DRAW.finditer(screen))
    assert draws, screen
    for draw in draws:
        assert STATUS.fullmatch(draw.group(1)), draw.group(1)
        assert int(draw.group(2)) == len(draw.group(1))  # the cursor goes back exactly over what was drawn
        assert screen[draw.end():].startswith("\x1b[K")  # erased (or redrawn) before anything else is written
    # announced: 8 samples x (2 criteria + the merged call, made with them since the ::merged check follows)
    assert draws[0].group(1).startswith(" judge 0/24 (0%) | 0 cached")
    assert all(re.match(r" judge \d+/24 ", draw.group(1)) for draw in draws)  # one pass: nothing announced after
    lines = screen_lines(DRAW.sub("", screen))
    start = lines.index("collected 3 items")
    assert lines[start + 2:start + 4] == [
        "toy.judge.yaml", "judging toy: 8 samples x 2 criteria (separate, and merged for the ::merged check, each "
        "sample's calls together) on openai/fake-judge"]
    assert re.fullmatch(r"toy\.judge\.yaml \.\.\. +\[100%\]", lines[start + 4]) and len(lines[start + 4]) < 120
    clean = "\n".join(lines)
    assert "\x1b[32mpass" in screen  # the summary is coloured on a terminal
    assert re.search(r"coherence\s+spearman\s+1\.000\s+-\s+0\.50\s+8\s+8\s+0\s+2\s+pass", clean)


@pytest.mark.posix
def test_with_no_color_the_status_and_the_summary_are_plain(replayable: Path) -> None:
    screen = in_terminal(replayable, env={"NO_COLOR": "1"})
    assert DRAW.search(screen)  # still a terminal: the status is drawn, without the dim style
    assert "\x1b[2m" not in screen and "\x1b[32m" not in screen and "\x1b[1m" not in screen
    assert re.search(r"coherence\s+spearman\s+1\.000\s+-\s+0\.50\s+8\s+8\s+0\s+2\s+pass", screen)
    # (pytest-xdist in a terminal: tests/test_report.py's parallel run, where no worker draws a status)
