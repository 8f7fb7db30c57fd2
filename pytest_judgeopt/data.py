"""Datasets of texts with human scores: each record with its id, its group (the source document),
its inputs and a human score per criterion. Every row problem is reported with the data file's line
and field; `splits.py` divides the records into train, val and test.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from .problems import SpecError, problem
from .spec import DatasetSpec, Spec

MAX_FIELD_CHARS = 1_000_000
MAX_PROBLEMS_SHOWN = 10
MAX_KEYS_SHOWN = 12
SEPARATORS = {";": "\";\"", "\t": "\"\\t\"", "|": "\"|\""}  # what a CSV header read with commas shows it was written with

Rows = Iterable[tuple[int, dict[str, Any]]]
Loader = Callable[[Path, str, DatasetSpec], "Rows | None"]


class Missing:
    """What a field path leads to when it leads nowhere (a field that holds null is a value: None)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = Missing()


@dataclass(frozen=True)
class Record:
    id: str
    group: str
    inputs: dict[str, str]
    human: dict[str, float]
    line: int
    # dataset.annotators: per criterion, each annotator's score (None where one did not rate), in their order
    ratings: dict[str, tuple[float | None, ...]] = dataclass_field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    path: Path
    records: tuple[Record, ...]
    digest: str
    paths: tuple[Path, ...] = ()
    skipped: int = 0  # records left out by dataset.skip_missing

    def skipped_note(self) -> str | None:
        if not self.skipped:
            return None
        total = self.skipped + len(self.records)
        return (f"{self.path.name}: {self.skipped} of {total} records have no human score for some criterion and were "
                "skipped (dataset.skip_missing)")


# -- field paths ------------------------------------------------------------------------------

def resolve_field(record: Mapping[str, Any], path: str) -> Any:
    """The value a field path names in a record, or MISSING.

    A path is a field name, or dotted steps into nested objects (``doc.text``, ``scores.coherence``,
    ``ratings.0.score`` into a list). A key that holds the dots itself (a CSV column named
    ``scores.coherence``) wins over nesting, and an object written as JSON text (a CSV cell) is read
    on the way, so the same path works whether the data came as JSONL or as CSV. Ids, groups,
    inputs, scores and annotators are all looked up here, so they follow one rule.
    """
    found = record.get(path, MISSING)
    if found is MISSING and "." in path:
        return walk(record, path.split("."), whole_tried=True)
    return found


def walk(value: Any, steps: list[str], whole_tried: bool = False) -> Any:
    """Follow the steps from a value; ``whole_tried``: the caller already looked for all the steps as one key."""
    if not steps:
        return value
    if type(value) is str:
        value = opened(value)
    if isinstance(value, (dict, Mapping)):  # dict first: the common case, and cheaper to check than the ABC
        if len(steps) == 1:
            return value.get(steps[0], MISSING)
        for cut in range(len(steps) - whole_tried, 0, -1):  # the longest key first: "a.b" before "a", then "b"
            key = ".".join(steps[:cut]) if cut > 1 else steps[0]
            if key in value:
                found = walk(value[key], steps[cut:])
                if found is not MISSING:
                    return found
        return MISSING
    if isinstance(value, list) and steps[0].isascii() and steps[0].isdigit() and int(steps[0]) < len(value):
        return walk(value[int(steps[0])], steps[1:])
    return MISSING


