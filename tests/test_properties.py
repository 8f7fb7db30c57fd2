"""Bad specs and bad data, generated: every case ends in a SpecError that names its file, or loads.

The tables in test_spec.py and test_data.py pin the wording of the mistakes people make;
these property tests look for the ones nobody thought of. Hypothesis writes arbitrary YAML
documents, arbitrary text, a valid spec with one field replaced by an arbitrary value, and
data files of arbitrary JSON rows, and each case must end in one of two ways: a loaded spec
(or dataset), or a ``SpecError`` whose every line starts with the file it is about. Any other
exception is a traceback the user would see instead of a collection error. No deadline: a
per-case time limit fails on a loaded machine, not on a slow input (how fast is a benchmark's
question). Huge inputs are checked separately: they must stop at their
limit, with the limit in the message (how fast is measured in benchmarks/, case 8).

Each property prints how many cases it ran (``pytest -s`` shows them); the counts are the
``max_examples`` below.
"""

from __future__ import annotations

import copy
import json
import re
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_judgeopt import spec as spec_module
from pytest_judgeopt.data import MAX_FIELD_CHARS, load_dataset
from pytest_judgeopt.spec import MAX_SPEC_BYTES, Spec, SpecError, load_spec
from tests.conftest import CRITERIA, make_records, spec_text

SPEC_EXAMPLES = 250
TEXT_EXAMPLES = 250
FIELD_EXAMPLES = 400
ROW_EXAMPLES = 250
CSV_EXAMPLES = 150
COMMON = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                  database=None)


def cases(n: int) -> settings:
    """The shared settings with ``n`` examples."""
    return settings(COMMON, max_examples=n)

VALID = yaml.safe_load(spec_text("openai/gpt-4o-mini"))
VALID_ROWS = make_records(n_groups=3, per_group=2)

# Every field a spec has, so a replaced value lands anywhere: top level, nested, inside a criterion.
FIELDS: list[tuple[str | int, ...]] = [
    ("name",), ("model",), ("models",), ("models", "judge"), ("dataset",), ("dataset", "path"), ("dataset", "group"),
    ("dataset", "id"), ("dataset", "inputs"), ("dataset", "inputs", "summary"), ("dataset", "scores"),
    ("dataset", "format"), ("split",), ("split", "train"), ("split", "test"), ("split", "seed"), ("correlation",),
    ("correlation", "method"), ("correlation", "level"), ("correlation", "gate"), ("correlation", "confidence"),
    ("correlation", "min_groups"), ("correlation", "max_skipped_groups"), ("split", "by"),
    ("judge",), ("judge", "template"), ("judge", "system"), ("judge", "max_tokens"),
    ("judge", "n"), ("judge", "logprobs"), ("judge", "temperature"), ("judge", "max_parse_failure_rate"),
    ("inference",), ("interference",), ("interference", "max_drop"), ("criteria",), ("criteria", "coherence"),
    ("criteria", "coherence", "instruction"), ("criteria", "coherence", "scale"), ("criteria", "coherence", "scale", 0),
    ("criteria", "coherence", "min_rho"), ("criteria", "fluency", "max_parse_failure_rate"), ("criteria", "new one"),
    ("optimize",), ("optimize", "mode"), ("optimize", "steps"), ("optimize", "gate"), ("optimize", "gate", "rule"),
    ("optimize", "prompts"), ("optimize", "prompts", "loss"), ("optimize", "diagnostics"), ("optimize", "study_runs"),
    ("unknown_key",),
]

scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=30) | st.sampled_from(["", "{", "{}", "{summary}", "{0}", "{x!z}", "{inputs:>{w}}", "1.5",
                                                      "data.jsonl", "spearman", "group", "SSS", "CSS", "ST", ".nan",
                                                      "openai/x", "*", "&a", "- x", "sk-secret"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12) | st.sampled_from(["name", "path", "scale", "instruction"]),
                                        inner, max_size=4), max_leaves=12)


class Counted:
    """How many cases a property ran, printed at the end so the closing note can quote it."""

    def __init__(self, name: str):
        self.name = name
        self.loaded = 0
        self.refused = 0

    def __call__(self, outcome: str) -> None:
        if outcome == "loaded":
            self.loaded += 1
        else:
            self.refused += 1

    def report(self) -> str:
        return f"{self.name}: {self.loaded + self.refused} cases, {self.refused} refused with a SpecError, {self.loaded} loaded"


