"""The model client against the local fake server: real litellm HTTP requests, scripted answers and faults.

Nothing here mocks litellm; every call goes over HTTP to ``FakeLLMServer`` on 127.0.0.1, and
assertions count what reached the server. Retry waits are kept short (``backoff=0.01``,
Retry-After of tenths of a second, timeouts of half a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.cache import Cache
from pytest_judgeopt.call_errors import CallError
from pytest_judgeopt.llm import LLM
from pytest_judgeopt.redaction import call_secrets, model_secrets, redact
from pytest_judgeopt.replies import Reply
from pytest_judgeopt.spec import Model, is_credential_name
from tests import fake_llm
from tests.conftest import server_model
from tests.fake_llm import FakeLLMServer, Fault

MESSAGES = [
    {"role": "system", "content": "You grade summaries from 1 to 5."},
    {"role": "user", "content": "Grade this summary: the cat sat on the mat."},
]

MakeLLM = Callable[..., LLM]


@pytest.fixture
def make_llm() -> Iterator[MakeLLM]:
    """LLM clients with short waits by default, all closed after the test."""
    made: list[LLM] = []

    def make(**kwargs: Any) -> LLM:
        settings: dict[str, Any] = {"backoff": 0.01, "timeout": 5.0, "retries": 2, **kwargs}
        llm = LLM(**settings)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.close()


def model_for(server: FakeLLMServer, **params: Any) -> Model:
    return Model.parse({**server_model(server), **params})


def ask(llm: LLM, model: Model, messages: list[dict[str, str]] = MESSAGES, **kwargs: Any) -> Reply:
    return llm.run(llm.complete(model, messages, **kwargs))


def ask_many(llm: LLM, model: Model, message_lists: list[list[dict[str, str]]], **kwargs: Any) -> list[Any]:
    """Overlapping calls; failures come back as exception objects, not raised."""

    async def gather() -> list[Any]:
        return await asyncio.gather(*(llm.complete(model, m, **kwargs) for m in message_lists), return_exceptions=True)

    return llm.run(gather())


def expected_tokens(text: str) -> int:
    return -(-len(text) // 4)


# -- ordinary answers ---------------------------------------------------------------------


def test_call_returns_scripted_text_and_counts_call_and_tokens(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    fake_llm.responder = lambda body: "4 - coherent and fluent"
    llm = make_llm()

    reply = ask(llm, model_for(fake_llm), role="judge")

    assert [c.text for c in reply.choices] == ["4 - coherent and fluent"]
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].logprobs is None
    assert reply.cached is False
    prompt_tokens = expected_tokens("".join(m["content"] for m in MESSAGES))
    assert (reply.prompt_tokens, reply.completion_tokens) == (prompt_tokens, expected_tokens("4 - coherent and fluent"))
    usage = llm.usage["judge"]
    assert (usage.calls, usage.retries, usage.cache_hits, sum(usage.errors.values())) == (1, 0, 0, 0)
    assert (usage.prompt_tokens, usage.completion_tokens) == (reply.prompt_tokens, reply.completion_tokens)
    assert llm.total().calls == 1
    # what reached the "model": the name without the provider prefix, our parameters, the key as a header
    [request] = fake_llm.requests
    body = request["body"]
    assert body["model"] == "fake-judge" and body["messages"] == MESSAGES
    assert body["temperature"] == 0.0 and body["max_tokens"] == 256
    assert "n" not in body and "logprobs" not in body and "seed" not in body
    assert request["headers"]["authorization"] == "Bearer sk-test-not-a-real-key"


def test_n_returns_that_many_choices_in_one_request(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    answers = iter(["1", "2", "3"])
    fake_llm.responder = lambda body: next(answers)
    llm = make_llm()

    reply = ask(llm, model_for(fake_llm), n=3, temperature=0.7)

    assert [c.text for c in reply.choices] == ["1", "2", "3"]
    [body] = fake_llm.chat_requests()
    assert body["n"] == 3 and body["temperature"] == 0.7
    assert llm.usage["judge"].calls == 1


def test_logprobs_come_back_per_token_chosen_first(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    tokens = [[("4", -0.1), ("5", -2.5), ("3", -3.0)], [(".", -0.01), ("!", -4.6), ("?", -6.0)]]
    fake_llm.responder = lambda body: fake_llm_reply("4.", tokens)
    llm = make_llm()

    reply = ask(llm, model_for(fake_llm), logprobs=2)

    [body] = fake_llm.chat_requests()
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    # two alternatives asked for: the chosen token first, then the other one of the top two
    assert reply.choices[0].logprobs == [[("4", -0.1), ("5", -2.5)], [(".", -0.01), ("!", -4.6)]]
    assert all(isinstance(entry, tuple) for position in reply.choices[0].logprobs for entry in position)


def fake_llm_reply(content: str, logprobs: list[list[tuple[str, float]]]) -> fake_llm.Reply:
    return fake_llm.Reply(content, logprobs=logprobs)


# -- retries ------------------------------------------------------------------------------


def recorded_waits(llm: Any) -> list[float]:
    """The client's waits between attempts, recorded instead of slept: asserted exactly, not timed."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    llm.sleep = record
    return waits