def opened(value: Any) -> Any:
    """A JSON object or list written as text, as a CSV cell holds one; anything else as it is."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def where_path_stops(record: Mapping[str, Any], path: str) -> tuple[str, Any]:
    """The longest start of a path that resolves in a record, and what is there (the record itself for '')."""
    steps = path.split(".")
    done: list[str] = []
    here: Any = record
    while steps:
        here = opened(here)
        for cut in range(len(steps), 0, -1):
            key = ".".join(steps[:cut])
            step: str | int = key
            if isinstance(here, Mapping) and key in here:
                break
            if isinstance(here, list) and cut == 1 and key.isascii() and key.isdigit() and int(key) < len(here):
                step = int(key)
                break
        else:
            return ".".join(done), here
        here = here[step]
        done.append(str(step))
        steps = steps[cut:]
    return ".".join(done), here


def field_paths(record: Mapping[str, Any], depth: int = 3, limit: int = 500) -> list[str]:
    """The paths a record offers (nested objects to a few levels), for a did-you-mean."""
    out: list[str] = []

    def visit(value: Any, prefix: str, level: int) -> None:
        value = opened(value) if prefix else value
        if not isinstance(value, Mapping):
            return
        for key, item in value.items():
            if len(out) >= limit:
                return
            name = f"{prefix}.{key}" if prefix else str(key)
            out.append(name)
            if level < depth:
                visit(item, name, level + 1)

    visit(record, "", 1)
    return out


def closest_path(record: Mapping[str, Any], path: str) -> str | None:
    """The path in this record nearest to a wrong one: spelled alike and ending in a key spelled alike
    (`doc.txt` -> `doc.text`, not `doc.id` -> `doc.title`), else one ending in the same key (`coherence`
    -> `scores.coherence`)."""
    offered = field_paths(record)
    last = path.rsplit(".", 1)[-1]

    def end_alike(candidate: str) -> bool:
        return difflib.SequenceMatcher(None, last, candidate.rsplit(".", 1)[-1]).ratio() >= 0.6

    guess = [g for g in difflib.get_close_matches(path, offered, n=5, cutoff=0.6) if end_alike(g)]
    if guess:
        return guess[0]
    same_end = [p for p in offered if p.rsplit(".", 1)[-1] == last]
    return same_end[0] if same_end else None


def keys_text(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        if not keys:
            return "no fields"
        shown = ", ".join(keys[:MAX_KEYS_SHOWN])
        return shown + (f", ... ({len(keys)} fields)" if len(keys) > MAX_KEYS_SHOWN else "")
    if isinstance(value, list):
        return f"a list of {len(value)} items, not fields"
    return f"{type_words(value)}, not fields"


def type_words(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "text"}.get(type(value), type(value).__name__)


def unresolved_text(record: Mapping[str, Any], path: str, first: str) -> str:
    """Why a path finds nothing in the first record: where it stops and what exists there."""
    stop, here = where_path_stops(record, path)
    if stop == path:  # it resolves, to nothing: null or empty text
        return f"'{path}' is {'empty' if here == '' else 'null'} in every record"
    there = f"'{stop}' holds" if stop else "the record has"
    return f"'{path}' names no field in any record; in the first ({first}) {there} {keys_text(here)}"


def delimiter_problem(spec: Spec, first: tuple[Path, int, Mapping[str, Any]]) -> str | None:
    """A CSV read with the wrong delimiter comes back as one field whose name holds the real separator:
    one problem saying so, instead of one per field the spec names."""
    file, _, record = first
    if spec.dataset.format_of(file) != "csv":
        return None
    for key in record:
        for sep, written in SEPARATORS.items():
            if sep in str(key):
                shown = json.dumps(str(key)[:60] + ("..." if len(str(key)) > 60 else ""))
                return problem(spec.path, spec.line_of("dataset", "delimiter") or spec.line_of("dataset", "path"),
                               "dataset.delimiter", f"the header of {file.name} was read as one field {shown}, "
                               f"which holds {written}: the file is not comma-separated",
                               f"set `delimiter: {written}` under `dataset:`")
    return None


def path_problem(spec: Spec, at: tuple[str, ...], path: str, first: tuple[Path, int, Mapping[str, Any]],
                 what: str | None = None, fix: str | None = None) -> str:
    """One problem for a field path that resolves in no record: at the spec's line that names the path,
    quoting the first record (file and line) and the fields it does have, with the closest match."""
    file, line, record = first
    where = f"{file.name}:{line}"
    text = unresolved_text(record, path, where)
    if what:
        text = f"{what}: {text}"
    guess = closest_path(record, path)
    if fix is None:
        fix = f"did you mean '{guess}'?" if guess else "write the field's path as the records have it (dots go into nested objects)"
    elif guess:
        fix = f"did you mean '{guess}'? Else {fix}"
    line_at = spec.line_of(*at) or spec.line_of(*at[:-1]) or spec.line_of("dataset")
    return problem(spec.path, line_at, ".".join(at), text, fix)


# -- reading ----------------------------------------------------------------------------------

def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as handle:  # -sig: editors on Windows write a BOM
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SpecError([problem(path, number, "", f"not valid JSON ({exc.msg} at column {exc.colno})",
                                         "write one JSON object per line")]) from None
            if not isinstance(row, dict):
                raise SpecError([problem(path, number, "", "a line must hold a JSON object", "write one {...} object per line")])
            yield number, row


def read_csv(path: Path, delimiter: str = ",") -> Iterator[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(MAX_FIELD_CHARS)
    with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: Excel writes a BOM before the header
        reader = csv.DictReader(handle, delimiter=delimiter)
        try:
            for row in reader:
                yield reader.line_num, row
        except csv.Error as exc:  # DictReader.line_num lags until a row succeeds; its reader's is current
            raise SpecError([problem(path, reader.reader.line_num, "", f"unreadable CSV ({exc})",
                                     f"fields are limited to {MAX_FIELD_CHARS:,} characters; check quoting")]) from None


BUILTIN_FORMATS = ("jsonl", "csv")


def read_builtin(path: Path, format: str, dataset: DatasetSpec | None = None) -> Rows | None:
    """The built-in formats; None for a format they do not read (a hook may)."""
    if format == "jsonl":
        return read_jsonl(path)
    if format == "csv":
        return read_csv(path, (dataset.delimiter if dataset else None) or ",")
    return None


def load_dataset(spec: Spec, loader: Loader | None = None) -> Dataset:
    """Read the spec's data (one file, or several as one dataset) and check every field the spec names."""
    ds = spec.dataset
    read = loader or read_builtin
    files = []
    for path in ds.paths:
        rows = read(path, ds.format_of(path), ds)
        if rows is None:
            raise SpecError([problem(spec.path, spec.line_of("dataset", "path"), "dataset.path",
                                     f"no loader reads '.{ds.format_of(path)}' files" + (f" ({path.name})" if len(ds.paths) > 1 else ""),
                                     "use .jsonl or .csv, set `dataset.format`, or add a pytest_judgeopt_load_records hook")])
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise SpecError([problem(spec.path, spec.line_of("dataset", "path"), "dataset.path",
                                     f"cannot read {path} ({exc.strerror})", "check the file's path and permissions")]) from None
        files.append((path, rows, digest))
    check = Checks(spec)
    records: list[Record] = []
    seen: dict[str, tuple[Path, int]] = {}
    for path, rows, _ in files:
        try:
            for line, row in rows:
                record = check.record(path, line, row)
                if record is None:
                    continue
                if record.id in seen:
                    where, first_line = seen[record.id]
                    first = f"line {first_line}" if where == path else f"{where.name}:{first_line}"
                    check.problems.append((check.rows, problem(path, line, ds.id, f"duplicate id '{record.id}' (first on {first})",
                                                               "give every record a unique id")))
                    continue
                seen[record.id] = (path, line)
                records.append(record)
        except UnicodeDecodeError as exc:
            check.problems.append((check.rows, problem(path, None, "", f"not UTF-8 text (byte {exc.start})",
                                                       "save the data file as UTF-8")))
    problems = check.finish()
    if problems:
        more = len(problems) - MAX_PROBLEMS_SHOWN
        raise SpecError(problems[:MAX_PROBLEMS_SHOWN] + ([f"... and {more} more problems like these"] if more > 0 else []))
    digests = [digest for _, _, digest in files]
    digest = digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return Dataset(ds.paths[0], tuple(records), digest, ds.paths, check.skipped)


