"""Answer files: ``--judge-record`` writes the answers beside each spec, ``--judge-cache=replay`` gates on them.

Against the scripted server through the real plugin (pytester): the file is sorted text with no
endpoint or secret, a second recording leaves it byte-identical, stale answers are dropped (not
when only part of the spec ran), replay needs neither the server nor the local cache, two
branches' recordings merge with a real ``git merge``, and a hand-edited line is an error that
names the file and the line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.answers import FORMAT, VERSION, Answer, answers_path, read_answers, render
from pytest_judgeopt.spec import SpecError
from tests.conftest import FEW_DOCUMENTS, human_from_prompt, make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer

RECORDS = make_records()
TEST_SAMPLES = 8  # 2 of the 6 groups, 4 summaries each
ANSWERS = TEST_SAMPLES * 2 + TEST_SAMPLES  # two criteria judged separately, plus the merged prompt
KEY = "0" * 64


def project(folder: Path, model: dict[str, Any] | str) -> Path:
    """A judge spec with its data in ``folder``; the scripted server answers with the human scores."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    spec = folder / "toy.judge.yaml"
    spec.write_text(spec_text(model, min_rho=0.9, extra=FEW_DOCUMENTS))
    return spec


def answer_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_answers_path_sits_beside_the_spec() -> None:
    assert answers_path(Path("judges/summary.judge.yaml")) == Path("judges/summary.judge.answers.jsonl")
    assert answers_path(Path("a/b.judge.yml")) == Path("a/b.judge.answers.jsonl")