def test_429_honours_retry_after(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    arrivals: list[int] = []

    def respond(body: dict[str, Any]) -> str | Fault:
        arrivals.append(len(arrivals))
        return Fault("status", 429, retry_after=0.3) if len(arrivals) == 1 else "5"

    fake_llm.responder = respond
    llm = make_llm(backoff=0.01)
    waits = recorded_waits(llm)

    reply = ask(llm, model_for(fake_llm))

    assert reply.choices[0].text == "5"
    assert len(arrivals) == 2 and len(fake_llm.chat_requests()) == 2
    assert waits == [0.3]  # the server's wait, not our 0.01 s backoff
    usage = llm.usage["judge"]
    assert (usage.calls, usage.retries, sum(usage.errors.values())) == (1, 1, 0)


def test_429_without_retry_after_backs_off(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    arrivals: list[int] = []

    def respond(body: dict[str, Any]) -> str | Fault:
        arrivals.append(len(arrivals))
        return Fault("status", 429) if len(arrivals) <= 2 else "5"

    fake_llm.responder = respond
    llm = make_llm(backoff=0.1)
    waits = recorded_waits(llm)

    reply = ask(llm, model_for(fake_llm))

    assert reply.choices[0].text == "5" and len(arrivals) == 3
    # exponential with jitter: first wait in [0.05, 0.1], second in [0.1, 0.2]
    assert len(waits) == 2 and 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2
    assert llm.usage["judge"].retries == 2


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(fake_llm: FakeLLMServer, make_llm: MakeLLM, status: int) -> None:
    fake_llm.faults = [Fault("status", status)]
    llm = make_llm()

    reply = ask(llm, model_for(fake_llm))

    assert reply.choices[0].text == "3"
    assert len(fake_llm.chat_requests()) == 2
    assert (llm.usage["judge"].retries, llm.usage["judge"].calls) == (1, 1)


def test_server_error_after_all_retries(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    fake_llm.faults = [Fault("status", 503)] * 3
    llm = make_llm(retries=2)

    with pytest.raises(CallError) as caught:
        ask(llm, model_for(fake_llm))

    assert caught.value.kind == "server" and caught.value.attempts == 3
    assert len(fake_llm.chat_requests()) == 3


def test_connection_reset_is_retried(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    fake_llm.faults = [Fault("reset")]
    llm = make_llm()

    reply = ask(llm, model_for(fake_llm))

    assert reply.choices[0].text == "3"
    assert len(fake_llm.chat_requests()) == 2 and llm.usage["judge"].retries == 1


def test_connection_reset_is_a_connection_error(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    fake_llm.faults = [Fault("reset")]
    llm = make_llm(retries=0)

    with pytest.raises(CallError) as caught:
        ask(llm, model_for(fake_llm))

    assert caught.value.kind == "connection"
    assert llm.usage["judge"].errors == Counter({"connection": 1})


def test_hang_times_out_after_every_attempt(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    fake_llm.faults = [Fault("hang", seconds=120.0)] * 3
    llm = make_llm(timeout=0.5, retries=2)
    recorded_waits(llm)

    with pytest.raises(CallError) as caught:
        ask(llm, model_for(fake_llm))

    assert caught.value.kind == "timeout" and caught.value.attempts == 3
    assert len(fake_llm.chat_requests()) == 3
    # each attempt gave up while the server still held the one before (a two-minute hang): three timeouts,
    # not one hang waited out; counted by the server, not timed
    assert fake_llm.max_in_flight == 3
    assert llm.usage["judge"].errors == Counter({"timeout": 1})
    assert llm.usage["judge"].retries == 2 and llm.usage["judge"].calls == 0


def test_hang_then_answer(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    fake_llm.faults = [Fault("hang", seconds=5.0)]
    llm = make_llm(timeout=0.5, retries=2)

    reply = ask(llm, model_for(fake_llm))

    assert reply.choices[0].text == "3" and len(fake_llm.chat_requests()) == 2


@pytest.mark.parametrize("fault", ["not_json", "empty_choices"])
def test_unusable_bodies_are_retried_then_bad_response(fake_llm: FakeLLMServer, make_llm: MakeLLM, fault: str) -> None:
    fake_llm.faults = [Fault(fault)] * 3
    llm = make_llm(retries=2)

    with pytest.raises(CallError) as caught:
        ask(llm, model_for(fake_llm))

    assert caught.value.kind == "bad_response" and caught.value.attempts == 3
    assert len(fake_llm.chat_requests()) == 3
    assert llm.usage["judge"].errors == Counter({"bad_response": 1})


@pytest.mark.parametrize("fault", ["not_json", "empty_choices"])
def test_unusable_body_then_answer(fake_llm: FakeLLMServer, make_llm: MakeLLM, fault: str) -> None:
    fake_llm.faults = [Fault(fault)]
    llm = make_llm(retries=2)

    assert ask(llm, model_for(fake_llm)).choices[0].text == "3"
    assert len(fake_llm.chat_requests()) == 2


@pytest.mark.parametrize(("status", "kind"), [(400, "bad_request"), (401, "auth"), (403, "auth"), (404, "not_found"),
                                              (422, "bad_request")])
def test_client_errors_are_not_retried(fake_llm: FakeLLMServer, make_llm: MakeLLM, status: int, kind: str) -> None:
    fake_llm.faults = [Fault("status", status)]
    llm = make_llm(retries=3)

    with pytest.raises(CallError) as caught:
        ask(llm, model_for(fake_llm))

    assert caught.value.kind == kind and caught.value.attempts == 1
    assert len(fake_llm.chat_requests()) == 1
    assert llm.usage["judge"].retries == 0


def test_errors_are_counted_per_kind_and_role(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    llm = make_llm(retries=0)
    model = model_for(fake_llm)
    script = [(Fault("status", 400), "judge"), (Fault("status", 404), "judge"), (Fault("status", 400), "judge"),
              (Fault("status", 500), "optimizer"), (None, "optimizer")]
    for fault, role in script:
        fake_llm.faults = [] if fault is None else [fault]
        with contextlib.suppress(CallError):
            ask(llm, model, [{"role": "user", "content": f"{role} {fault}"}], role=role)

    assert llm.usage["judge"].errors == Counter({"bad_request": 2, "not_found": 1})
    assert llm.usage["optimizer"].errors == Counter({"server": 1})
    assert (llm.usage["judge"].calls, llm.usage["optimizer"].calls) == (0, 1)
    assert llm.total().errors == Counter({"bad_request": 2, "not_found": 1, "server": 1})
    assert llm.total().to_json()["errors"] == {"bad_request": 2, "not_found": 1, "server": 1}


# -- overlap, limits and sharing ----------------------------------------------------------


def distinct_messages(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"question {i}"}] for i in range(count)]


def test_concurrency_limit_is_respected(make_llm: MakeLLM) -> None:
    with FakeLLMServer(latency=0.2) as server:
        llm = make_llm(concurrency=4)
        started = time.monotonic()
        replies = ask_many(llm, model_for(server), distinct_messages(20))
        elapsed = time.monotonic() - started

        assert all(isinstance(r, Reply) for r in replies)
        assert len(server.chat_requests()) == 20
        assert 2 <= server.max_in_flight <= 4
        assert elapsed >= 20 / 4 * 0.2 * 0.9  # five waves of 0.2 s at least


def test_calls_overlap_up_to_the_limit(make_llm: MakeLLM) -> None:
    with FakeLLMServer(latency=0.2) as server:
        llm = make_llm(concurrency=20)
        ask(llm, model_for(server), [{"role": "user", "content": "warm up"}])  # litellm's first call is slow
        server.reset()
        replies = ask_many(llm, model_for(server), distinct_messages(20))

        assert all(isinstance(r, Reply) for r in replies)
        assert len(server.chat_requests()) == 20
        assert server.max_in_flight >= 10  # overlapped, counted by the server (serial calls would show 1)


def test_identical_concurrent_calls_share_one_request(make_llm: MakeLLM) -> None:
    with FakeLLMServer(latency=0.2) as server:
        llm = make_llm()
        replies = ask_many(llm, model_for(server), [MESSAGES] * 5)

        assert len(server.chat_requests()) == 1
        assert all(isinstance(r, Reply) for r in replies) and {r.choices[0].text for r in replies} == {"3"}
        assert llm.usage["judge"].calls == 1


def test_identical_concurrent_calls_share_one_failure(make_llm: MakeLLM) -> None:
    with FakeLLMServer(latency=0.2) as server:
        server.faults = [Fault("status", 400)]
        llm = make_llm()
        replies = ask_many(llm, model_for(server), [MESSAGES] * 5)

        assert len(server.chat_requests()) == 1
        assert all(isinstance(r, CallError) and r.kind == "bad_request" for r in replies)
        # the failure is over, so asking again asks again
        assert ask(llm, model_for(server)).choices[0].text == "3"
        assert len(server.chat_requests()) == 2


# -- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "secret"), [
    ("Incorrect API key provided: sk-proj-AbC123xyz_789-QQ.", "sk-proj-AbC123xyz_789-QQ"),
    ("headers: {'Authorization': 'Bearer abc.def-ghi_jkl'}", "abc.def-ghi_jkl"),
    ("call failed with api_key=hunter2secret and more", "hunter2secret"),
    ('{"api_key": "zzTopSecret99", "model": "x"}', "zzTopSecret99"),
    ("API-KEY: plainvalue42", "plainvalue42"),
])
def test_redact_removes_keys(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned and "[redacted]" in cleaned


@pytest.mark.parametrize("text", [
    "litellm.BadRequestError: OpenAIException - max_tokens must be at least 1 (task-skip)",
    "InternalServerError: disk-quota-exceeded on risk-assessment-cluster",
])
def test_redact_leaves_ordinary_text(text: str) -> None:
    assert redact(text) == text


def test_redact_removes_given_secrets_verbatim() -> None:
    assert redact("key was plain.secret-value_1 and more", ["plain.secret-value_1"]) == "key was [redacted] and more"


@pytest.mark.parametrize(("name", "credential"), [
    ("api_key", True), ("API_KEY", True), ("apiKey", True), ("X-Api-Key", True), ("Authorization", True),
    ("aws_secret_access_key", True), ("vertex_credentials", True), ("OPENAI_API_KEY", True), ("HF_TOKEN", True),
    ("ANTHROPIC_AUTH_TOKEN", True), ("password", True),
    ("max_tokens", False), ("max_completion_tokens", False), ("TOKENIZERS_PARALLELISM", False), ("temperature", False),
    ("X-Team", False), ("monkey", False), ("author", False),
])
def test_one_rule_tells_credentials_by_name(name: str, credential: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule hides a setting from reports, finds a model's credential values and the environment's."""
    model = Model.parse({"name": "openai/x", name: "value-long-enough-1"})
    assert is_credential_name(name) is credential
    assert ("value-long-enough-1" in model.describe()) is not credential
    assert (model_secrets(model) == ["value-long-enough-1"]) is credential
    monkeypatch.setenv(name.upper().replace("-", "_"), "environment-value-2")
    assert ("environment-value-2" in call_secrets(Model("openai/x"))) is credential


def test_model_secrets_finds_keys_and_auth_headers() -> None:
    model = Model.parse({"name": "openai/x", "api_key": "abc123-key", "api_base": "http://127.0.0.1:1/v1",
                         "max_completion_tokens": 100000, "extra_headers": {"Authorization": "Basic dXNlcjpwYXNz",
                                                                            "X-Team": "research"}})
    assert sorted(model_secrets(model)) == ["Basic dXNlcjpwYXNz", "abc123-key"]


def echo_authorization_on_401(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the fake server's 401 body repeat the request's credentials, as careless providers do."""
    original = fake_llm._Handler._fail

    def fail(handler: Any, fault: Fault, body: dict) -> None:
        if fault.kind == "status" and fault.status == 401:
            auth = handler.headers.get("Authorization", "")
            key = auth.removeprefix("Bearer ")
            message = f"Incorrect API key provided: {key}. You sent Authorization: {auth}"
            handler._send_json(401, fake_llm._error(message, "invalid_request_error", 401))
        else:
            original(handler, fault, body)

    monkeypatch.setattr(fake_llm._Handler, "_fail", fail)


@pytest.mark.parametrize("key", ["sk-PLANTED-zq81-do-not-leak", "planted.zq81-do-not-leak"])
def test_call_error_never_carries_the_api_key(fake_llm: FakeLLMServer, make_llm: MakeLLM,
                                              monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
                                              key: str) -> None:
    echo_authorization_on_401(monkeypatch)
    fake_llm.faults = [Fault("status", 401)]
    llm = make_llm()

    with pytest.raises(CallError) as caught:
        ask(llm, model_for(fake_llm, api_key=key))

    assert fake_llm.requests[0]["headers"]["authorization"] == f"Bearer {key}"  # the key really was sent
    error = caught.value
    assert error.kind == "auth" and "Incorrect API key provided" in str(error)  # the provider's words survive
    for text in (str(error), repr(error), *map(str, error.args)):
        assert key not in text and "zq81" not in text
    out, err = capfd.readouterr()
    assert key not in out and key not in err


def test_api_key_is_never_written_to_the_cache(fake_llm: FakeLLMServer, make_llm: MakeLLM, tmp_path: Path) -> None:
    key = "sk-PLANTED-cachecheck-4242"
    fake_llm.responder = lambda body: "answer-marker-7f3"
    llm = make_llm(cache=Cache(tmp_path), cache_mode="use")
    model = model_for(fake_llm, api_key=key, api_base=fake_llm.base_url, top_p=0.9)

    ask(llm, model)
    ask(llm, model, [{"role": "user", "content": "a second question"}], logprobs=1)
    llm.flush()

    def stored() -> bytes:
        return b"".join(path.read_bytes() for path in sorted(tmp_path.rglob("*")) if path.is_file())

    for data in (stored(), (llm.close(), stored())[1]):  # with the write-ahead log, then folded in
        assert b"answer-marker-7f3" in data  # the answers are there, so the search is meaningful
        assert key.encode() not in data and b"cachecheck" not in data
        assert fake_llm.base_url.encode() not in data


# -- the background loop ------------------------------------------------------------------


def test_run_from_several_threads(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    llm = make_llm()
    model = model_for(fake_llm)
    results: list[str | None] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        reply = ask(llm, model, [{"role": "user", "content": f"thread {i}"}])
        with lock:
            results.append(reply.choices[0].text)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert results == ["3"] * 6 and len(fake_llm.chat_requests()) == 6
    assert llm.usage["judge"].calls == 6


def test_unknown_cache_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="cache mode"):
        LLM(cache_mode="sometimes")


def test_usage_json_shape(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    llm = make_llm()
    ask(llm, model_for(fake_llm), role="optimizer")
    data = llm.usage["optimizer"].to_json()
    assert data["calls"] == 1 and data["prompt_tokens"] > 0 and data["completion_tokens"] == 1
    assert data["cost_usd"] is None  # no price known for a fake model: unknown, not zero
    json.dumps(data)


# -- the client's lifetime, and what is a failed call ----------------------------------------


def test_run_after_close_starts_a_new_loop_with_its_own_limit(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    """The concurrency limit and the requests in flight belong to a loop: after close(), run() works again
    (it raised "Semaphore is bound to a different event loop" when calls queued on the limit)."""
    fake_llm.latency = 0.05
    llm = make_llm(concurrency=1)
    model = model_for(fake_llm)
    first = ask_many(llm, model, distinct_messages(3))
    llm.close()
    second = ask_many(llm, model, [[{"role": "user", "content": f"again {i}"}] for i in range(3)])
    assert [r.choices[0].text for r in first + second] == ["3"] * 6
    assert fake_llm.max_in_flight == 1


def test_complete_on_a_loop_of_the_callers_own(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    """A script may await complete() on its own loop (asyncio.run) after run() used the client's."""
    llm = make_llm(concurrency=1)
    model = model_for(fake_llm)
    ask_many(llm, model, distinct_messages(2))

    async def own() -> list[Any]:
        from pytest_judgeopt.llm import import_litellm

        try:
            return await asyncio.gather(*(llm.complete(model, m) for m in distinct_messages(4)[2:]))
        finally:  # litellm's pooled clients of this loop are the script's to close, on its loop
            await import_litellm().close_litellm_async_clients()

    assert [r.choices[0].text for r in asyncio.run(own())] == ["3", "3"]


# gc.collect() below may finalize what earlier tests left to the collector (their sockets): not this test's to judge
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_embedded_models_queue_is_dropped_with_its_loop() -> None:
    """Keyed by the loop in a weak mapping, not by id(loop): a closed loop leaves nothing behind, and a new loop
    that reuses the id never gets a dead loop's queue."""
    import gc

    from pytest_judgeopt import local_model
    from pytest_judgeopt.llm import import_litellm

    handler = local_model.make_handler(import_litellm())
    answer = {"choices": [{"message": {"content": "4"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    original = local_model.generate_many
    local_model.generate_many = lambda calls: [answer for _ in calls]  # the queue is what is tested, not the model
    try:
        for _ in range(3):
            response = asyncio.run(handler.acompletion("local/smollm2", [{"role": "user", "content": "q"}]))
            assert response.choices[0].message.content == "4"
            gc.collect()
            assert len(handler._queues) == 0
    finally:
        local_model.generate_many = original


def test_a_programming_error_in_a_call_is_raised_not_a_failed_call(fake_llm: FakeLLMServer, make_llm: MakeLLM) -> None:
    """A message whose content is not text is our bug: litellm wraps the TypeError as a connection error, which
    was retried and then counted as a failed judgment; it is raised, with the TypeError in its chain."""
    llm = make_llm(retries=3)
    with pytest.raises(Exception) as caught:
        ask(llm, model_for(fake_llm), [{"role": "user", "content": 5}])  # type: ignore[dict-item]
    assert not isinstance(caught.value, CallError)
    chain = [caught.value]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    assert any(isinstance(e, TypeError) for e in chain)
    assert llm.usage["judge"].retries == 0 and not llm.usage["judge"].errors
    assert fake_llm.chat_requests() == []


def test_classify_leaves_a_bug_unclassified() -> None:
    from pytest_judgeopt.call_errors import classify
    from pytest_judgeopt.llm import import_litellm

    errors = import_litellm().exceptions

    assert classify(KeyError("criterion"), errors)[0] is None
    assert classify(TypeError("unsupported operand"), errors)[0] is None
    assert classify(TimeoutError(), errors)[0] == "timeout"


def test_an_unexpected_error_cancels_the_sibling_calls(fake_llm: FakeLLMServer, make_llm: MakeLLM,
                                                       tmp_path: Path) -> None:
    """judge_records after an unexpected error (here a progress listener that raises): the error comes out as it
    is, and no sibling call is left running (and billing) on the client's loop."""
    from pytest_judgeopt.judge import judge_records
    from pytest_judgeopt.session import Session
    from tests.conftest import make_records, spec_text

    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_records()))
    (tmp_path / "toy.judge.yaml").write_text(spec_text(server_model(fake_llm)))
    release = threading.Event()
    answered = []

    def respond(body: dict[str, Any]) -> str:
        answered.append(body)
        if len(answered) > 1:  # the first answers; the rest wait until the test is done
            release.wait(30)
        return "coherence: 3"

    fake_llm.responder = respond
    llm = make_llm(concurrency=4)

    def listener(event: str, role: str) -> None:
        if event == "call":
            raise RuntimeError("a bug in a progress display")

    llm.listeners.append(listener)
    session = Session(llm, state_dir=tmp_path / ".judgeopt")
    loaded = session.load(tmp_path / "toy.judge.yaml")
    records = session.records(loaded, "test")
    try:
        with pytest.raises(RuntimeError, match="a bug in a progress display"):
            llm.run(judge_records(llm, session.model_for(loaded.spec), loaded.spec, records,
                                  session.instructions(loaded)))

        async def left_running() -> list[str]:
            return [repr(t.get_coro()) for t in asyncio.all_tasks() if "judge_shapes" in repr(t.get_coro())]

        assert llm.run(left_running()) == []
    finally:
        release.set()


def closed_connections(server: FakeLLMServer) -> bool:
    """Whether the server has seen every client connection end (it notices a close a moment after it happens)."""
    deadline = time.monotonic() + 20
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.open_connections == 0


def test_session_llm_and_cache_are_context_managers_that_close_litellms_connections(
        fake_llm: FakeLLMServer, tmp_path: Path) -> None:
    """Leaving the block closes litellm's pooled async clients (their keep-alive connections to the provider),
    the client's loop and the cache; they were left open until the process ended."""
    from pytest_judgeopt.session import Session

    model = model_for(fake_llm)
    with Cache(tmp_path / "cache") as cache, Session(LLM(cache=cache)) as session:
        assert session.llm.run(session.llm.complete(model, MESSAGES)).choices[0].text == "3"
        assert fake_llm.open_connections == 1
    assert closed_connections(fake_llm)
    assert cache._writer is None and cache._reader is None  # closed, its log folded in
    with LLM() as llm:  # and used again after a close, on a new loop
        assert llm.run(llm.complete(model, MESSAGES)).choices[0].text == "3"
    assert closed_connections(fake_llm)


def test_a_setting_the_provider_does_not_take_is_said_once_and_the_answer_cached_as_made(
        fake_llm: FakeLLMServer, tmp_path: Path) -> None:
    """litellm drops `n` for mistral (drop_params): the n: 3 call got one reply and was cached as an n: 3 answer,
    without a word. It is said once, and the answer is asked and cached as the one-reply call it is."""
    model = Model.parse({**server_model(fake_llm), "name": "mistral/fake-judge"})
    with LLM(cache=Cache(tmp_path)) as llm:
        for question in ("q1", "q2"):
            reply = llm.run(llm.complete(model, [{"role": "user", "content": question}], n=3, temperature=0.7))
            assert len(reply.choices) == 1
        assert [note for note in llm.notes if "`n`" in note] == [
            "mistral/fake-judge does not take `n` (litellm's list of the provider's parameters has no such parameter; "
            "litellm drops it): a call gets one reply, not n of them (judge.n), and is asked and cached as one"]
        again = llm.run(llm.complete(model, [{"role": "user", "content": "q1"}], n=1, temperature=0.7))
        assert again.cached  # the answer is the one-reply call's
    assert len(fake_llm.chat_requests()) == 2


def test_a_server_that_ignores_n_is_learnt_and_its_one_reply_never_cached_as_n(fake_llm: FakeLLMServer,
                                                                               tmp_path: Path) -> None:
    fake_llm.serve_n = False
    model = model_for(fake_llm)
    with LLM(cache=Cache(tmp_path)) as llm:
        replies = [llm.run(llm.complete(model, MESSAGES, n=3, temperature=0.7)) for _ in range(3)]
        assert [len(r.choices) for r in replies] == [1, 1, 1]
        assert [r.cached for r in replies] == [False, False, True]  # the second is asked as n: 1, then cached
        assert sum("`n`" in note and "answered 1 of the 3 replies" in note for note in llm.notes) == 1
    assert [b.get("n") for b in fake_llm.chat_requests()] == [3, None]
