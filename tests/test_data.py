"""data.py: reading records with human scores, every row problem at file:line:field."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt import data as data_module
from pytest_judgeopt.data import load_dataset
from pytest_judgeopt.spec import Spec, SpecError, load_spec
from pytest_judgeopt.spec_schema import line_number
from tests.conftest import make_records, spec_text

# spec_text(None) puts `dataset:` on line 2, `path:` on 3, `scores:` on 6, criteria coherence on 9, fluency on 13
FLUENCY_LINE = 13


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def project(folder: Path, data: str | bytes, *, data_name: str = "data.jsonl", scores: str | None = None) -> Spec:
    target = folder / data_name
    if isinstance(data, bytes):
        target.write_bytes(data)
    else:
        target.write_text(data, encoding="utf-8")
    text = spec_text(None, data=data_name)
    if scores is not None:
        text = text.replace("  scores: scores\n", f"  scores: {scores}\n")
    (folder / "toy.judge.yaml").write_text(text)
    return load_spec(folder / "toy.judge.yaml")


def problems(spec: Spec, **kwargs: Any) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_dataset(spec, **kwargs)
    return caught.value.problems


def only(found: list[str]) -> str:
    assert len(found) == 1, "\n".join(found)
    return found[0]


# -- reading -------------------------------------------------------------------------------------

def test_jsonl_records_keep_inputs_scores_groups_and_lines(tmp_path: Path) -> None:
    rows = make_records(n_groups=3, per_group=2)
    text = jsonl(rows[:2]) + "\n   \n" + jsonl(rows[2:])  # blank lines are skipped, line numbers are not
    spec = project(tmp_path, text)
    dataset = load_dataset(spec)
    assert dataset.path == spec.dataset.path
    assert dataset.digest == hashlib.sha256(text.encode()).hexdigest()
    assert [r.id for r in dataset.records] == [r["id"] for r in rows]
    assert [r.line for r in dataset.records] == [1, 2, 5, 6, 7, 8]
    first = dataset.records[0]
    assert first.group == "d0"
    assert first.inputs == {"source": rows[0]["source"], "summary": rows[0]["summary"]}
    assert first.human == rows[0]["scores"] and all(isinstance(v, float) for v in first.human.values())


def test_ids_and_groups_are_text_and_scores_may_be_numeric_strings(tmp_path: Path) -> None:
    rows = [{"id": 7, "group": 3, "source": "s", "summary": 12, "scores": {"coherence": "4", "fluency": 2}}]
    record = load_dataset(project(tmp_path, jsonl(rows))).records[0]
    assert (record.id, record.group, record.inputs["summary"], record.human) == ("7", "3", "12", {"coherence": 4.0, "fluency": 2.0})


def test_without_dataset_group_each_record_is_its_own_group(tmp_path: Path) -> None:
    project(tmp_path, jsonl(make_records(2, 2)))
    (tmp_path / "toy.judge.yaml").write_text(spec_text(None).replace("  group: group\n", ""))
    records = load_dataset(load_spec(tmp_path / "toy.judge.yaml")).records
    assert [r.group for r in records] == [r.id for r in records]


def write_csv(rows: list[dict[str, Any]], encoding: str = "utf-8") -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def csv_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": r["id"], "group": r["group"], "source": r["source"], "summary": r["summary"],
             "coh": r["scores"]["coherence"], "flu": r["scores"]["fluency"]} for r in records]


def test_csv_with_one_column_per_criterion(tmp_path: Path) -> None:
    records = make_records(2, 3)
    spec = project(tmp_path, write_csv(csv_rows(records)), data_name="data.csv", scores="{coherence: coh, fluency: flu}")
    assert spec.dataset.format == "csv"
    dataset = load_dataset(spec)
    assert [r.id for r in dataset.records] == [r["id"] for r in records]
    assert [r.line for r in dataset.records] == [2, 3, 4, 5, 6, 7]  # line 1 is the header
    assert [r.human for r in dataset.records] == [r["scores"] for r in records]


def test_csv_with_a_json_scores_column(tmp_path: Path) -> None:
    records = make_records(2, 2)
    rows = [{"id": r["id"], "group": r["group"], "source": r["source"], "summary": r["summary"],
             "scores": json.dumps(r["scores"])} for r in records]
    dataset = load_dataset(project(tmp_path, write_csv(rows), data_name="data.csv"))
    assert [r.human for r in dataset.records] == [r["scores"] for r in records]


def test_csv_saved_by_excel_with_a_bom_is_read(tmp_path: Path) -> None:
    content = write_csv(csv_rows(make_records(1, 2)), encoding="utf-8-sig")
    assert content.startswith(b"\xef\xbb\xbf")
    spec = project(tmp_path, content, data_name="data.csv", scores="{coherence: coh, fluency: flu}")
    assert [r.id for r in load_dataset(spec).records] == ["d0-s0", "d0-s1"]


def test_csv_blank_score_cell_is_a_missing_score(tmp_path: Path) -> None:
    rows = csv_rows(make_records(1, 3))
    rows[1]["flu"] = ""
    spec = project(tmp_path, write_csv(rows), data_name="data.csv", scores="{coherence: coh, fluency: flu}")
    assert only(problems(spec)) == (f"{spec.dataset.path}:3: flu: no human score for 'fluency'. "
                                    "Fix: add the score, or remove the record")


def test_custom_loader_is_used_and_its_line_numbers_quoted(tmp_path: Path) -> None:
    spec = project(tmp_path, jsonl(make_records(1, 1)))
    row = dict(make_records(1, 1)[0], id="from-hook")
    dataset = load_dataset(spec, loader=lambda path, fmt, ds: [(42, row)] if fmt == "jsonl" else None)
    assert [(r.id, r.line) for r in dataset.records] == [("from-hook", 42)]
    bad = dict(row, scores={"coherence": 9, "fluency": 1})
    assert ":42: scores.coherence:" in only(problems(spec, loader=lambda path, fmt, ds: [(42, bad)]))


@pytest.mark.parametrize("loader", [None, lambda path, fmt, ds: None])
def test_a_format_nobody_reads_points_at_dataset_path(tmp_path: Path, loader: Any) -> None:
    spec = project(tmp_path, "id,x\n", data_name="data.txt")
    assert only(problems(spec, loader=loader)) == (
        f"{spec.path}:3: dataset.path: no loader reads '.txt' files. "
        "Fix: use .jsonl or .csv, set `dataset.format`, or add a pytest_judgeopt_load_records hook")


# -- rejecting rows: file, line, field and fix ----------------------------------------------------

def broken(tmp_path: Path, change: Any, n: int = 6) -> tuple[Spec, list[str]]:
    rows = make_records(2, n // 2)
    change(rows)
    spec = project(tmp_path, jsonl(rows))
    return spec, problems(spec)


def test_non_numeric_score(tmp_path: Path) -> None:
    spec, found = broken(tmp_path, lambda rows: rows[1]["scores"].update(coherence="high"))
    assert only(found) == f'{spec.dataset.path}:2: scores.coherence: human score "high" is not a number. Fix: write a number'


@pytest.mark.parametrize("value", [True, "NaN", [3], {"v": 3}])
def test_scores_that_are_not_plain_numbers(tmp_path: Path, value: Any) -> None:
    spec, found = broken(tmp_path, lambda rows: rows[4]["scores"].update(fluency=value))
    assert only(found).startswith(f"{spec.dataset.path}:5: scores.fluency: human score ")
    assert only(found).endswith("is not a number. Fix: write a number")


def test_out_of_scale_score(tmp_path: Path) -> None:
    spec, found = broken(tmp_path, lambda rows: rows[3]["scores"].update(coherence=7))
    assert only(found) == (f"{spec.dataset.path}:4: scores.coherence: human score 7 is outside the scale [1, 5]. "
                           "Fix: fix the score, or change criteria.coherence.scale in toy.judge.yaml")


def test_missing_score_in_one_row(tmp_path: Path) -> None:
    spec, found = broken(tmp_path, lambda rows: rows[2]["scores"].pop("fluency"))
    assert only(found) == (f"{spec.dataset.path}:3: scores.fluency: no human score for 'fluency'. "
                           "Fix: add the score, or remove the record")


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    spec, found = broken(tmp_path, lambda rows: rows[4].update(id=rows[1]["id"]))
    assert only(found) == (f"{spec.dataset.path}:5: id: duplicate id 'd0-s1' (first on line 2). "
                           "Fix: give every record a unique id")


@pytest.mark.parametrize("value", [None, ""])
def test_missing_id(tmp_path: Path, value: Any) -> None:
    spec, found = broken(tmp_path, lambda rows: rows[3].update(id=value) if value is not None else rows[3].pop("id"))
    assert only(found) == (f"{spec.dataset.path}:4: id: the record has no id. "
                           "Fix: give every record a `id` field, or set `dataset.id`")


def test_missing_group(tmp_path: Path) -> None:
    spec, found = broken(tmp_path, lambda rows: rows[0].pop("group"))
    assert only(found) == f"{spec.dataset.path}:1: group: the record has no group. Fix: give every record a `group` field"


def test_missing_input_field(tmp_path: Path) -> None:
    spec, found = broken(tmp_path, lambda rows: rows[5].pop("summary"))
    assert only(found) == (f"{spec.dataset.path}:6: summary: missing input field for {{summary}}. "
                           "Fix: add `summary` to every record, or map summary to another field in dataset.inputs")


def test_criterion_no_record_scores_is_one_problem_at_the_criterion(tmp_path: Path) -> None:
    spec, found = broken(tmp_path, lambda rows: [r["scores"].pop("fluency") for r in rows], n=20)
    assert spec.criteria["fluency"].line == FLUENCY_LINE
    assert only(found) == (
        f"{spec.path}:{FLUENCY_LINE}: criteria.fluency: no record in data.jsonl has a human score for 'fluency': "
        "the first record's 'scores' (data.jsonl:1) holds coherence. Fix: add the scores to the data, "
        "map the criterion in `dataset.scores`, or fix the criterion's name")


def test_criterion_named_unlike_the_data_gets_a_did_you_mean(tmp_path: Path) -> None:
    rows = make_records(2, 2)
    for row in rows:
        row["scores"]["fluent"] = row["scores"].pop("fluency")
    assert only(problems(project(tmp_path, jsonl(rows)))).endswith(
        "holds coherence, fluent. Fix: did you mean 'fluent'? Rename the criterion, or map it in `dataset.scores`")


def test_criterion_no_column_scores_lists_the_columns(tmp_path: Path) -> None:
    """issue 12.3: a missing score column is one problem at the spec's line, listing the columns that exist."""
    rows = [{k: v for k, v in row.items() if k != "flu"} for row in csv_rows(make_records(1, 3))]
    spec = project(tmp_path, write_csv(rows), data_name="data.csv", scores="{coherence: coh, fluency: flu}")
    assert only(problems(spec)) == (
        f"{spec.path}:6: dataset.scores.fluency: no record in data.csv has a human score for 'fluency': 'flu' names "
        "no field in any record; in the first (data.csv:2) the record has id, group, source, summary, coh. "
        "Fix: set `dataset.scores.fluency` to the field holding the score")


