"""How a mistake in a file the user wrote is said: one line that starts with the file and its line,
names the key, says what is wrong and how to fix it. Spec checks, data loading, cases and probes
all speak through ``problem`` and raise ``SpecError``.
"""

from __future__ import annotations

from pathlib import Path

Path_ = tuple[str | int, ...]  # where a value sits in a YAML document: keys and list indices


class SpecWarning(UserWarning):
    """Something in a spec the user chose to allow (``judge.unused_inputs: warn``), said at collection."""


class SpecError(Exception):
    """A problem with a spec (or its data) that the user must fix; ``str()`` is the message."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def problem(file: Path, line: int | None, where: str, what: str, fix: str) -> str:
    location = f"{file}:{line}" if line else str(file)
    key = f" {one_line(where)}:" if where else ""
    return f"{location}:{key} {one_line(what)}. Fix: {one_line(fix)}"


def one_line(text: str) -> str:
    """Names quoted from a file may hold line breaks or control characters; escaped, each problem
    stays one line that starts with its file, as pytest prints it."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def dotted(at: Path_) -> str:
    out = ""
    for part in at:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
