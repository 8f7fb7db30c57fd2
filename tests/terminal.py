"""Running pytest in a pseudo-terminal, as a person would, and reading back what reached the screen.

A helper module (no tests here) for the progress and report tests.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

# a status as TerminalStatus draws it: erase to the end of the line, the (dimmed) text, cursor back over it
DRAW = re.compile(r"\x1b\[K(?:\x1b\[2m)?( [^\x1b]*)(?:\x1b\[0m)?\x1b\[(\d+)D")


def in_terminal(folder: Path, *args: str, env: dict[str, str] | None = None, columns: int = 120,
                cache: str = "replay") -> str:
    """Run pytest in a pseudo-terminal of the given width; what it wrote to the screen, raw. POSIX only (a pty):
    imported here, so the modules that use it still load elsewhere; their tests are marked ``posix``."""
    import fcntl
    import pty
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "PY_COLORS", "FORCE_COLOR", "COLUMNS")}
    environment.update({"TERM": "xterm", **(env or {})})
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:benchmark",
                                "-p", "no:randomly", f"--judge-cache={cache}", *args],
                               cwd=folder, stdin=child, stdout=child, stderr=child, env=environment)
    os.close(child)
    chunks, deadline = [], time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(main)
        process.wait(timeout=60)
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def screen_lines(screen: str) -> list[str]:
    """The lines a terminal would show: styles dropped, a carriage return's rewrite kept, trailing blanks cut."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", screen)
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