# -- dotted field paths (issue 12.1) ---------------------------------------------------------------

def nested_rows() -> list[dict[str, Any]]:
    return [{"meta": {"id": r["id"], "doc": r["group"]}, "doc": {"text": r["source"], "title": "T"},
             "out": {"summary": r["summary"]}, "ratings": {"expert": r["scores"]}, "coh": {"mean": r["scores"]["coherence"]}}
            for r in make_records(2, 2)]


def nested_spec(folder: Path, rows: list[dict[str, Any]], *, scores: str, data_name: str = "data.jsonl",
                data: str | None = None, **fields: str) -> Spec:
    (folder / data_name).write_text(data if data is not None else jsonl(rows), encoding="utf-8")
    text = spec_text(None, data=data_name).replace("  scores: scores\n", f"  scores: {scores}\n")
    values = {"id": "meta.id", "group": "meta.doc", "source": "doc.text", "summary": "out.summary", **fields}
    text = text.replace("  group: group\n", f"  id: {values['id']}\n  group: {values['group']}\n")
    text = text.replace("{source: source, summary: summary}", f"{{source: {values['source']}, summary: {values['summary']}}}")
    (folder / "toy.judge.yaml").write_text(text)
    return load_spec(folder / "toy.judge.yaml")


def test_dotted_paths_reach_ids_groups_inputs_and_scores_in_nested_objects(tmp_path: Path) -> None:
    spec = nested_spec(tmp_path, nested_rows(), scores="{coherence: coh.mean, fluency: ratings.expert.fluency}")
    records = load_dataset(spec).records
    expected = make_records(2, 2)
    assert [(r.id, r.group) for r in records] == [(e["id"], e["group"]) for e in expected]
    assert [r.inputs for r in records] == [{"source": e["source"], "summary": e["summary"]} for e in expected]
    assert [r.human for r in records] == [e["scores"] for e in expected]


