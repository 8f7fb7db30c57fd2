"""Answer files: the model answers a spec's run used, as reviewable text beside the spec.

``pytest --judge-record`` writes ``<spec stem>.answers.jsonl`` (for ``summary.judge.yaml``:
``summary.judge.answers.jsonl``), and every later run reads it before any cache, so a CI job with
no model, no key and no network gates on the committed file (``--judge-cache=replay``).

The format (version 1) is JSON Lines, UTF-8, one object per line:

- line 1, the header: ``{"format": "pytest-judgeopt answers", "version": 1}``;
- then one line per answer, sorted by key:
  ``{"key": "<sha256 cache key>", "model": "<litellm model name>", "reply": {...}}``, where
  ``reply`` holds what the package uses of the response: ``choices`` (each ``text``,
  ``finish_reason`` and ``logprobs``, null unless logprobs were asked for), ``prompt_tokens``,
  ``completion_tokens`` and ``cost`` (null when litellm has no price).

The key is a hash of everything that changes an answer (the model, the messages, the sampling
settings; see ``llm.py``), never of the endpoint or credentials, and nothing else of the request
is stored: no endpoint and no secret is ever written. Sorted lines make a diff show exactly which
answers changed, and two branches that recorded different answers merge line by line (with
``*.answers.jsonl merge=union`` in ``.gitattributes``, even where both added lines at one spot).
A file is rewritten whole and atomically, in one canonical form, so recording twice with nothing
changed leaves it byte-identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .problems import SpecError, problem

SUFFIX = ".answers.jsonl"
FORMAT = "pytest-judgeopt answers"
VERSION = 1
HEADER = {"format": FORMAT, "version": VERSION}
FIX_LINE = ("restore the line (git checkout the file), or delete it and record the answer again with "
            "pytest --judge-record (needs the model)")


def answers_path(spec_path: Path) -> Path:
    """``summary.judge.yaml`` -> ``summary.judge.answers.jsonl``, beside the spec."""
    name = spec_path.name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return spec_path.with_name(name + SUFFIX)


@dataclass(frozen=True)
class Answer:
    key: str
    model: str
    reply: dict[str, Any]

    def line(self) -> str:
        return dumps({"key": self.key, "model": self.model, "reply": self.reply})


def dumps(value: Any) -> str:
    """The one canonical form, so the same answers always make the same bytes."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


