"""Datasets of texts with human scores, and the splits that keep train, gate and test apart.

Splits are made by group (the source document) so that no document is seen in two splits:
the released code of the paper this tool follows split by sample and leaked 79 documents
from train into test. Every row problem is reported with the data file's line and field.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spec import Spec, SpecError, problem

MAX_FIELD_CHARS = 1_000_000
MAX_PROBLEMS_SHOWN = 10

Rows = Iterable[tuple[int, dict[str, Any]]]
Loader = Callable[[Path, str], "Rows | None"]


@dataclass(frozen=True)
class Record:
    id: str
    group: str
    inputs: dict[str, str]
    human: dict[str, float]
    line: int


@dataclass(frozen=True)
class Dataset:
    path: Path
    records: tuple[Record, ...]
    digest: str


@dataclass(frozen=True)
class Splits:
    train: tuple[Record, ...]
    val: tuple[Record, ...]
    test: tuple[Record, ...]

    def ids(self) -> dict[str, list[str]]:
        return {name: [r.id for r in getattr(self, name)] for name in ("train", "val", "test")}


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


def read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(MAX_FIELD_CHARS)
    with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: Excel writes a BOM before the header
        reader = csv.DictReader(handle)
        try:
            for row in reader:
                yield reader.line_num, row
        except csv.Error as exc:  # DictReader.line_num lags until a row succeeds; its reader's is current
            raise SpecError([problem(path, reader.reader.line_num, "", f"unreadable CSV ({exc})",
                                     f"fields are limited to {MAX_FIELD_CHARS:,} characters; check quoting")]) from None


BUILTIN_LOADERS: dict[str, Callable[[Path], Rows]] = {"jsonl": read_jsonl, "csv": read_csv}


def load_dataset(spec: Spec, loader: Loader | None = None) -> Dataset:
    """Read the spec's data and check every score the criteria need."""
    ds = spec.dataset
    rows = (loader or builtin_loader)(ds.path, ds.format)
    if rows is None:
        raise SpecError([problem(spec.path, spec.line_of("dataset", "path"), "dataset.path",
                                 f"no loader reads '.{ds.format}' files",
                                 "use .jsonl or .csv, set `dataset.format`, or add a pytest_judgeopt_load_records hook")])
    try:
        digest = hashlib.sha256(ds.path.read_bytes()).hexdigest()
    except OSError as exc:
        raise SpecError([problem(spec.path, spec.line_of("dataset", "path"), "dataset.path",
                                 f"cannot read {ds.path} ({exc.strerror})", "check the file's path and permissions")]) from None
    problems: list[str] = []
    missing: dict[str, list[str]] = {name: [] for name in spec.criteria}
    records: list[Record] = []
    seen: dict[str, int] = {}
    rows_read = 0
    try:
        for line, row in rows:
            rows_read += 1
            record = to_record(spec, line, row, problems, missing)
            if record is None:
                continue
            if record.id in seen:
                problems.append(problem(ds.path, line, ds.id, f"duplicate id '{record.id}' (first on line {seen[record.id]})",
                                        "give every record a unique id"))
                continue
            seen[record.id] = line
            records.append(record)
    except UnicodeDecodeError as exc:
        problems.append(problem(ds.path, None, "", f"not UTF-8 text (byte {exc.start})", "save the data file as UTF-8"))
    problems = unscored_criteria(spec, missing, rows_read) + problems
    if problems:
        more = len(problems) - MAX_PROBLEMS_SHOWN
        raise SpecError(problems[:MAX_PROBLEMS_SHOWN] + ([f"... and {more} more problems like these"] if more > 0 else []))
    return Dataset(ds.path, tuple(records), digest)


def builtin_loader(path: Path, format: str) -> Rows | None:
    read = BUILTIN_LOADERS.get(format)
    return read(path) if read else None