def test_a_dotted_scores_holder_and_list_indices(tmp_path: Path) -> None:
    rows = nested_rows()
    for row in rows:
        row["doc"] = {"paragraphs": [row["doc"]["text"], "second"]}
    spec = nested_spec(tmp_path, rows, scores="ratings.expert", source="doc.paragraphs.0")
    records = load_dataset(spec).records
    assert [r.inputs["source"] for r in records] == [e["source"] for e in make_records(2, 2)]
    assert [r.human for r in records] == [e["scores"] for e in make_records(2, 2)]


def test_dotted_paths_read_json_cells_of_a_csv_and_a_dotted_column_name_wins(tmp_path: Path) -> None:
    rows = [{"meta.id": r["id"], "meta": json.dumps({"id": "not this", "doc": r["group"]}),
             "doc": json.dumps({"text": r["source"]}), "out.summary": r["summary"],
             "ratings": json.dumps({"expert": r["scores"]})} for r in make_records(2, 2)]
    spec = nested_spec(tmp_path, [], scores="ratings.expert", data_name="data.csv", data=write_csv(rows).decode())
    records = load_dataset(spec).records
    assert [(r.id, r.group, r.inputs["source"]) for r in records] == [(e["id"], e["group"], e["source"]) for e in make_records(2, 2)]