@pytest.fixture
def counted(request: pytest.FixtureRequest) -> Iterator[Counted]:
    counter = Counted(request.node.name)
    yield counter
    print(counter.report())
    assert counter.loaded + counter.refused > 0


def named_lines(error: SpecError, files: tuple[Path, ...]) -> list[str]:
    """Every line of the message must start with one of the files: pytest shows it as the collection error.

    The one exception is the count closing a long list ("... and 5 more problems like these").
    """
    lines = str(error).split("\n")
    assert lines and error.problems, "an empty SpecError"
    assert len(lines) == len(error.problems), f"a problem spans several lines:\n{error}"
    for line in lines:
        if re.fullmatch(r"\.\.\. and \d+ more problems like these", line):
            continue
        assert line.startswith(tuple(str(f) for f in files)), f"a message line that names no file: {line!r}\n{error}"
        assert line.isprintable(), f"a control character in {line!r}"
        assert "Traceback" not in line
    return lines


def outcome_of_spec(path: Path, extra_files: tuple[Path, ...] = ()) -> tuple[str, Spec | SpecError]:
    try:
        return "loaded", load_spec(path)
    except SpecError as error:
        named_lines(error, (path, *extra_files))
        return "refused", error


def workspace(tmp: Path) -> Path:
    folder = tmp
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in VALID_ROWS))
    return folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return workspace(tmp_path)


# ---------------------------------------------------------------------------------------------
# specs


@cases(SPEC_EXAMPLES)
@given(document=values)
def test_any_yaml_document_is_a_spec_error_naming_the_file(folder: Path, counted: Counted, document: Any) -> None:
    path = folder / "any.judge.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    counted(outcome_of_spec(path)[0])


@cases(TEXT_EXAMPLES)
@given(text=st.text(max_size=300) | st.sampled_from([
    "a: &x [*x]", "a: &a [&b [*a]]", "criteria: {a: 1, a: 2}", "? [a]\n: b", "--- a\n--- b", "!!python/object:os.system x",
    "x: !!binary ===", "a: {{", "\t- x", "criteria:\n  c: {instruction: x, scale: [1, 5]}\n  c: {}", "%YAML 9.9\n---\n",
    "a: 1\n" * 50, "&a [*a, *a, *a]", "<<: *nowhere", "key: 'unterminated", "\ufeffname: x", "\x00", "a: b\x85c"]))
def test_any_text_is_a_spec_error_naming_the_file(folder: Path, counted: Counted, text: str) -> None:
    path = folder / "text.judge.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    counted(outcome_of_spec(path)[0])


def replaced(document: dict[str, Any], field: tuple[str | int, ...], value: Any, delete: bool) -> dict[str, Any]:
    """The valid spec with one field set to ``value`` (or removed), creating the mappings on the way."""
    out = copy.deepcopy(document)
    holder: Any = out
    for part in field[:-1]:
        if isinstance(holder, dict):
            if not isinstance(holder.get(part), (dict, list)):
                holder[part] = {}
            holder = holder[part]
        elif isinstance(holder, list) and isinstance(part, int) and part < len(holder):
            holder = holder[part]
        else:
            return out
    last = field[-1]
    if isinstance(holder, dict):
        if delete:
            holder.pop(last, None)
        else:
            holder[last] = value
    elif isinstance(holder, list) and isinstance(last, int) and last < len(holder):
        if delete:
            del holder[last]
        else:
            holder[last] = value
    return out


