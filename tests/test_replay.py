"""Replay-only CI, end to end: committed answer files gate a project with no model, no key and no network.

The project is recorded once against the scripted server (optimized, so the items test a lock
file, as a real project would; ``--judge-record`` writes the answer files beside the specs), the
server is stopped, the checkout is copied without its local cache, and the replay runs in a fresh
``pytest --judge-cache=replay`` process whose proxies point at a closed port on 127.0.0.1 and
whose environment holds no key: any attempt to reach a model would fail. It must give the
recorded verdicts and report, and a spec whose instruction changed must fail saying how many
answers are missing and how to record them, with nothing sent anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import server_model, spec_text
from tests.fake_llm import FakeLLMServer
from tests.world import RECORDS, World, strict_improves

SPECS = ("kept.judge.yaml", "changed.judge.yaml")
# the test split of RECORDS holds 6 documents: intervals from 6 on (the default min_groups is 8), so ::merged
# can show merging costs nothing
OPTIMIZE = "optimize: {steps: 1, batch_size: 2}\ncorrelation: {min_groups: 6}\n"
CHANGED_FROM, CHANGED_TO = "Rate the fluency from 1 to 5.", "Rate how fluently the summary reads, from 1 to 5."


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env() -> dict[str, str]:
    """Every proxy a dead end: a request that escaped the cache would fail, not reach anything."""
    dead = f"http://127.0.0.1:{closed_port()}"
    return {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "ALL_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
            "all_proxy": dead, "NO_PROXY": "", "no_proxy": "", "JUDGEOPT_MODEL": ""}


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    found = re.findall(r"^(PASSED|FAILED|ERROR) (\S+\.judge\.yaml::\w+)", result.stdout.str(), re.M)
    return {item: outcome for outcome, item in found}


def results(path: Path) -> list[dict[str, Any]]:
    """What each evaluation measured, per spec, without the bookkeeping of where the answers came from."""
    data = json.loads(path.read_text())
    out = []
    for evaluation in data["evaluations"]:
        out.append({"spec": Path(evaluation["path"]).name, "shape": evaluation["shape"],
                    "results": [{k: r[k] for k in ("criterion", "instruction", "instruction_source", "value", "low",
                                                   "high", "n", "parse_failures", "passed")}
                                for r in evaluation["results"]]})
    return sorted(out, key=lambda e: (e["spec"], e["shape"]))


def test_committed_answer_files_replay_offline_and_a_changed_instruction_names_the_missing_calls(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_llm.responder = World(RECORDS, score=strict_improves)
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    for name in SPECS:
        (pytester.path / name).write_text(spec_text(server_model(fake_llm), min_rho=0.9,
                                                    extra=OPTIMIZE))
    # recording, as a developer would: optimize (writes the locks), then the items test the locks
    pytester.runpytest("--judge-optimize", "--judge-retries=1").assert_outcomes(passed=8)
    recorded = pytester.runpytest("-rA", "--judge-report=recorded", "--judge-record")
    recorded.assert_outcomes(passed=6)
    assert "0 made" in recorded.stdout.str()  # the items' answers were all in the cache from the optimize run
    # every answer the items used, 18 test samples x 2 criteria separate + 18 merged, per spec
    assert "recorded kept.judge.answers.jsonl: 54 added, 0 kept, 0 dropped" in recorded.stdout.str()
    fake_llm.stop()  # no model from here on; CI gets the project as committed: specs, data, locks, answer files
    ci = pytester.path / "ci"
    ci.mkdir()
    for name in ("data.jsonl", *SPECS, *(s.replace(".yaml", ".lock.yaml") for s in SPECS),
                 *(s.replace(".yaml", ".answers.jsonl") for s in SPECS)):
        shutil.copy(pytester.path / name, ci / name)  # no .judgeopt/: the local cache is not committed
    changed = ci / "changed.judge.yaml"
    changed.write_text(changed.read_text().replace(CHANGED_FROM, CHANGED_TO))
    (ci / "pytest.ini").write_text("[pytest]\n")  # the CI checkout is its own rootdir

    for name, value in offline_env().items():
        monkeypatch.setenv(name, value)
    for name in [k for k in os.environ if re.search(r"KEY|TOKEN|SECRET", k, re.I)]:
        monkeypatch.delenv(name)
    replay = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:benchmark", "-rA", "--judge-cache=replay",
                                           f"--judge-report={ci}/replayed", str(ci), timeout=240)
    out = replay.stdout.str()
    kept = {item.split("/")[-1]: v for item, v in outcomes(replay).items() if "kept.judge.yaml" in item}
    assert kept == {f"kept.judge.yaml::{n}": "PASSED" for n in ("coherence", "fluency", "merged")}, out
    assert [e for e in results(ci / "replayed" / "results.json") if e["spec"] == "kept.judge.yaml"] == \
        [e for e in results(pytester.path / "recorded" / "results.json") if e["spec"] == "kept.judge.yaml"]
    assert all(e["results"][0]["instruction_source"] == "lock" for e in results(ci / "replayed" / "results.json")
               if e["spec"] == "kept.judge.yaml")

    changed_items = {item.split("::")[-1]: v for item, v in outcomes(replay).items() if "changed.judge.yaml" in item}
    assert changed_items == {"coherence": "FAILED", "fluency": "FAILED", "merged": "FAILED"}, out
    # the changed spec no longer matches its lock, so the spec's instructions are tested. The recording run tested
    # the locks, so neither criterion's spec instruction is in the answer file (coherence's was judged by the
    # optimization, but only into the local cache, which CI does not get): each item says how many answers it lacks,
    # for which samples, and how to record them
    test_size = 18
    fix = "Fix: record them with pytest --judge-record (needs the model) and commit changed.judge.answers.jsonl"
    for criterion in ("coherence", "fluency"):  # the spec, the criterion, the samples, the fix
        assert (f"toy::{criterion}: {test_size} answers are not in changed.judge.answers.jsonl or the cache (cache "
                f"mode is replay), for samples d1-s0, d1-s1, d1-s2 and 15 more. {fix}") in out, out
    assert (f"toy::merged failed: {test_size} merged answers are not in changed.judge.answers.jsonl or the cache "
            f"(cache mode is replay). {fix}") in out, out
    assert "changed.judge.lock.yaml: the spec changed since this lock was made" in out
    assert re.search(r"model calls: 0 made, \d+ from cache, 0 retries, \d+ failed \(replay_miss \d+\)", out), out
    assert "Connection" not in out and "Traceback" not in out  # nothing tried the network


def test_optimizing_in_replay_mode_with_missing_answers_fails_and_leaves_no_trace(pytester: pytest.Pytester,
                                                                                   fake_llm: FakeLLMServer) -> None:
    """An optimization cannot run on answers it does not have: in replay mode it must fail saying so, and
    write neither a lock nor a finished checkpoint (which a later run with the model would take as done)."""
    fake_llm.responder = World(RECORDS, score=strict_improves)
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    spec = pytester.path / "toy.judge.yaml"
    spec.write_text(spec_text(server_model(fake_llm), min_rho=0.9, extra=OPTIMIZE))
    pytester.runpytest("--judge-optimize", "--judge-retries=1").assert_outcomes(passed=4)
    # replaying the recorded optimization needs no model: it is all in the cache (and in its checkpoint)
    fake_llm.reset()
    pytester.runpytest("--judge-optimize", "--judge-cache=replay").assert_outcomes(passed=4)
    assert fake_llm.chat_requests() == []
    lock = pytester.path / "toy.judge.lock.yaml"
    recorded_lock = lock.read_text()
    runs = pytester.path / ".judgeopt" / "runs"
    checkpoints = {p.name: p.read_bytes() for p in runs.glob("*.json")}

    spec.write_text(spec.read_text().replace(CHANGED_FROM, CHANGED_TO))
    result = pytester.runpytest("--judge-optimize", "--judge-cache=replay")
    assert fake_llm.chat_requests() == []
    out = result.stdout.str()
    result.assert_outcomes(failed=4)  # the optimize item, and the items that test the changed spec's instructions
    assert ("toy.judge.yaml: the optimization needs answers that are not in the cache (cache mode is replay): 18 gate "
            "judgments by openai/fake-judge. Fix: record them with pytest --judge-optimize --judge-record (needs the "
            "model) and commit toy.judge.answers.jsonl") in out, out
    assert "Traceback" not in out
    assert lock.read_text() == recorded_lock  # no lock made from missing answers
    assert {p.name: p.read_bytes() for p in runs.glob("*.json")} == checkpoints  # and no checkpoint either

    # with the model, the changed spec is optimized for real, not taken as done
    result = pytester.runpytest("--judge-optimize", "--judge-retries=1")
    result.assert_outcomes(passed=4)
    assert any(f"<instruction>\n{CHANGED_TO}\n</instruction>" in b["messages"][-1]["content"]
               for b in fake_llm.chat_requests())  # the optimizer was asked to rewrite the new instruction
    assert CHANGED_TO + " Be strict." in lock.read_text()