def test_resolve_field_rules() -> None:
    from pytest_judgeopt.data import MISSING, resolve_field

    record = {"a": {"b": {"c": 1}, "list": [{"x": 2}]}, "a.b": {"c": 3}, "n": None, "cell": '{"k": [4]}'}
    assert resolve_field(record, "a.b.c") == 3  # the longer key first...
    assert resolve_field({"a": {"b": {"c": 1}}, "a.b": {}}, "a.b.c") == 1  # ...and back to nesting when it leads nowhere
    assert resolve_field(record, "a.list.0.x") == 2
    assert resolve_field(record, "cell.k.0") == 4
    assert resolve_field(record, "n") is None
    for wrong in ("a.list.1.x", "a.b.d", "zz", "n.x", "a.list.x", "cell.q"):
        assert resolve_field(record, wrong) is MISSING


def test_a_dotted_path_that_resolves_nowhere_names_the_path_the_first_record_and_its_keys(tmp_path: Path) -> None:
    """issue 12.1: the error names the path, the first record and the keys that exist where the path stops."""
    spec = nested_spec(tmp_path, nested_rows(), scores="{coherence: coh.mean, fluency: ratings.expert.fluency}",
                       source="doc.txt")
    assert only(problems(spec)) == (
        f"{spec.path}:6: dataset.inputs.source: 'doc.txt' names no field in any record; in the first "
        "(data.jsonl:1) 'doc' holds text, title. Fix: did you mean 'doc.text'?")


def test_a_score_path_one_level_off_is_found(tmp_path: Path) -> None:
    spec = nested_spec(tmp_path, nested_rows(), scores="{coherence: coh.mean, fluency: expert.fluency}")
    assert only(problems(spec)) == (
        f"{spec.path}:7: dataset.scores.fluency: no record in data.jsonl has a human score for 'fluency': "
        "'expert.fluency' names no field in any record; in the first (data.jsonl:1) the record has meta, doc, out, "
        "ratings, coh. Fix: did you mean 'ratings.expert.fluency'? Else set `dataset.scores.fluency` to the field "
        "holding the score")


# -- a wrong field is one problem, with the fields there are (issue 12.3) --------------------------

def test_a_wrong_input_field_is_reported_once_with_the_closest_field(tmp_path: Path) -> None:
    rows = make_records(6, 60)  # 360 records: before, one problem per record ("... and 350 more")
    spec = project(tmp_path, jsonl(rows))
    (tmp_path / "toy.judge.yaml").write_text(spec_text(None).replace("summary: summary}", "summary: summry}"))
    assert only(problems(load_spec(tmp_path / "toy.judge.yaml"))) == (
        f"{spec.path}:5: dataset.inputs.summary: 'summry' names no field in any record; in the first (data.jsonl:1) "
        "the record has id, group, source, summary, scores. Fix: did you mean 'summary'?")


def test_a_field_missing_from_some_records_is_still_reported_per_record(tmp_path: Path) -> None:
    _, found = broken(tmp_path, lambda rows: [rows[i].pop("summary") for i in (1, 4)])
    assert [line_number(p) for p in found] == [2, 5] and all("missing input field for {summary}" in p for p in found)