@cases(FIELD_EXAMPLES)
@given(field=st.sampled_from(FIELDS), value=values, delete=st.booleans())
def test_any_value_in_any_field_is_a_spec_error_naming_file_and_field(folder: Path, counted: Counted,
                                                                      field: tuple[str | int, ...], value: Any,
                                                                      delete: bool) -> None:
    path = folder / "field.judge.yaml"
    path.write_text(yaml.safe_dump(replaced(VALID, field, value, delete), allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    outcome, found = outcome_of_spec(path)
    counted(outcome)
    if isinstance(found, SpecError):
        # the top-level key the change was made under is named (a line's "key.path:" part, or
        # "spec: missing key" when a required top-level key went away)
        top = str(field[0])
        text = str(found)
        assert top in text or (delete and "spec: missing key" in text) or "unknown key" in text, text
    else:  # what loads must be usable: it was validated, so building the dataset checks only the data
        try:
            load_dataset(found)
        except SpecError as error:
            named_lines(error, (path, found.dataset.path))


# ---------------------------------------------------------------------------------------------
# data rows


@pytest.fixture
def spec(folder: Path) -> Spec:
    path = folder / "toy.judge.yaml"
    path.write_text(spec_text(None, data="rows.jsonl"))
    (folder / "rows.jsonl").write_text("")
    return load_spec(path)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def row_strategy() -> st.SearchStrategy[dict[str, Any]]:
    """A valid record with any of its fields replaced, removed or joined by arbitrary ones."""
    score = st.one_of(st.integers(-3, 9), st.floats(allow_nan=False), st.text(max_size=5), st.none(), st.booleans(),
                      json_values)

    @st.composite
    def row(draw: Callable[..., Any]) -> dict[str, Any]:
        base = dict(draw(st.sampled_from(VALID_ROWS)))
        base["scores"] = dict(base["scores"])
        for name in draw(st.lists(st.sampled_from(["id", "group", "source", "summary", "scores"]), max_size=3)):
            if draw(st.booleans()):
                base.pop(name, None)
            else:
                base[name] = draw(json_values)
        if isinstance(base.get("scores"), dict) and draw(st.booleans()):
            base["scores"][draw(st.sampled_from(CRITERIA))] = draw(score)
        base.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
        return base

    return row()


def outcome_of_data(spec: Spec) -> str:
    try:
        load_dataset(spec)
    except SpecError as error:
        named_lines(error, (spec.path, spec.dataset.path))
        return "refused"
    return "loaded"


@cases(ROW_EXAMPLES)
@given(rows=st.lists(row_strategy() | json_values, max_size=8),
       junk=st.lists(st.text(max_size=40), max_size=2))
def test_any_data_rows_are_a_spec_error_naming_file_line_and_field(spec: Spec, counted: Counted, rows: list[Any],
                                                                   junk: list[str]) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + [j.replace("\n", " ").replace("\r", " ") for j in junk]
    spec.dataset.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", errors="surrogatepass")
    outcome = outcome_of_data(spec)
    counted(outcome)
    if outcome == "refused":
        return
    assert all(isinstance(r, dict) for r in rows)  # only objects can have loaded


@cases(CSV_EXAMPLES)
@given(text=st.text(max_size=400), header=st.booleans())
def test_any_csv_text_is_a_spec_error_naming_the_file(folder: Path, counted: Counted, text: str, header: bool) -> None:
    path = folder / "csv.judge.yaml"
    path.write_text(spec_text(None, data="rows.csv").replace("  scores: scores\n",
                                                             "  scores: {coherence: coherence, fluency: fluency}\n"))
    data = folder / "rows.csv"
    data.write_text(("id,group,source,summary,coherence,fluency\n" if header else "") + text, encoding="utf-8",
                    errors="surrogatepass")
    counted(outcome_of_data(load_spec(path)))


# ---------------------------------------------------------------------------------------------
# huge inputs fail at their limit, saying what the limit is
#
# How long they take is measured in benchmarks/ (case 8, limits); here the checks are what cannot flake
# on a loaded machine: what the loader did (counted) and how much memory it took (tracemalloc).

MEMORY_CAP = 64_000_000  # bytes of Python memory at the peak, beyond the input itself


def failing(work: Callable[[], Any], *, traced: bool = False) -> tuple[SpecError, int]:
    """The SpecError the work raises, and (traced) the peak of Python memory it took."""
    if traced:
        tracemalloc.start()
    try:
        with pytest.raises(SpecError) as caught:
            work()
        return caught.value, tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        if traced:
            tracemalloc.stop()


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count the calls of one of our own functions, which keeps working as before."""
    calls: list[int] = []
    original = getattr(module, name)

    def counted_call(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted_call)
    return calls


def test_a_50_mb_text_field_fails_with_the_limit(spec: Spec) -> None:
    row = dict(VALID_ROWS[0], summary="x" * 50_000_000)
    spec.dataset.path.write_text(json.dumps(VALID_ROWS[1]) + "\n" + json.dumps(row) + "\n")
    error, _ = failing(lambda: load_dataset(spec))
    assert str(error) == (f"{spec.dataset.path}:2: summary: 50,000,000 characters, over the {MAX_FIELD_CHARS:,} limit. "
                          "Fix: shorten the text; a judge cannot read this much in one prompt")


def test_a_50_mb_csv_field_fails_with_the_limit(folder: Path) -> None:
    path = folder / "csv.judge.yaml"
    path.write_text(spec_text(None, data="big.csv").replace("  scores: scores\n",
                                                            "  scores: {coherence: coherence, fluency: fluency}\n"))
    (folder / "big.csv").write_text("id,group,source,summary,coherence,fluency\na,g,s,\"" + "y" * 50_000_000 + "\",1,2\n")
    error, _ = failing(lambda: load_dataset(load_spec(path)))
    text = str(error)
    assert text.startswith(f"{folder / 'big.csv'}:") and f"limited to {MAX_FIELD_CHARS:,} characters" in text


def test_a_50_mb_spec_is_refused_before_it_is_parsed(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = folder / "big.judge.yaml"
    path.write_text(spec_text(None).replace("Rate the coherence", "Rate the coherence " + "z" * 50_000_000))
    parsed = counting(monkeypatch, spec_module, "read_yaml")
    error, peak = failing(lambda: load_spec(path), traced=True)
    assert str(error).startswith(f"{path}: the file is 50,000,") and f"over the {MAX_SPEC_BYTES:,} limit" in str(error)
    assert parsed == [] and peak < 1_000_000  # not even read


def test_ten_thousand_criteria_are_one_problem_and_stop_before_the_rule_checks(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = folder / "wide.judge.yaml"
    path.write_text(spec_text(None, criteria=tuple(f"c{i}" for i in range(10_000))))
    assert path.stat().st_size < MAX_SPEC_BYTES  # so the criteria cap, not the size cap, is what stops it
    checked, built = counting(monkeypatch, spec_module, "rule_problems"), counting(monkeypatch, spec_module, "build")
    error, _ = failing(lambda: load_spec(path))
    line = spec_text(None).splitlines().index("criteria:") + 1
    assert str(error) == (f"{path}:{line}: criteria: 10,000 entries, over the limit of 100. "
                          "Fix: split the judge into several spec files")
    assert (checked, built) == ([], [])


def test_aliases_that_expand_to_millions_of_values_stop_at_the_node_cap(folder: Path) -> None:
    """The "billion laughs": a 1 KB file whose aliases expand past any memory."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = folder / "laughs.judge.yaml"
    path.write_text("\n".join(levels) + "\n")
    error, peak = failing(lambda: load_spec(path), traced=True)
    assert str(error).startswith(f"{path}:") and "once aliases are expanded" in str(error)
    assert peak < MEMORY_CAP  # 10^9 values were never built


def test_a_hundred_thousand_bad_rows_show_ten(spec: Spec) -> None:
    row = dict(VALID_ROWS[0], scores={"coherence": 9, "fluency": 1})
    spec.dataset.path.write_text("".join(json.dumps(dict(row, id=f"r{i}")) + "\n" for i in range(100_000)))
    error, _ = failing(lambda: load_dataset(spec))
    lines = str(error).splitlines()
    assert len(lines) == 11 and "99,990 more" in lines[-1].replace("99990", "99,990")
    named_lines(error, (spec.dataset.path,))


# ---------------------------------------------------------------------------------------------
# the same through pytest: a broken spec is a collection error, never a traceback

COLLECTION_RUNS = 6
SPECS_PER_RUN = 10


@cases(COLLECTION_RUNS)
@given(changes=st.lists(st.tuples(st.sampled_from(FIELDS), values, st.booleans()), min_size=SPECS_PER_RUN,
                        max_size=SPECS_PER_RUN))
def test_broken_specs_are_collection_errors_naming_the_file(pytester: pytest.Pytester, counted: Counted,
                                                            changes: list[tuple[tuple[str | int, ...], Any, bool]]) -> None:
    for old in pytester.path.glob("*.judge.yaml"):
        old.unlink()
    workspace(pytester.path)
    refused = set()
    for i, (field, value, delete) in enumerate(changes):
        path = pytester.path / f"s{i}.judge.yaml"
        path.write_text(yaml.safe_dump(replaced(VALID, field, value, delete), allow_unicode=True), encoding="utf-8")
        try:
            load_dataset(load_spec(path))
        except SpecError:
            refused.add(path.name)
    # a spec that loads may still warn (repeated sources without dataset.group): a warning, as a user would see
    # it, not the error this suite's filterwarnings would make of it
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider", "-W",
                                "default::pytest_judgeopt.problems.SpecWarning")
    out = result.stdout.str()
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    errors = set(re.findall(r"ERROR collecting (s\d+\.judge\.yaml)", out))
    assert errors == refused, out
    for name in refused:
        assert re.search(rf"^E?\s*{re.escape(str(pytester.path / name))}:", out, re.M), out
    for _ in refused:
        counted("refused")
    for _ in range(SPECS_PER_RUN - len(refused)):
        counted("loaded")