@dataclass
class Field:
    """One path the spec names (an id, a group, an input, a score), and the records it found nothing in."""

    at: tuple[str, ...]  # where the spec names it, for the line
    path: str
    what: str  # the problem in one record
    fix: str
    missing: list[tuple[int, str]]  # (row, problem) per record it found nothing in


class Checks:
    """Every row problem, gathered; a path that resolves in no record becomes one problem at the spec."""

    def __init__(self, spec: Spec):
        self.spec = spec
        ds = spec.dataset
        self.problems: list[tuple[int, str]] = []  # (row, problem): reported in the data's order
        self.rows = 0
        self.skipped = 0
        self.first: tuple[Path, int, Mapping[str, Any]] | None = None
        self.id = Field(("dataset", "id"), ds.id, "the record has no id",
                        f"give every record a `{ds.id}` field, or set `dataset.id`", [])
        self.group = (Field(("dataset", "group"), ds.group, "the record has no group",
                            f"give every record a `{ds.group}` field", []) if ds.group else None)
        self.inputs = {name: Field(("dataset", "inputs", name), path, f"missing input field for {{{name}}}",
                                   f"add `{path}` to every record, or map {name} to another field in dataset.inputs", [])
                       for name, path in ds.inputs.items()}
        self.scores = {name: Field(*score_field(ds.scores, name), f"no human score for '{name}'",
                                   "add the score, or remove the record", []) for name in spec.criteria} if ds.scores else {}
        self.annotators = (Field(("dataset", "annotators"), ds.annotators, "the record has no annotators' scores",
                                 f"give every record a `{ds.annotators}` field of {{criterion: [score, ...]}}", [])
                           if ds.annotators else None)
        self.fields = ([self.id] + ([self.group] if self.group else []) + list(self.inputs.values())
                       + ([self.annotators] if self.annotators else []))
        self.holder = ds.scores if isinstance(ds.scores, str) else None

    def record(self, file: Path, line: int, row: Mapping[str, Any]) -> Record | None:
        """The row as a Record, or None after noting its problems (or counting it skipped)."""
        spec = self.spec
        self.rows += 1
        index = self.rows
        if self.first is None:
            self.first = (file, line, row)
        before = len(self.problems)
        complete = True
        values = []
        for field in self.fields:
            found = resolve_field(row, field.path)
            if found is MISSING or found is None or (found == "" and field.at[1] != "inputs"):  # empty text is an input
                field.missing.append((index, problem(file, line, field.path, field.what, field.fix)))
                complete = False
            values.append(found)
        rid = values[0]
        group = values[1] if self.group else rid
        inputs = {}
        texts = values[1 + bool(self.group):1 + bool(self.group) + len(self.inputs)]
        for (name, field), text in zip(self.inputs.items(), texts, strict=True):
            if text is MISSING or text is None:
                continue
            text = text if isinstance(text, str) else json.dumps(text) if isinstance(text, (dict, list)) else str(text)
            if len(text) > MAX_FIELD_CHARS:
                self.problems.append((index, problem(file, line, field.path, f"{len(text):,} characters, over the "
                                                     f"{MAX_FIELD_CHARS:,} limit",
                                                     "shorten the text; a judge cannot read this much in one prompt")))
            else:
                inputs[name] = text
        human = {}
        unscored = False
        ratings: dict[str, tuple[float | None, ...]] = {}
        if self.annotators is not None and values[-1] is not MISSING and values[-1] is not None:
            from .annotators import read_ratings

            for criterion in spec.criteria.values():
                found_ratings, why = read_ratings(opened(values[-1]), criterion.name, criterion.scale)
                if why:
                    self.problems.append((index, problem(file, line, f"{self.annotators.path}.{criterion.name}", why,
                                                         "write a list of scores on the criterion's scale, null where an "
                                                         "annotator did not rate")))
                elif found_ratings is not None:
                    ratings[criterion.name] = found_ratings
                    if not self.scores:
                        from .annotators import aggregate

                        human[criterion.name] = aggregate(found_ratings, spec.dataset.aggregate)
                elif not self.scores:
                    unscored = True
                    if not spec.dataset.skip_missing:
                        self.problems.append((index, problem(file, line, f"{self.annotators.path}.{criterion.name}",
                                                             f"no annotator rated '{criterion.name}'",
                                                             "add the annotators' scores, or set `dataset.skip_missing: true`")))
        # one lookup of a {criterion: score} field per row (a CSV cell of JSON is decoded once, not per criterion)
        holder = opened(resolve_field(row, self.holder)) if self.holder else MISSING
        for criterion in spec.criteria.values():
            if not self.scores:
                break
            field = self.scores[criterion.name]
            found = row.get(field.path, MISSING)
            if found is MISSING:
                if isinstance(holder, Mapping):
                    found = holder.get(criterion.name, MISSING)
                elif not self.holder:
                    found = resolve_field(row, field.path)
            if found is MISSING or found is None or found == "":
                unscored = True
                # with skip_missing the row is counted but not reported: a criterion no record scores is still an error
                field.missing.append((index, "" if spec.dataset.skip_missing else
                                      problem(file, line, field.path, field.what, field.fix)))
                continue
            number = as_number(found)
            low, high = criterion.scale
            if number is None:
                self.problems.append((index, problem(file, line, field.path, f"human score "
                                                     f"{json.dumps(found, default=str)[:40]} is not a number",
                                                     "write a number")))
            elif not low <= number <= high:
                self.problems.append((index, problem(file, line, field.path, f"human score {number:g} is outside the "
                                                     f"scale [{low:g}, {high:g}]", f"fix the score, or change "
                                                     f"criteria.{criterion.name}.scale in {spec.path.name}")))
            else:
                human[criterion.name] = number
        if len(self.problems) > before or not complete:
            return None
        if unscored:
            if spec.dataset.skip_missing:
                self.skipped += 1
            return None
        return Record(str(rid), str(group), inputs, human, line, ratings)

    def finish(self) -> list[str]:
        """Problems in order: the spec's wrong paths first (one each), then the rows'."""
        spec = self.spec
        first = self.first  # None exactly when there are no rows
        if self.rows == 0 or first is None:
            return [problem(spec.dataset.path, None, "", "the data file holds no records",
                            "add records with inputs and human scores")] + [text for _, text in self.problems]
        out: list[str] = []
        rows: list[tuple[int, str]] = []
        fields = self.fields
        nowhere = [f for f in fields + list(self.scores.values()) if len(f.missing) == self.rows]
        wrong_delimiter = delimiter_problem(spec, first) if nowhere else None
        if wrong_delimiter:
            return [wrong_delimiter]
        for field in fields:
            if len(field.missing) == self.rows:
                out.append(path_problem(spec, field.at, field.path, first))
            else:
                rows.extend(field.missing)
        for name, field in self.scores.items():
            if len(field.missing) == self.rows:
                out.append(self.unscored(name, field))
            else:
                rows.extend(m for m in field.missing if m[1])
        return out + [text for _, text in sorted(rows + self.problems, key=lambda found: found[0])]

    def unscored(self, name: str, field: Field) -> str:
        """A criterion that no record scores is one mistake in the spec, not one per row."""
        spec = self.spec
        scores = spec.dataset.scores
        assert self.first is not None
        file, _, record = self.first
        what = f"no record in {file.name} has a human score for '{name}'"
        if isinstance(scores, str):
            holder = resolve_field(record, scores)
            if holder is not MISSING and isinstance(opened(holder), Mapping):
                # the scores field is there, the criterion is not in it: the criterion's name is the suspect
                inside = opened(holder)
                guess = difflib.get_close_matches(name, [str(k) for k in inside], n=1)
                fix = (f"did you mean '{guess[0]}'? Rename the criterion, or map it in `dataset.scores`" if guess else
                       "add the scores to the data, map the criterion in `dataset.scores`, or fix the criterion's name")
                return problem(spec.path, spec.line_of("criteria", name), f"criteria.{name}",
                               f"{what}: the first record's '{scores}' ({file.name}:{self.first[1]}) holds {keys_text(inside)}", fix)
            return path_problem(spec, ("dataset", "scores"), field.path, self.first, what,
                                "set `dataset.scores` to the field holding {criterion: score}, or map each criterion")
        return path_problem(spec, ("dataset", "scores", name), field.path, self.first, what,
                            f"set `dataset.scores.{name}` to the field holding the score")


def score_field(scores: str | dict[str, str] | None, criterion: str) -> tuple[tuple[str, ...], str]:
    """Where the spec names a criterion's score and its path: a field per criterion, or one field of {criterion: score}."""
    if isinstance(scores, dict):
        return ("dataset", "scores", criterion), scores[criterion]
    return ("dataset", "scores"), f"{scores}.{criterion}"


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