@pytest.mark.parametrize("separator, written", [(";", '";"'), ("\t", '"\\t"')])
def test_a_csv_with_another_separator_suggests_dataset_delimiter(tmp_path: Path, separator: str, written: str) -> None:
    rows = csv_rows(make_records(1, 2))
    text = "".join(separator.join(str(v) for v in row.values()) + "\n" for row in [dict(zip(rows[0], rows[0], strict=True)), *rows])
    spec = project(tmp_path, text, data_name="data.csv", scores="{coherence: coh, fluency: flu}")
    header = separator.join(rows[0])
    assert only(problems(spec)) == (
        f"{spec.path}:3: dataset.delimiter: the header of data.csv was read as one field {json.dumps(header)}, "
        f"which holds {written}: the file is not comma-separated. Fix: set `delimiter: {written}` under `dataset:`")
    (tmp_path / "toy.judge.yaml").write_text(
        (tmp_path / "toy.judge.yaml").read_text().replace("  path: data.csv\n", f"  path: data.csv\n  delimiter: {written}\n"))
    spec = load_spec(tmp_path / "toy.judge.yaml")
    assert spec.dataset.delimiter == separator
    assert [r.id for r in load_dataset(spec).records] == ["d0-s0", "d0-s1"]


# -- several files, skip_missing (issue 12.6) ------------------------------------------------------

def test_several_data_files_as_a_list_or_a_glob_load_as_one_dataset(tmp_path: Path) -> None:
    rows = make_records(3, 2)
    (tmp_path / "parts").mkdir()
    for i in range(3):
        (tmp_path / "parts" / f"part{i}.jsonl").write_text(jsonl(rows[2 * i:2 * i + 2]))
    for written in ("parts/*.jsonl", "[parts/part0.jsonl, parts/part1.jsonl, 'parts/part2.*']"):
        (tmp_path / "toy.judge.yaml").write_text(spec_text(None, data=written))
        spec = load_spec(tmp_path / "toy.judge.yaml")
        assert [p.name for p in spec.dataset.paths] == ["part0.jsonl", "part1.jsonl", "part2.jsonl"]
        dataset = load_dataset(spec)
        assert [r.id for r in dataset.records] == [r["id"] for r in rows]
        assert [r.line for r in dataset.records] == [1, 2] * 3
        digests = [hashlib.sha256((tmp_path / "parts" / f"part{i}.jsonl").read_bytes()).hexdigest() for i in range(3)]
        assert dataset.digest == hashlib.sha256("\n".join(digests).encode()).hexdigest()


def test_a_duplicate_id_across_files_names_the_other_file(tmp_path: Path) -> None:
    rows = make_records(2, 2)
    (tmp_path / "a.jsonl").write_text(jsonl(rows[:2]))
    (tmp_path / "b.jsonl").write_text(jsonl([rows[2], dict(rows[3], id=rows[1]["id"])]))
    (tmp_path / "toy.judge.yaml").write_text(spec_text(None, data="[a.jsonl, b.jsonl]"))
    assert only(problems(load_spec(tmp_path / "toy.judge.yaml"))) == (
        f"{tmp_path / 'b.jsonl'}:2: id: duplicate id 'd0-s1' (first on a.jsonl:2). Fix: give every record a unique id")


def test_a_glob_matching_nothing_is_a_spec_problem(tmp_path: Path) -> None:
    (tmp_path / "toy.judge.yaml").write_text(spec_text(None, data="[data.jsonl, 'more/*.jsonl']"))
    (tmp_path / "data.jsonl").write_text(jsonl(make_records(1, 1)))
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "toy.judge.yaml")
    assert str(caught.value) == (f"{tmp_path / 'toy.judge.yaml'}:3: dataset.path[1]: no file matches 'more/*.jsonl' "
                                 f"(in {tmp_path}). Fix: fix the pattern; it is relative to the spec file")


def test_skip_missing_skips_records_without_a_score_and_counts_them(tmp_path: Path) -> None:
    rows = make_records(2, 3)
    rows[1]["scores"].pop("fluency")
    rows[4]["scores"]["coherence"] = None
    spec = project(tmp_path, jsonl(rows))
    assert len(problems(spec)) == 2  # without the key, each is a problem
    (tmp_path / "toy.judge.yaml").write_text(spec_text(None).replace("  scores: scores\n", "  scores: scores\n  skip_missing: true\n"))
    dataset = load_dataset(load_spec(tmp_path / "toy.judge.yaml"))
    assert [r.id for r in dataset.records] == [r["id"] for i, r in enumerate(rows) if i not in (1, 4)]
    assert dataset.skipped == 2
    assert dataset.skipped_note() == ("data.jsonl: 2 of 6 records have no human score for some criterion and were "
                                      "skipped (dataset.skip_missing)")


