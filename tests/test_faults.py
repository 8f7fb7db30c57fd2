"""Model faults during real runs: each is retried within the limits or recorded, never scored, and counted.

test_llm.py checks each fault at the client (one call, one fault). Here the faults hit whole
runs, all kinds in one run, so what matters is what the run does with them: the run completes;
a call that keeps failing, and a reply that holds no usable score, become failed judgments of
their own kind and never a score; the terminal summary, the item's failure text and
``--judge-report`` count every kind; a fault that goes away on retry leaves the verdicts
exactly as without it. The optimizer's roles meet the same faults and replies in the wrong
format, and every bad rewrite is a rejected update with its reason, not a crash.

Each fault is tied to one (sample, criterion) of the test split, computed before the run,
so the tests know exactly which judgment must fail and how. Last, the hardest fault of all:
an optimization killed with SIGKILL again and again at random points must leave a whole lock
(or none), readable checkpoints and cache, and end like a run that was never interrupted.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.llm import LLM
from pytest_judgeopt.session import Session
from tests.conftest import CRITERIA, human_from_prompt, make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer, Fault, Reply
from tests.world import INITIAL, World, gradual_improves, role_of, strict_improves, write_project
from tests.world import RECORDS as OPT_RECORDS

RECORDS = make_records()
HANG = 4.0  # seconds a hung request sleeps: longer than the timeout plus a backoff, so every attempt times out
TIMEOUT = 1.5

# (name, what the server does, the failure kind of that judgment, the call error it counts)
FAULTS: list[tuple[str, Any, str, str | None]] = [
    ("429 with Retry-After", Fault("status", status=429, retry_after=0.2), "call_rate_limit", "rate_limit"),
    ("429 without Retry-After", Fault("status", status=429), "call_rate_limit", "rate_limit"),
    ("500", Fault("status", status=500), "call_server", "server"),
    ("502", Fault("status", status=502), "call_server", "server"),
    ("503", Fault("status", status=503), "call_server", "server"),
    ("connection reset", Fault("reset"), "call_connection", "connection"),
    ("timeout", Fault("hang", seconds=HANG), "call_timeout", "timeout"),
    ("body not JSON", Fault("not_json"), "call_bad_response", "bad_response"),
    ("no choices", Fault("empty_choices"), "call_bad_response", "bad_response"),
    ("empty message", Reply(""), "empty", None),
    ("null message", Reply(None), "empty", None),
    ("refusal", "I'm sorry, but I can't help with rating this text.", "refusal", None),
    ("cut off at max_tokens", Reply("Weighing the order of its sentences, the", finish_reason="length"), "truncated", None),
    ("cut off inside the JSON", Reply('{"reasoning": "clear", "coherence": 4, "flu', finish_reason="length"),
     "truncated", None),
    ("wrong format", "The summary reads well and covers the article.", "no_score", None),
]
CALL_FAULTS = [f for f in FAULTS if f[3] is not None]


class Faulty:
    """A judge that knows the human scores, except on the (summary, criterion) pairs given a fault.

    ``transient`` faults hit only the first attempt of their pair, so the retry succeeds. (A hung
    request is answered again by the server after its sleep, to a socket the client has closed; that
    late answer comes after the client's own retry and changes nothing.)
    """

    def __init__(self, records: list[dict[str, Any]], faults: dict[tuple[str, str], Any], *, transient: bool = False):
        self.truth = human_from_prompt(records)
        self.faults = faults
        self.transient = transient
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Any:
        text = body["messages"][-1]["content"]
        summary = re.search(r"<summary>\n(.*?)\n</summary>", text, re.S).group(1)
        criterion = re.search(r"^Criterion: (\w+)$", text, re.M).group(1)
        with self.lock:
            self.attempts[summary, criterion] += 1
            attempt = self.attempts[summary, criterion]
        fault = self.faults.get((summary, criterion))
        if fault is None or (self.transient and attempt > 1):
            return self.truth(body)
        return fault


def assign(spec: Path, faults: list[Any]) -> dict[tuple[str, str], Any]:
    """Each fault to its own (summary, criterion) of the test split, in a fixed order."""
    session = Session(LLM())  # loads the spec and its splits; makes no call
    test = session.load(spec).splits.test
    pairs = [(r.inputs["summary"], c) for r in test for c in CRITERIA]
    assert len(pairs) > len(faults), "the test split must hold more judgments than there are faults"
    return dict(zip(pairs, faults, strict=False))  # the first pairs get a fault, the rest answer


def test_every_fault_is_a_failed_judgment_of_its_kind_and_never_a_score(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    spec = tmp_path / "toy.judge.yaml"
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    spec.write_text(spec_text(server_model(fake_llm), extra="interference: false\n"))
    placed = assign(spec, [f[1] for f in FAULTS])
    expected = {pair: kind for pair, (_, _, kind, _) in zip(placed, FAULTS, strict=True)}
    fake_llm.responder = Faulty(RECORDS, placed)
    session = Session(LLM(retries=1, backoff=0.05, timeout=TIMEOUT, concurrency=32), state_dir=tmp_path / ".judgeopt")
    try:
        results = session.evaluate(spec)
    finally:
        session.close()
    human = {r["summary"]: r["scores"] for r in RECORDS}
    summary_of = {r["id"]: r["summary"] for r in RECORDS}
    seen = set()
    for criterion, result in results.items():
        for j in result.judgments:
            pair = (summary_of[j.record_id], criterion)
            seen.add(pair)
            if pair in expected:
                assert (j.score, j.failure) == (None, expected[pair]), (pair, j)
            else:
                assert (j.score, j.failure) == (human[pair[0]][criterion], None), (pair, j)
        assert result.agreement.n == result.n - result.failed_count  # only the scored judgments are correlated
    assert set(expected) <= seen
    assert sum((r.failures for r in results.values()), Counter()) == Counter(expected.values())
    judge = session.llm.usage["judge"]
    assert judge.errors == Counter(kind for *_, kind in CALL_FAULTS)
    assert judge.retries == len(CALL_FAULTS)  # each failing call was tried again once (--judge-retries=1), no more


def run_plugin(pytester: pytest.Pytester, server: FakeLLMServer, faults: list[Any], *, transient: bool,
               report: str) -> tuple[pytest.RunResult, dict[tuple[str, str], Any]]:
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    spec = pytester.path / "toy.judge.yaml"
    spec.write_text(spec_text(server_model(server), extra="interference: false\n"))
    placed = assign(spec, faults)
    server.responder = Faulty(RECORDS, placed, transient=transient)
    result = pytester.runpytest("--judge-retries=1", f"--judge-timeout={TIMEOUT}", "--judge-concurrency=32",
                                "--judge-cache=off", f"--judge-report={report}")
    return result, placed


def test_the_run_completes_and_the_summary_failure_text_and_report_count_every_kind(pytester: pytest.Pytester,
                                                                                    fake_llm: FakeLLMServer) -> None:
    result, _ = run_plugin(pytester, fake_llm, [f[1] for f in FAULTS], transient=False, report="faulty")
    result.assert_outcomes(failed=2)  # 15 of 24 judgments failed: above the allowed 10%
    out = result.stdout.str()
    assert "Traceback" not in out and "INTERNALERROR" not in out
    expected = Counter(kind for _, _, kind, _ in FAULTS)
    per_item = [dict((k, int(n)) for k, n in re.findall(r"(\w+) (\d+)", kinds))
                for kinds in re.findall(r"failed judgments: \d+/\d+ \((.*)\)", out)]
    assert len(per_item) == 2 and sum(map(Counter, per_item), Counter()) == expected
    calls = Counter(kind for *_, kind in CALL_FAULTS)
    shown = ", ".join(f"{kind} {n}" for kind, n in sorted(calls.items()))
    result.stdout.fnmatch_lines([f"*model calls: * made, 0 from cache, {len(CALL_FAULTS)} retries, "
                                 f"{len(CALL_FAULTS)} failed ({shown}); tokens*"])
    report = json.loads((pytester.path / "faulty" / "results.json").read_text())
    (evaluation,) = report["evaluations"]
    assert sum((Counter(r["parse_failures"]) for r in evaluation["results"]), Counter()) == expected
    for r in evaluation["results"]:
        assert r["pairs"] == r["n"] - sum(r["parse_failures"].values())  # nothing failed became a score
    assert report["usage"]["judge"]["errors"] == dict(sorted(calls.items()))
    assert report["usage"]["judge"]["retries"] == len(CALL_FAULTS)
    assert "sk-test-not-a-real-key" not in out


def test_faults_that_go_away_on_retry_change_no_verdict(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    result, _ = run_plugin(pytester, fake_llm, [f[1] for f in CALL_FAULTS], transient=True, report="transient")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*coherence*spearman*1.000*pass*", "*fluency*spearman*1.000*pass*",
                                 f"*model calls: * made, 0 from cache, {len(CALL_FAULTS)} retries, 0 failed; tokens*"])
    report = json.loads((pytester.path / "transient" / "results.json").read_text())
    assert all(r["parse_failures"] == {} and r["value"] == 1.0 for r in report["evaluations"][0]["results"])
    assert report["usage"]["judge"]["errors"] == {} and report["usage"]["judge"]["retries"] == len(CALL_FAULTS)


# ---------------------------------------------------------------------------------------------
# the optimizer: faults and replies in the wrong format are rejected updates


# a valid rewrite, full of template placeholders; "Be strict." makes the scripted judge agree with the humans
BRACES = "Rate the {criterion} of {summary}; {inputs} and {{format}} stay literal. Be strict."

# What the optimizer role answers, per call, in arrival order (a failing call's retry gets the same),
# with the reason the step must give for dropping it (None: a valid rewrite the gate then judges).
SEPARATE_REWRITES: list[tuple[str, Any, str | None]] = [
    ("empty message", Reply(""), "the optimizer's reply held no instruction"),
    ("refusal", "I'm sorry, but I can't help with rewriting this instruction.", "the optimizer's reply held no instruction"),
    ("cut off before the closing tag", Reply("<instruction>Rate the coherence, penalising", finish_reason="length"),
     "the optimizer's reply held no instruction"),
    ("HTTP 500 on every attempt", Fault("status", status=500), "the optimizer's reply held no instruction"),
    ("body not JSON", Fault("not_json"), "the optimizer's reply held no instruction"),
    ("timeout", Fault("hang", seconds=HANG), "the optimizer's reply held no instruction"),
    ("JSON instead of tags", '{"instruction": "Rate it strictly."}', "the optimizer's reply held no instruction"),
    ("too long", "<instruction>" + "Be thorough. " * 200 + "</instruction>",
     "the new instruction has 2599 characters, over max_instruction_chars"),
    ("empty instruction", "<instruction>   </instruction>", "the optimizer returned an empty instruction"),
    ("unchanged", None, "the optimizer returned the instruction unchanged"),
    ("template placeholders", f"<instruction>{BRACES}</instruction>", None),
    ("no reply at all, then a 429 storm", Fault("status", status=429, retry_after=0), "the optimizer's reply held no instruction"),
]
COMBINED_REWRITES: list[tuple[str, Any, dict[str, str | None]]] = [
    ("a JSON list", '["Rate it.", "Rate that."]', dict.fromkeys(CRITERIA, "the optimizer's reply held no instruction")),
    ("numbers, not texts", '{"coherence": 5, "fluency": null}',
     dict.fromkeys(CRITERIA, "the optimizer's reply held no instruction")),
    ("keys that are no criteria", '{"coherance": "Rate it.", "instructions": {"coherence": "x"}}',
     dict.fromkeys(CRITERIA, "the optimizer's reply held no instruction")),
    ("one criterion only", '{"coherence": "' + BRACES + '", "fluency": 3}',
     {"coherence": None, "fluency": "the optimizer's reply held no instruction"}),
    ("cut off inside the JSON", Reply('{"coherence": "Rate the order of', finish_reason="length"),
     dict.fromkeys(CRITERIA, "the optimizer's reply held no instruction")),
    ("prose", "Both instructions are fine as they are.", dict.fromkeys(CRITERIA, "the optimizer's reply held no instruction")),
]


class BadOptimizer:
    """The scripted world of test_optimize, except that the optimizer role answers from a list:
    the n-th distinct optimizer prompt gets the n-th answer, and its retries get the same one."""

    def __init__(self, world: World, answers: list[Any]):
        self.world = world
        self.answers = list(answers)
        self.given: dict[str, Any] = {}
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Any:
        if role_of(body) not in ("optimizer", "optimizer_c"):
            return self.world(body)
        text = body["messages"][-1]["content"]
        with self.lock:
            if text not in self.given:
                self.given[text] = self.answers.pop(0) if self.answers else "<instruction>Rate it.</instruction>"
            answer = self.given[text]
        if answer is None:  # the instruction it was given, unchanged
            return "<instruction>" + re.search(r"<instruction>\n(.*?)\n</instruction>", text, re.S).group(1) + "</instruction>"
        return answer


def optimize(tmp_path: Path, server: FakeLLMServer, mode: str, steps: int) -> Any:
    spec = write_project(tmp_path, server, optimize="batch_size: 2")
    session = Session(LLM(retries=1, backoff=0.01, timeout=TIMEOUT, concurrency=32), state_dir=tmp_path / ".judgeopt")
    try:
        return session.optimize(spec, mode, steps=steps, write=True)
    finally:
        session.close()


def test_every_bad_rewrite_of_a_separate_optimizer_is_a_rejected_update(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    world = World(OPT_RECORDS, score=strict_improves)
    fake_llm.responder = BadOptimizer(world, [answer for _, answer, _ in SEPARATE_REWRITES])
    result = optimize(tmp_path, fake_llm, "SSS", steps=len(SEPARATE_REWRITES) // 2)
    assert result.steps_run == len(SEPARATE_REWRITES) // 2  # the run completed every step
    reasons = Counter(reason for step in result.history for reason in step.rejected_reasons.values())
    expected = Counter(reason for _, _, reason in SEPARATE_REWRITES if reason is not None)
    assert reasons == expected
    kept = [(step.step, c) for step in result.history for c in step.accepted]
    assert len(kept) == 1  # only the valid rewrite was gated (its judge agrees no worse: kept)
    ((_, criterion),) = kept
    assert result.instructions[criterion] == BRACES and result.instructions == {**INITIAL, criterion: BRACES}
    failures = Counter()
    for record in result.history:
        failures.update(record.failures)
    assert failures == {"optimizer:empty": 1, "optimizer:server": 1, "optimizer:bad_response": 1,
                        "optimizer:timeout": 1, "optimizer:rate_limit": 1}
    # later judge prompts carry the braces verbatim: the instruction is data, not a template
    judged = [b["messages"][-1]["content"] for b in fake_llm.chat_requests() if role_of(b) == "judge"]
    assert any(f"- {criterion}: {BRACES}" in text for text in judged)
    lock = (tmp_path / "toy.judge.lock.yaml").read_text()
    assert "Rate the {criterion} of {summary}" in lock


def test_every_bad_rewrite_of_a_combined_optimizer_is_a_rejected_update(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    world = World(OPT_RECORDS, score=strict_improves)
    fake_llm.responder = BadOptimizer(world, [answer for _, answer, _ in COMBINED_REWRITES])
    result = optimize(tmp_path, fake_llm, "SSC", steps=len(COMBINED_REWRITES))
    assert result.steps_run == len(COMBINED_REWRITES)
    for step, (name, _, reasons) in zip(result.history, COMBINED_REWRITES, strict=True):
        dropped = {c: r for c, r in reasons.items() if r is not None}
        assert step.rejected_reasons == dropped, name
        assert sorted(step.accepted) == sorted(c for c, r in reasons.items() if r is None), name
    assert result.instructions == {**INITIAL, "coherence": BRACES}


# ---------------------------------------------------------------------------------------------
# kill -9, again and again: nothing lost

KILLS = 5
# One process imports everything once (litellm alone takes seconds), then forks a fresh optimizer run
# per line read; the test kills each run with SIGKILL at a random moment. The importer starts no thread
# and makes no call, so every fork begins clean; each run is a real process, killed like any other.
FORKING_RUNNER = """\
import os
import sys
import threading
import traceback

from pytest_judgeopt.cache import Cache
from pytest_judgeopt.llm import LLM, import_litellm
from pytest_judgeopt.session import Session
import pytest_judgeopt.optimize.run, pytest_judgeopt.stats

import_litellm()
spec, state, log = sys.argv[1:4]
assert threading.active_count() == 1
print("ready", flush=True)
for number, _ in enumerate(sys.stdin):
    pid = os.fork()
    if pid == 0:
        with open(f"{log}.{number}", "w") as out:
            try:
                session = Session(LLM(cache=Cache(state), retries=1, backoff=0.01, timeout=30.0), state_dir=state)
                result = session.optimize(spec, "SSS", steps=4, write=True)
                session.close()
                out.write(f"finished {result.steps_run}\\n")
            except BaseException:
                traceback.print_exc(file=out)
                out.flush()
                os._exit(1)
        os._exit(0)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def intact(project: Path, earlier: set[str]) -> dict[str, Any]:
    """Check everything a killed run leaves: the lock is absent or whole, every checkpoint parses as a
    state, the cache opens, passes SQLite's integrity check and every entry parses as an answer.
    ``earlier`` names the checkpoints of other runs, so the steps counted are the killed run's."""
    import sqlite3

    from pytest_judgeopt.llm import Reply as Answer
    from pytest_judgeopt.lockfile import read_lock
    from pytest_judgeopt.optimize.loop import State

    lock = read_lock(project / "toy.judge.yaml")  # raises LockError on a partial or garbled file
    assert lock is None or not lock.edited  # a lock we wrote, checksum and all
    states = {p.name: State.from_json(json.loads(p.read_text())) for p in (project / ".judgeopt" / "runs").glob("*.json")}
    assert set(states) >= earlier and len(set(states) - earlier) <= 1
    states = [state for name, state in states.items() if name not in earlier]
    db = sqlite3.connect(project / ".judgeopt" / "answers.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT value FROM answers").fetchall()
    finally:
        db.close()
    for (value,) in rows:
        Answer.from_json(json.loads(value), cached=True)
    return {"lock": None if lock is None else lock.content["steps_run"], "steps": len(states[0].history) if states else 0,
            "finished": bool(states and states[0].finished), "answers": len(rows)}


@pytest.mark.posix
def test_kill_9_at_random_points_loses_nothing_and_the_last_run_ends_like_an_uninterrupted_one(
        tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    import contextlib
    import os
    import queue
    import random
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from pytest_judgeopt.cache import Cache

    # every step gains (a tie would be rejected, and the next step's same candidate answered from the cache)
    fake_llm.responder = World(OPT_RECORDS, score=gradual_improves)
    fake_llm.latency = 0.01  # so a run lasts long enough to be killed anywhere in it
    project = tmp_path / "killed"
    spec = write_project(project, fake_llm, optimize="batch_size: 2")
    # the old lock: a finished one-step run, which the killed runs extend to four steps
    session = Session(LLM(cache=Cache(project / ".judgeopt"), retries=1, backoff=0.01, timeout=30.0),
                      state_dir=project / ".judgeopt")
    try:
        session.optimize(spec, "SSS", steps=1, write=True)
    finally:
        session.close()
    old_lock = (project / "toy.judge.lock.yaml").read_text()
    earlier = {p.name for p in (project / ".judgeopt" / "runs").glob("*.json")}
    script = tmp_path / "runner.py"
    script.write_text(FORKING_RUNNER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runner = subprocess.Popen([sys.executable, str(script), str(spec), str(project / ".judgeopt"), str(tmp_path / "run")],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in runner.stdout], daemon=True)
    reader.start()
    rng = random.Random(20261127)
    seen: list[dict[str, Any]] = []
    try:
        assert lines.get(timeout=120) == "ready\n"
        for kill in range(KILLS):
            asked = len(fake_llm.chat_requests())
            runner.stdin.write("go\n")
            runner.stdin.flush()
            pid = int(lines.get(timeout=30))
            # a random point of the run: after its k-th model call (a whole run makes about 150), then a random
            # fraction of the time to its next one; checkpoint and lock writes fall between calls
            k = rng.randint(1, 30)
            deadline = time.monotonic() + 60
            while len(fake_llm.chat_requests()) - asked < k and lines.empty() and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))
            with contextlib.suppress(ProcessLookupError):  # it may have finished
                os.kill(pid, signal.SIGKILL)
            returncode = int(lines.get(timeout=30))
            assert returncode in (0, -signal.SIGKILL), (tmp_path / f"run.{kill}").read_text()
            state = intact(project, earlier)
            state.update(kill=kill + 1, returncode=returncode, calls=len(fake_llm.chat_requests()) - asked)
            # the lock is the old one, byte for byte, or the whole new one: never gone, never partial
            assert (project / "toy.judge.lock.yaml").read_text() == old_lock or state["lock"] == 4, state
            if seen:  # progress is never lost: steps, the lock and the answers only ever grow
                assert state["steps"] >= seen[-1]["steps"] and state["answers"] >= seen[-1]["answers"]
                assert state["lock"] >= seen[-1]["lock"]
            seen.append(state)
            if returncode == 0:
                break  # it finished before the kill: nothing left to interrupt
    finally:
        runner.stdin.close()
        runner.wait(30)
        reader.join(30)
        runner.stdout.close()
    print("after each kill -9:", seen)
    assert sum(s["returncode"] == -signal.SIGKILL for s in seen) >= 3

    session = Session(LLM(cache=Cache(project / ".judgeopt"), retries=1, backoff=0.01, timeout=30.0),
                      state_dir=project / ".judgeopt")
    try:
        resumed = session.optimize(spec, "SSS", steps=4, write=True)
    finally:
        session.close()
    assert resumed.steps_run == 4 and resumed.resumed_from == seen[-1]["steps"]

    whole = write_project(tmp_path / "whole", fake_llm, optimize="batch_size: 2")
    session = Session(LLM(retries=1, backoff=0.01, timeout=30.0), state_dir=tmp_path / "whole" / ".judgeopt")
    try:
        reference = session.optimize(whole, "SSS", steps=4, write=True)
    finally:
        session.close()
    assert [h.batch for h in resumed.history] == [h.batch for h in reference.history]
    assert resumed.instructions == reference.instructions
    made = ("made", "checksum")  # the time it was written, and the checksum over it
    locks = [{k: v for k, v in yaml.safe_load((folder / "toy.judge.lock.yaml").read_text()).items() if k not in made}
             for folder in (project, tmp_path / "whole")]
    assert locks[0] == locks[1]
