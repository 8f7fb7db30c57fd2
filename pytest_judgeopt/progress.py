"""Live progress while models are called: calls done out of those announced, cache hits, errors, rate, time.

A judge pass over thousands of samples runs inside one pytest item, for minutes, and pytest
shows nothing until it ends; this module draws one status text on the terminal meanwhile.
It must not corrupt pytest's own output, so the status is drawn *after* whatever pytest has
written on the current line (the file name and its dots, or ``-v``'s test id), and the cursor
is moved back to where pytest left it: pytest's next character lands where it would have
anyway, and erasing to the end of the line removes the status without a trace. It is drawn
only while an item runs (pytest writes between items, never during one), only on a terminal
and never on a pytest-xdist worker, and redrawn at most five times a second.

The counting is separate from the drawing (``Progress`` takes callables), so the text can be
tested as a unit and the same counts could feed another display.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

REDRAW_INTERVAL = 0.2  # seconds: five redraws a second at most; a fast cached pass must not be slowed by drawing
MIN_ROOM = 24  # columns left on the line below which no status is drawn (it would say too little to help)
ERASE_TO_END = "\x1b[K"
DIM, RESET = "\x1b[2m", "\x1b[0m"
DONE_EVENTS = ("hit", "call", "error", "shared")


def clock_text(seconds: float) -> str:
    """``0:07``, ``12:30``, ``1:02:03``: elapsed time as people read it."""
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(done: Mapping[str, int], expected: Mapping[str, int], *, hits: int, errors: int, elapsed: float,
                  width: int = 80) -> str:
    """The status: per role, calls done out of those announced (or just done, for roles that announce none),
    then cache hits, failed calls, the rate and the time since the first call; cut to ``width`` columns.

    >>> progress_text({"judge": 120, "loss": 8}, {"judge": 384}, hits=40, errors=2, elapsed=10.0)
    'judge 120/384 (31%), loss 8 | 40 cached | 2 failed | 12.8 calls/s | 0:10'
    """
    parts = []
    for role in dict.fromkeys([*expected, *done]):
        n, total = done.get(role, 0), expected.get(role, 0)
        parts.append(f"{role} {n}/{total} ({min(n, total) / total:.0%})" if total else f"{role} {n}")
    rate = sum(done.values()) / elapsed if elapsed > 0 else 0.0
    text = " | ".join([", ".join(parts) or "0 calls", f"{hits} cached", f"{errors} failed", f"{rate:.1f} calls/s",
                       clock_text(elapsed)])
    if len(text) > width:
        text = text[:width - 3] + "..." if width > 3 else ""
    return text


class Progress:
    """Counts the client's requests as they end (an ``LLM.listeners`` callback) and redraws the status.

    ``show(text)`` draws and ``hide()`` erases; both are called with the lock held, so the model
    client's thread and pytest's thread never write at once. ``expected`` is the client's count of
    announced requests per role, read when drawing.
    """

    def __init__(self, show: Callable[[str], None], hide: Callable[[], None], expected: Mapping[str, int], *,
                 width: Callable[[], int] = lambda: 80, clock: Callable[[], float] = time.monotonic,
                 interval: float = REDRAW_INTERVAL, close: Callable[[], None] = lambda: None):
        self._show, self._hide, self._close = show, hide, close
        self.expected = expected
        self.width = width
        self.clock = clock
        self.interval = interval
        self.done: Counter[str] = Counter()
        self.hits = 0
        self.errors = 0
        self.started: float | None = None
        self.active = False
        self.shown = False
        self._last = float("-inf")
        self._lock = threading.RLock()

    def __call__(self, event: str, role: str) -> None:
        with self._lock:
            if event in DONE_EVENTS:
                self.done[role] += 1
                self.hits += event == "hit"
                self.errors += event == "error"
            if self.started is None:
                self.started = self.clock()
            now = self.clock()
            if self.active and now - self._last >= self.interval:
                self._draw(now)

    def text(self, now: float | None = None) -> str:
        elapsed = 0.0 if self.started is None else (self.clock() if now is None else now) - self.started
        return progress_text(self.done, self.expected, hits=self.hits, errors=self.errors, elapsed=elapsed,
                             width=self.width())

    def _draw(self, now: float) -> None:
        self._last = now
        text = self.text(now)
        if text:
            self._show(text)
            self.shown = True

    def begin(self) -> None:
        """An item starts: pytest writes nothing until it ends, so the status may be drawn."""
        with self._lock:
            self.active = True
            self._last = float("-inf")

    def end(self) -> None:
        """An item ended: erase the status before pytest writes its result."""
        with self._lock:
            self.active = False
            self._erase()

    def _erase(self) -> None:
        if self.shown:
            self._hide()
            self.shown = False

    def close(self) -> None:
        """The run is over: release what the display holds (the terminal's duplicated descriptor)."""
        with self._lock:
            self.active = False
            self._erase()
            self._close()

    def message(self, write: Callable[[str], None], text: str) -> None:
        """A line that stays (what is being judged, an optimization's plan): the status steps aside for it."""
        with self._lock:
            self._erase()
            write(text)
            if self.active and self.started is not None:
                self._draw(self.clock())


class TerminalStatus:
    """Draws a status after the cursor on the terminal's current line and moves the cursor back.

    Written straight to a duplicate of the terminal's file descriptor (taken before pytest starts
    capturing output), so pytest's capture of the test's own output neither swallows the status
    nor records it. ``column`` is where pytest's writer is on the current line.
    """

    def __init__(self, fd: int, column: Callable[[], int], width: Callable[[], int], *, dim: bool = True):
        self.fd = fd
        self.column = column
        self.width = width
        self.dim = dim

    def room(self) -> int:
        """Columns left on the line, less one: writing into the last column would wrap on some terminals."""
        return self.width() - self.column() - 2

    def show(self, text: str) -> None:
        room = self.room()
        if room < MIN_ROOM:
            return
        text = " " + text[:room - 1]
        styled = f"{DIM}{text}{RESET}" if self.dim else text
        self._write(f"{ERASE_TO_END}{styled}\x1b[{len(text)}D")

    def hide(self) -> None:
        self._write(ERASE_TO_END)

    def _write(self, text: str) -> None:
        # the terminal may have gone away (a closed pipe, a hung-up session): progress is not worth failing for
        with contextlib.suppress(OSError):
            os.write(self.fd, text.encode("utf-8", "replace"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