def test_skip_missing_does_not_hide_a_criterion_no_record_scores(tmp_path: Path) -> None:
    rows = make_records(2, 3)
    for row in rows:
        row["scores"].pop("fluency")
    spec = project(tmp_path, jsonl(rows))
    (tmp_path / "toy.judge.yaml").write_text(spec_text(None).replace("  scores: scores\n", "  scores: scores\n  skip_missing: true\n"))
    assert "no record in data.jsonl has a human score for 'fluency'" in only(problems(load_spec(tmp_path / "toy.judge.yaml")))
    assert spec.dataset.skip_missing is False


def test_a_bad_score_is_still_an_error_with_skip_missing(tmp_path: Path) -> None:
    rows = make_records(2, 3)
    rows[2]["scores"]["coherence"] = "high"
    project(tmp_path, jsonl(rows))
    (tmp_path / "toy.judge.yaml").write_text(spec_text(None).replace("  scores: scores\n", "  scores: scores\n  skip_missing: true\n"))
    assert 'human score "high" is not a number' in only(problems(load_spec(tmp_path / "toy.judge.yaml")))


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    spec = project(tmp_path, text)
    assert only(problems(spec)) == (f"{spec.dataset.path}: the data file holds no records. "
                                    "Fix: add records with inputs and human scores")


def test_invalid_json_line(tmp_path: Path) -> None:
    rows = make_records(1, 4)
    lines = jsonl(rows).splitlines(keepends=True)
    lines[2] = '{"id": "x", "scores": {"coherence": 3,}\n'
    spec = project(tmp_path, "".join(lines))
    text = only(problems(spec))
    assert text.startswith(f"{spec.dataset.path}:3: not valid JSON (")
    assert text.endswith("Fix: write one JSON object per line")


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    spec = project(tmp_path, jsonl(make_records(1, 1)) + "[1, 2]\n")
    assert only(problems(spec)) == f"{spec.dataset.path}:2: a line must hold a JSON object. Fix: write one {{...}} object per line"


def test_field_over_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_module, "MAX_FIELD_CHARS", 100)
    spec, found = broken(tmp_path, lambda rows: rows[2].update(source="x" * 101))
    assert only(found) == (f"{spec.dataset.path}:3: source: 101 characters, over the 100 limit. "
                           "Fix: shorten the text; a judge cannot read this much in one prompt")


def test_csv_field_over_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = csv_rows(make_records(1, 3))
    rows[1]["source"] = "x" * 101
    monkeypatch.setattr(data_module, "MAX_FIELD_CHARS", 100)
    spec = project(tmp_path, write_csv(rows), data_name="data.csv", scores="{coherence: coh, fluency: flu}")
    text = only(problems(spec))
    assert text.startswith(f"{spec.dataset.path}:3: unreadable CSV (")
    assert "Fix: fields are limited to 100 characters" in text


def test_every_row_problem_is_collected_but_only_ten_are_shown(tmp_path: Path) -> None:
    def break_all(rows: list[dict[str, Any]]) -> None:
        for row in rows[:15]:
            row["scores"]["coherence"] = 0

    _, found = broken(tmp_path, break_all, n=20)
    assert len(found) == data_module.MAX_PROBLEMS_SHOWN + 1
    assert [line_number(p) for p in found[:10]] == list(range(1, 11))
    assert found[-1] == "... and 5 more problems like these"


def test_several_problems_in_one_row_are_all_reported(tmp_path: Path) -> None:
    spec, found = broken(tmp_path, lambda rows: (rows[0].pop("source"), rows[0]["scores"].update(coherence=9)))
    assert [p.split(": ", 2)[1] for p in found] == ["source", "scores.coherence"]
    assert all(p.startswith(f"{spec.dataset.path}:1: ") for p in found)


def test_skip_missing_is_said_in_the_run_notes(tmp_path: Path) -> None:
    from pytest_judgeopt.llm import LLM
    from pytest_judgeopt.session import Session

    rows = make_records(2, 3)
    rows[0]["scores"].pop("coherence")
    project(tmp_path, jsonl(rows))
    (tmp_path / "toy.judge.yaml").write_text(spec_text(None).replace("  scores: scores\n", "  scores: scores\n  skip_missing: true\n"))
    session = Session(LLM(), state_dir=tmp_path / ".judgeopt")
    session.load(tmp_path / "toy.judge.yaml")
    assert session.notes == ["data.jsonl: 1 of 6 records have no human score for some criterion and were skipped "
                             "(dataset.skip_missing)"]