def read_answers(path: Path) -> dict[str, Answer]:
    """The answers of one file by key ({} when there is none); a malformed file is a SpecError naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as exc:
        raise SpecError([problem(path, None, "", f"not UTF-8 text (byte {exc.start})", FIX_LINE)]) from None
    lines = text.splitlines()
    if not lines:
        raise SpecError([problem(path, 1, "", "the file is empty, without its header line",
                                 "delete the file, or record it again with pytest --judge-record")])
    header = parse_line(path, 1, lines[0])
    if header.get("format") != FORMAT or "version" not in header:
        raise SpecError([problem(path, 1, "", f"not an answer file (the first line must be {dumps(HEADER)})",
                                 "delete the file, or record it again with pytest --judge-record")])
    if header["version"] != VERSION:
        raise SpecError([problem(path, 1, "", f"answer file version {header['version']!r}; this pytest-judgeopt "
                                              f"reads version {VERSION}",
                                 "record it again with pytest --judge-record, or use the pytest-judgeopt that wrote it")])
    out: dict[str, Answer] = {}
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        entry = parse_line(path, number, raw)
        answer = answer_from(path, number, entry)
        if answer.key in out and out[answer.key] != answer:
            raise SpecError([problem(path, number, "", f"the answer for key {answer.key[:12]}... is here and on line "
                                                       f"{first_line[answer.key]} with different contents (a merge of "
                                                       "two recordings?)",
                                     "delete one of the two lines, or record the file again with pytest --judge-record")])
        out[answer.key] = answer
        first_line.setdefault(answer.key, number)
    return out


def parse_line(path: Path, number: int, raw: str) -> dict[str, Any]:
    if raw.startswith(("<<<<<<<", "=======", ">>>>>>>")):
        raise SpecError([problem(path, number, "", "a git conflict marker",
                                 "resolve the conflict (keep the lines of both sides; the order does not matter), or "
                                 "add `*.answers.jsonl merge=union` to .gitattributes")])
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SpecError([problem(path, number, "", f"not a JSON object ({exc.msg} at column {exc.colno})", FIX_LINE)]) from None
    if not isinstance(value, dict):
        raise SpecError([problem(path, number, "", f"not a JSON object (found {type(value).__name__})", FIX_LINE)])
    return value


def answer_from(path: Path, number: int, entry: dict[str, Any]) -> Answer:
    """An answer line with the fields replay needs, each of the right kind."""
    def bad(what: str) -> SpecError:
        return SpecError([problem(path, number, "", what, FIX_LINE)])

    unknown = sorted(set(entry) - {"key", "model", "reply"})
    if unknown:
        raise bad(f"unknown field(s) {', '.join(unknown)} (an answer line has key, model and reply)")
    key, model, reply = entry.get("key"), entry.get("model"), entry.get("reply")
    if not isinstance(key, str) or len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise bad("`key` must be the 64 hex digits of a cache key")
    if not isinstance(model, str) or not model:
        raise bad("`model` must be the model's name")
    if not isinstance(reply, dict):
        raise bad("`reply` must be an object with `choices`")
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices:
        raise bad("`reply.choices` must be a list of at least one choice")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict) or not (choice.get("text") is None or isinstance(choice.get("text"), str)):
            raise bad(f"`reply.choices[{i}]` must be an object whose `text` is a string or null")
        logprobs = choice.get("logprobs")
        if logprobs is not None and not (isinstance(logprobs, list) and all(
                isinstance(pos, list) and all(isinstance(alt, list) and len(alt) == 2 and isinstance(alt[0], str)
                                              and isinstance(alt[1], (int, float)) for alt in pos) for pos in logprobs)):
            raise bad(f"`reply.choices[{i}].logprobs` must be null or a list of [[token, logprob], ...] per token")
    for name in ("prompt_tokens", "completion_tokens"):
        if not isinstance(reply.get(name, 0), int) or isinstance(reply.get(name, 0), bool):
            raise bad(f"`reply.{name}` must be a whole number")
    cost = reply.get("cost")
    if cost is not None and (not isinstance(cost, (int, float)) or isinstance(cost, bool)):
        raise bad("`reply.cost` must be a number or null")
    return Answer(key, model, reply)


def render(answers: Iterable[Answer]) -> str:
    """The whole file: the header, then one line per answer, sorted by key."""
    lines = [dumps(HEADER)] + [a.line() for a in sorted(answers, key=lambda a: a.key)]
    return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    """What recording did to one file: answers added, kept and dropped (and unused ones kept, with why)."""

    path: Path
    added: int
    kept: int
    dropped: int
    replaced: int = 0  # recorded before with another reply (--judge-cache=refresh, a changed model)
    unused_kept: int = 0
    why_kept: str = ""
    written: bool = False

    def describe(self, root: Path | None = None) -> str:
        name = self.path.name
        if root is not None and self.path.is_relative_to(root):
            name = self.path.relative_to(root).as_posix()
        text = f"{name}: {self.added} added, {self.kept} kept, {self.dropped} dropped"
        if self.replaced:
            text += f", {self.replaced} replaced"
        if self.unused_kept:
            text += f"; {self.unused_kept} unused kept ({self.why_kept})"
        return text + ("" if self.written else " (unchanged)")


@dataclass
class Recorder:
    """Per spec, every answer the run used (from a model or any cache), and how many of its calls failed.

    Under pytest-xdist each worker records what it ran and the controller merges the records
    (``state``/``add_state``) before writing, so the file holds the answers of every item.
    """

    used: dict[Path, dict[str, Answer]] = field(default_factory=dict)
    failed: dict[Path, int] = field(default_factory=dict)

    def use(self, spec_path: Path, key: str, model: str, reply: Mapping[str, Any]) -> None:
        # in the form a file gives back (lists, not tuples), so a recorded answer equals the one read again
        self.used.setdefault(spec_path, {})[key] = Answer(key, model, json.loads(dumps(reply)))

    def fail(self, spec_path: Path) -> None:
        self.failed[spec_path] = self.failed.get(spec_path, 0) + 1

    def state(self) -> dict[str, Any]:
        return {"used": {str(p): {k: [a.model, a.reply] for k, a in used.items()} for p, used in self.used.items()},
                "failed": {str(p): n for p, n in self.failed.items()}}

    def add_state(self, state: Mapping[str, Any]) -> None:
        for path, used in state.get("used", {}).items():
            for key, (model, reply) in used.items():
                self.use(Path(path), key, model, reply)
        for path, n in state.get("failed", {}).items():
            self.failed[Path(path)] = self.failed.get(Path(path), 0) + n

    def write(self, spec_path: Path, *, keep_unused: str = "") -> Outcome:
        """Rewrite the spec's answer file with the answers this run used.

        Answers the run did not use are dropped, unless ``keep_unused`` says why they must stay (not
        every item of the spec ran, or some calls failed: their answers are unknown, not stale).
        """
        from .files import write_atomic

        path = answers_path(spec_path)
        existing = read_answers(path)
        used = self.used.get(spec_path, {})
        if not keep_unused and self.failed.get(spec_path):
            keep_unused = f"{self.failed[spec_path]} calls failed"
        unused = {k: a for k, a in existing.items() if k not in used}
        final = {**(unused if keep_unused else {}), **used}
        outcome = Outcome(path, added=sum(k not in existing for k in used),
                          kept=sum(k in existing and existing[k] == a for k, a in used.items()),
                          replaced=sum(k in existing and existing[k] != a for k, a in used.items()),
                          dropped=0 if keep_unused else len(unused), unused_kept=len(unused) if keep_unused else 0,
                          why_kept=keep_unused)
        if not final and not existing and not path.exists():
            return outcome  # nothing to record and no file: no file of a header alone
        text = render(final.values())
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if text != old:
            write_atomic(path, text)
            outcome.written = True
        return outcome