def to_record(spec: Spec, line: int, row: dict[str, Any], problems: list[str],
              missing: dict[str, list[str]]) -> Record | None:
    ds = spec.dataset
    where = ds.path
    before = len(problems)
    rid = row.get(ds.id)
    if rid is None or rid == "":
        problems.append(problem(where, line, ds.id, "the record has no id", f"give every record a `{ds.id}` field, or set `dataset.id`"))
    group = row.get(ds.group) if ds.group else rid
    if ds.group and (group is None or group == ""):
        problems.append(problem(where, line, ds.group, "the record has no group", f"give every record a `{ds.group}` field"))
    inputs = {}
    for placeholder, name in ds.inputs.items():
        value = row.get(name)
        if value is None:
            problems.append(problem(where, line, name, f"missing input field for {{{placeholder}}}",
                                    f"add `{name}` to every record, or map {placeholder} to another field in dataset.inputs"))
        elif len(str(value)) > MAX_FIELD_CHARS:
            problems.append(problem(where, line, name, f"{len(str(value)):,} characters, over the {MAX_FIELD_CHARS:,} limit",
                                    "shorten the text; a judge cannot read this much in one prompt"))
        else:
            inputs[placeholder] = str(value)
    human = {}
    for criterion in spec.criteria.values():
        field, value = score_field(ds.scores, criterion.name, row)
        if value is None or value == "":
            missing[criterion.name].append(problem(where, line, field, f"no human score for '{criterion.name}'",
                                                   "add the score, or remove the record"))
            continue
        number = as_number(value)
        low, high = criterion.scale
        if number is None:
            problems.append(problem(where, line, field, f"human score {json.dumps(value, default=str)[:40]} is not a number",
                                    "write a number"))
        elif not low <= number <= high:
            problems.append(problem(where, line, field, f"human score {number:g} is outside the scale [{low:g}, {high:g}]",
                                    f"fix the score, or change criteria.{criterion.name}.scale in {spec.path.name}"))
        else:
            human[criterion.name] = number
    if len(problems) > before or len(human) < len(spec.criteria):
        return None
    return Record(str(rid), str(group), inputs, human, line)


def score_field(scores: str | dict[str, str], criterion: str, row: dict[str, Any]) -> tuple[str, Any]:
    """Where a criterion's human score lives: a field per criterion, or one field with a mapping."""
    if isinstance(scores, dict):
        return scores[criterion], row.get(scores[criterion])
    holder = row.get(scores)
    if isinstance(holder, str):
        try:
            holder = json.loads(holder)
        except json.JSONDecodeError:
            holder = None
    return f"{scores}.{criterion}", holder.get(criterion) if isinstance(holder, dict) else None


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def unscored_criteria(spec: Spec, missing: dict[str, list[str]], rows_read: int) -> list[str]:
    """A criterion that no record scores is one mistake in the spec, not one per row."""
    if rows_read == 0:
        return [problem(spec.dataset.path, None, "", "the data file holds no records", "add records with inputs and human scores")]
    out = []
    for name, rows in missing.items():
        if len(rows) == rows_read:
            field, _ = score_field(spec.dataset.scores, name, {})
            out.append(problem(spec.path, spec.line_of("criteria", name), f"criteria.{name}",
                               f"no record in {spec.dataset.path.name} has a human score for '{name}' (looked for `{field}`)",
                               "add the scores to the data, map the criterion in `dataset.scores`, or fix the criterion's name"))
        else:
            out.extend(rows)
    return out


def split_dataset(records: Iterable[Record], fractions: Any) -> Splits:
    """Assign whole groups to train, val and test, seeded, so the three are disjoint by construction."""
    records = tuple(records)
    groups = sorted({r.group for r in records})
    random.Random(fractions.seed).shuffle(groups)
    n = len(groups)
    n_train = round(fractions.train * n)
    n_val = round(fractions.val * n)
    overflow = n_train + n_val - (n - 1 if fractions.test > 0 else n)
    if overflow > 0:  # rounding must never leave the test split without a group
        cut = min(overflow, n_train)
        n_train, n_val = n_train - cut, max(0, n_val - (overflow - cut))
    where = {g: "train" for g in groups[:n_train]}
    where.update({g: "val" for g in groups[n_train:n_train + n_val]})
    parts: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    for record in records:
        parts[where.get(record.group, "test")].append(record)
    return Splits(tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]))


def sample_groups(records: tuple[Record, ...], groups: int | None, seed: int = 0) -> tuple[Record, ...]:
    """Keep a seeded choice of `groups` groups, for quick runs that stay document-whole."""
    names = sorted({r.group for r in records})
    if groups is None or groups >= len(names):
        return records
    keep = set(random.Random(seed).sample(names, groups))
    return tuple(r for r in records if r.group in keep)