def test_record_writes_sorted_text_without_endpoint_or_secret_and_rerecords_byte_identical(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    project(pytester.path, server_model(fake_llm))

    first = pytester.runpytest("--judge-record")
    first.assert_outcomes(passed=3)
    assert f"recorded toy.judge.answers.jsonl: {ANSWERS} added, 0 kept, 0 dropped" in first.stdout.str()
    path = pytester.path / "toy.judge.answers.jsonl"
    text = path.read_text(encoding="utf-8")
    lines = answer_lines(path)
    assert lines[0] == {"format": FORMAT, "version": VERSION}
    answers = lines[1:]
    assert len(answers) == ANSWERS == len(fake_llm.chat_requests())
    assert [a["key"] for a in answers] == sorted(a["key"] for a in answers)
    assert all(set(a) == {"key", "model", "reply"} and a["model"] == "openai/fake-judge" for a in answers)
    replies = {a["reply"]["choices"][0]["text"] for a in answers}
    assert "coherence: 4" in replies or "coherence: 3" in replies  # the model's own words, readable in review
    assert all(a["reply"]["prompt_tokens"] > 0 and a["reply"]["completion_tokens"] > 0 for a in answers)
    assert fake_llm.base_url not in text and "127.0.0.1" not in text and "sk-test-not-a-real-key" not in text
    assert sorted(p.name for p in pytester.path.glob("*.jsonl*")) == ["data.jsonl", "toy.judge.answers.jsonl"]

    second = pytester.runpytest("--judge-record")
    second.assert_outcomes(passed=3)
    assert f"recorded toy.judge.answers.jsonl: 0 added, {ANSWERS} kept, 0 dropped (unchanged)" in second.stdout.str()
    assert path.read_text(encoding="utf-8") == text  # byte-identical
    assert len(fake_llm.chat_requests()) == ANSWERS  # and nothing asked again

    # recorded again from the answer file alone (no local cache): still the same bytes
    shutil.rmtree(pytester.path / ".judgeopt")
    pytester.runpytest("--judge-record", "--judge-cache=replay").assert_outcomes(passed=3)
    assert path.read_bytes() == text.encode("utf-8")
    assert len(fake_llm.chat_requests()) == ANSWERS


def test_replay_passes_from_the_answer_file_with_the_server_gone_and_no_local_cache(pytester: pytest.Pytester) -> None:
    with FakeLLMServer(human_from_prompt(RECORDS)) as server:
        project(pytester.path, server_model(server))
        pytester.runpytest("--judge-record").assert_outcomes(passed=3)
    shutil.rmtree(pytester.path / ".judgeopt")  # a fresh CI checkout: only what is committed

    result = pytester.runpytest("--judge-cache=replay", "-rA")
    result.assert_outcomes(passed=3)
    assert f"model calls: 0 made, {ANSWERS} from cache" in result.stdout.str()


def test_a_case_or_probe_whose_answers_are_not_recorded_fails_in_replay_naming_the_file_and_the_fix(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    """The criterion items replay from the file; a case and a retest probe added since ask what was never
    recorded, and their items say where the answers were looked for and how to record them."""
    fake_llm.responder = human_from_prompt(RECORDS)
    spec = project(pytester.path, server_model(fake_llm))
    pytester.runpytest("--judge-record").assert_outcomes(passed=3)
    asked = len(fake_llm.chat_requests())
    spec.write_text(spec.read_text() + "cases:\n  - {name: new-text, inputs: {source: s, summary: t}, "
                    "expect: {coherence: '>= 3'}}\nprobes:\n  - {kind: retest, k: 1, min: 0.8, criteria: coherence}\n")

    result = pytester.runpytest("--judge-cache=replay", "-rA")
    result.assert_outcomes(passed=3, failed=2)
    out = result.stdout.str()
    assert len(fake_llm.chat_requests()) == asked  # nothing was asked
    assert ("no recorded answer for a judge call to openai/fake-judge in toy.judge.answers.jsonl or the cache (cache "
            "mode is replay) Fix: record it with pytest --judge-record (needs the model) and commit "
            "toy.judge.answers.jsonl") in out, out  # the case's judgment
    # the probe's first judgments are the criterion item's, recorded; its repetitions (another seed) are not
    assert (f"{TEST_SAMPLES} answers are not in toy.judge.answers.jsonl or the cache (cache mode is replay), for "
            "samples d1-s0, d1-s1, d1-s2 and 5 more. Fix: record them with pytest --judge-record (needs the model) "
            "and commit toy.judge.answers.jsonl") in out, out


def test_answers_no_longer_used_are_dropped(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    spec = project(pytester.path, server_model(fake_llm))
    pytester.runpytest("--judge-record").assert_outcomes(passed=3)
    path = pytester.path / "toy.judge.answers.jsonl"
    before = {a["key"] for a in answer_lines(path)[1:]}

    spec.write_text(spec.read_text().replace("Rate the fluency from 1 to 5.", "Rate how fluently it reads, 1 to 5."))
    result = pytester.runpytest("--judge-record")
    result.assert_outcomes(passed=3)
    # coherence's separate answers stay; fluency's and the merged prompt's (which holds fluency's instruction) are new
    kept, changed = TEST_SAMPLES, 2 * TEST_SAMPLES
    assert f"recorded toy.judge.answers.jsonl: {changed} added, {kept} kept, {changed} dropped" in result.stdout.str()
    after = {a["key"] for a in answer_lines(path)[1:]}
    assert len(after) == ANSWERS and len(before & after) == kept and len(after - before) == changed


def test_a_partial_run_keeps_the_answers_of_items_that_did_not_run(pytester: pytest.Pytester,
                                                                   fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    spec = project(pytester.path, server_model(fake_llm))
    pytester.runpytest("--judge-record").assert_outcomes(passed=3)
    path = pytester.path / "toy.judge.answers.jsonl"
    recorded = path.read_text()
    spec.write_text(spec.read_text().replace("Rate the fluency from 1 to 5.", "Rate how fluently it reads, 1 to 5."))

    result = pytester.runpytest("--judge-record", "-k", "not merged")  # deselected: the merged item
    result.assert_outcomes(passed=2)
    # coherence kept, fluency's new answers added; fluency's old ones and the merged item's are unknown, not stale
    assert (f"recorded toy.judge.answers.jsonl: {TEST_SAMPLES} added, {TEST_SAMPLES} kept, 0 dropped; "
            f"{2 * TEST_SAMPLES} unused kept (not every item of the spec was selected)") in result.stdout.str()
    assert set(recorded.splitlines()) < set(path.read_text().splitlines())

    result = pytester.runpytest("--judge-record", "toy.judge.yaml::merged")  # selected by node id
    result.assert_outcomes(passed=1)
    assert (f"{TEST_SAMPLES} added, {2 * TEST_SAMPLES} kept, 0 dropped; {2 * TEST_SAMPLES} unused kept (not every "
            "item of the spec was selected)") in result.stdout.str()
    assert len(answer_lines(path)) == 1 + ANSWERS + 2 * TEST_SAMPLES

    result = pytester.runpytest("--judge-record")  # the whole spec: now the old answers are known to be stale
    assert f"0 added, {ANSWERS} kept, {2 * TEST_SAMPLES} dropped" in result.stdout.str()
    assert len(answer_lines(path)) == 1 + ANSWERS


def test_a_hand_edited_malformed_line_is_an_error_naming_the_file_and_line(pytester: pytest.Pytester,
                                                                          fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    project(pytester.path, server_model(fake_llm))
    pytester.runpytest("--judge-record").assert_outcomes(passed=3)
    path = pytester.path / "toy.judge.answers.jsonl"
    lines = path.read_text().splitlines()
    good = path.read_text()

    lines[2] = lines[2].replace('"reply": {', '"reply": {"choices": [}, ', 1)  # a slip while editing by hand
    path.write_text("\n".join(lines) + "\n")
    result = pytester.runpytest("--judge-cache=replay", "--judge-record")
    out = result.stdout.str()
    result.assert_outcomes(errors=1)
    assert f"{path}:3: not a JSON object (Expecting value at column" in out, out
    assert "Fix: restore the line (git checkout the file), or delete it and record the answer again" in out
    assert "Traceback" not in out
    assert path.read_text() == "\n".join(lines) + "\n"  # what the user wrote is left as it is

    path.write_text(good.replace(f'"version": {VERSION}', '"version": 2', 1))
    out = pytester.runpytest("--judge-cache=replay").stdout.str()
    assert (f"{path}:1: answer file version 2; this pytest-judgeopt reads version 1. Fix: record it again with "
            "pytest --judge-record, or use the pytest-judgeopt that wrote it") in out, out


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_two_branches_recordings_merge_with_git(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    """Each branch changes one criterion's instruction and records; the merge keeps both branches' answers."""
    fake_llm.responder = human_from_prompt(RECORDS)
    repo = pytester.path
    spec = project(repo, server_model(fake_llm))
    (repo / ".gitignore").write_text(".judgeopt/\n")
    (repo / ".gitattributes").write_text("*.answers.jsonl merge=union\n")  # as the README says
    pytester.runpytest("--judge-record").assert_outcomes(passed=3)
    assert git(repo, "init", "-q", "-b", "main").returncode == 0
    git(repo, "add", "-A")
    assert git(repo, "commit", "-q", "-m", "base").returncode == 0

    for branch, criterion in (("a", "coherence"), ("b", "fluency")):
        git(repo, "checkout", "-q", "-b", branch, "main")
        shutil.rmtree(repo / ".judgeopt", ignore_errors=True)  # each branch records on its own machine
        spec.write_text(spec.read_text().replace(f"Rate the {criterion} from 1 to 5.",
                                                 f"Rate the {criterion} strictly, from 1 to 5."))
        pytester.runpytest("--judge-record").assert_outcomes(passed=3)
        git(repo, "commit", "-q", "-am", f"{criterion} instruction")
    git(repo, "checkout", "-q", "main")
    assert git(repo, "merge", "-q", "--no-edit", "a").returncode == 0  # fast-forward
    merged = git(repo, "merge", "--no-edit", "b")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    path = repo / "toy.judge.answers.jsonl"
    assert "<<<<<<<" not in path.read_text() and "Rate the coherence strictly" in spec.read_text() \
        and "Rate the fluency strictly" in spec.read_text()
    answers = read_answers(path)  # one valid file holding both branches' answers

    fake_llm.reset()
    shutil.rmtree(repo / ".judgeopt", ignore_errors=True)
    replay = pytester.runpytest("--judge-cache=replay", "-rA")
    out = replay.stdout.str()
    assert "PASSED toy.judge.yaml::coherence" in out and "PASSED toy.judge.yaml::fluency" in out, out
    # the merged prompt of both new instructions was recorded on neither branch: it says so
    assert "FAILED toy.judge.yaml::merged" in out and f"{TEST_SAMPLES} merged answers are not in toy.judge.answers.jsonl" in out
    assert fake_llm.chat_requests() == []

    result = pytester.runpytest("--judge-record")
    result.assert_outcomes(passed=3)
    assert f"recorded toy.judge.answers.jsonl: {TEST_SAMPLES} added, {2 * TEST_SAMPLES} kept," in result.stdout.str()
    rewritten = answer_lines(path)[1:]
    assert [a["key"] for a in rewritten] == sorted(a["key"] for a in rewritten) and len(rewritten) == ANSWERS
    assert len({a["key"] for a in rewritten} - set(answers)) == TEST_SAMPLES  # only the new merged answers


def test_a_model_behind_a_litellm_proxy(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    """A team's runners share rate limits and budgets through a litellm proxy: the spec names the proxy's
    model and its address; the scripted server stands in for the proxy (it speaks the same OpenAI API)."""
    fake_llm.responder = human_from_prompt(RECORDS)
    virtual_key = "sk-team-virtual-key-4242"
    project(pytester.path, {"name": "litellm_proxy/team-judge", "api_base": fake_llm.base_url, "api_key": virtual_key})

    result = pytester.runpytest("--judge-record")
    result.assert_outcomes(passed=3)
    requests = [r for r in fake_llm.requests if r["path"].endswith("/chat/completions")]
    assert len(requests) == ANSWERS
    assert {r["body"]["model"] for r in requests} == {"team-judge"}  # the name the proxy routes by
    assert {r["headers"]["authorization"] for r in requests} == {f"Bearer {virtual_key}"}
    text = (pytester.path / "toy.judge.answers.jsonl").read_text()
    assert '"model": "litellm_proxy/team-judge"' in text
    assert virtual_key not in text and fake_llm.base_url not in text


# -- the format, without pytest -------------------------------------------------------------


def answer(key: str, text: str = "4") -> Answer:
    return Answer(key, "openai/m", {"choices": [{"text": text, "finish_reason": "stop", "logprobs": None}],
                                    "prompt_tokens": 3, "completion_tokens": 1, "cost": None})


def test_render_and_read_round_trip_in_any_order(tmp_path: Path) -> None:
    path = tmp_path / "x.judge.answers.jsonl"
    entries = [answer("b" * 64, "ünïcode\nline two"), answer("a" * 64), answer("c" * 64)]
    path.write_text(render(entries), encoding="utf-8")
    assert path.read_text(encoding="utf-8").count("\n") == 4  # a reply's line break stays inside its line
    assert read_answers(path) == {a.key: a for a in entries}
    # a merge may leave lines out of order: still read; the next recording sorts them again
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], lines[3], lines[1], lines[2]]) + "\n", encoding="utf-8")
    assert read_answers(path) == {a.key: a for a in entries}


@pytest.mark.parametrize(("line", "message"), [
    (json.dumps({"key": KEY, "model": "openai/m"}), "`reply` must be an object with `choices`"),
    (json.dumps({"key": "short", "model": "m", "reply": {"choices": [{"text": "4"}]}}), "`key` must be the 64 hex digits"),
    (json.dumps({"key": KEY, "model": "m", "reply": {"choices": [{"text": 4}]}}), "`reply.choices[0]` must be an object"),
    (json.dumps({"key": KEY, "model": "m", "reply": {"choices": [{"text": "4"}]}, "api_base": "x"}),
     "unknown field(s) api_base"),
    ("[1, 2]", "not a JSON object (found list)"),
    ("<<<<<<< HEAD", "a git conflict marker"),
])
def test_a_bad_line_names_the_file_the_line_and_the_fix(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "x.judge.answers.jsonl"
    path.write_text(render([answer("a" * 64)]) + line + "\n", encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        read_answers(path)
    assert str(caught.value).startswith(f"{path}:3: ") and message in str(caught.value)
    assert "Fix: " in str(caught.value)


def test_one_key_with_two_different_answers_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.judge.answers.jsonl"
    path.write_text(render([answer("a" * 64, "4")]) + answer("a" * 64, "5").line() + "\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r":3: the answer for key aaaaaaaaaaaa\.\.\. is here and on line 2"):
        read_answers(path)
    path.write_text(render([answer("a" * 64)]) + answer("a" * 64).line() + "\n", encoding="utf-8")
    assert len(read_answers(path)) == 1  # the same line twice (both branches added it) is no conflict


def test_a_file_that_is_not_an_answer_file(tmp_path: Path) -> None:
    path = tmp_path / "x.judge.answers.jsonl"
    path.write_text(json.dumps({"key": KEY}) + "\n")
    with pytest.raises(SpecError, match=r":1: not an answer file \(the first line must be"):
        read_answers(path)
    assert read_answers(tmp_path / "missing.answers.jsonl") == {}


def test_record_under_xdist_writes_what_every_worker_used(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    """Workers send the answers they used to the controller, which writes each file once, as a serial run would."""
    fake_llm.responder = human_from_prompt(RECORDS)
    serial_dir, parallel_dir = pytester.path / "serial", pytester.path / "parallel"
    for folder in (serial_dir, parallel_dir):
        for name in ("first", "second"):
            project(folder / name, server_model(fake_llm))
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--judge-record", str(serial_dir)).assert_outcomes(passed=6)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--judge-record", str(parallel_dir))
    result.assert_outcomes(passed=6)
    for name in ("first", "second"):
        assert f"recorded parallel/{name}/toy.judge.answers.jsonl: {ANSWERS} added, 0 kept, 0 dropped" \
            in result.stdout.str(), result.stdout.str()
        assert (parallel_dir / name / "toy.judge.answers.jsonl").read_bytes() == \
            (serial_dir / name / "toy.judge.answers.jsonl").read_bytes()
